"""benchmarks/core_step.py prints the fields docs/performance.md quotes, and a hyper-parameter change
does not recompile the step."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "core_step.py"


@pytest.mark.slow
def test_quick_run_prints_ratio_and_recompiles():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", "--workers", "10"], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    row = out["results"]["10"]
    assert out["ratio_by_workers"]["10"] == pytest.approx(row["numpy"]["median_s"] / row["jax"]["median_s"])
    assert out["recompiles_on_hyperparameter_change"] == 0
