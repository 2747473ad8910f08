"""benchmarks/async_vs_sync.py prints the fields docs/performance.md quotes (time_ratio, acc_async, acc_sync),
runs AsynDBT's cut duals at η_λ·S/R, and benchmarks/report.py renders its table."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_quick_run_prints_the_named_fields_and_renders(tmp_path):
    out_file = tmp_path / "avs.json"
    cmd = [sys.executable, str(BENCHMARKS / "async_vs_sync.py"), "--quick", "--json", "--delays", "lognormal:1.0",
           "--out", str(out_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert json.loads(out_file.read_text()) == out
    inputs = out["inputs"]
    assert inputs["lr_dual_async"] == pytest.approx(inputs["lr_dual_sync"] * inputs["active"] / inputs["workers"])
    assert set(out["time_ratio"]) == set(out["acc_async"]) == set(out["acc_sync"]) == {"lognormal:1.0"}
    assert out["time_ratio"]["lognormal:1.0"] > 0 and 0 <= out["acc_async"]["lognormal:1.0"] <= 1
    (run,) = out["results"]["lognormal:1.0"]["runs"]
    assert run["sync_messages_to_target"] > 0  # synchronous DBT reaches its own target by definition
    if run["async_reached_target"]:
        assert out["results"]["lognormal:1.0"]["message_ratio"] == pytest.approx(
            run["async_messages_to_target"] / run["sync_messages_to_target"])
    table = subprocess.run([sys.executable, str(BENCHMARKS / "report.py"), str(out_file)], capture_output=True,
                           text=True, timeout=120)
    assert table.returncode == 0, table.stderr[-3000:]
    assert "| lognormal:1.0 | 8 |" in table.stdout and f"**{out['time_ratio']['lognormal:1.0']:.2f}**" in table.stdout
