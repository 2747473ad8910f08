"""benchmarks/core_step.py prints the fields docs/performance.md quotes (the NumPy ratio, the
gathered step's speed-up), and a hyper-parameter change does not recompile the step."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "core_step.py"


@pytest.mark.slow
def test_quick_run_prints_ratio_recompiles_and_gather_speedup():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", "--workers", "10", "--gather", "200", "4"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    row = out["results"]["10"]
    assert out["ratio_by_workers"]["10"] == pytest.approx(row["numpy"]["median_s"] / row["jax"]["median_s"])
    assert out["recompiles_on_hyperparameter_change"] == 0
    gather = out["gather"]
    assert (gather["workers"], gather["arrived"]) == (200, 4)
    assert out["gather_speedup"] == pytest.approx(gather["median_s"]["dense"] / gather["median_s"]["gathered"])
    assert gather["gather_speedup_after_switch"] == pytest.approx(gather["after_switch_s"]["dense"] / gather["after_switch_s"]["gathered"])
