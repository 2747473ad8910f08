"""benchmarks/async_vs_sync.py prints the fields docs/performance.md quotes (time_ratio, acc_async, acc_sync),
times both runs to a target both reach, runs AsynDBT's cut duals at η_λ·S/R, and benchmarks/report.py renders
its table."""

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
    (run,) = out["results"]["lognormal:1.0"]["runs"]
    # The target is one both runs reach, strictly before their ends: fraction f of the way from the start
    # to the lower of the two bests, so neither run's time to target is its time to peak by construction.
    lower_best = min(run["best_validation_sync"], run["best_validation_async"])
    assert run["start_validation_accuracy"] < run["target_validation_accuracy"] < lower_best
    assert run["target_validation_accuracy"] == pytest.approx(
        run["start_validation_accuracy"] + inputs["target_fraction"] * (lower_best - run["start_validation_accuracy"]))
    assert 0 < run["sync_time_to_target"] < run["sync_virtual_time_total"]
    assert 0 < run["async_time_to_target"] < run["async_virtual_time_total"]
    assert out["time_ratio"]["lognormal:1.0"] == pytest.approx(run["async_time_to_target"] / run["sync_time_to_target"])
    assert out["results"]["lognormal:1.0"]["message_ratio"] == pytest.approx(
        run["async_messages_to_target"] / run["sync_messages_to_target"])
    # The planted task is learnable: both runs climb well above the uniform start.
    assert lower_best > run["start_validation_accuracy"] + 0.05
    table = subprocess.run([sys.executable, str(BENCHMARKS / "report.py"), str(out_file)], capture_output=True,
                           text=True, timeout=120)
    assert table.returncode == 0, table.stderr[-3000:]
    assert "| lognormal:1.0 | 8 |" in table.stdout and f"**{out['time_ratio']['lognormal:1.0']:.2f}**" in table.stdout
