"""benchmarks/robustness.py prints results[attack][aggregator][fraction] and the targets."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "robustness.py"


@pytest.mark.slow
def test_tiny_grid_prints_the_named_json_fields(tmp_path):
    out_file = tmp_path / "rob.json"
    cmd = [sys.executable, str(SCRIPT), "--json", "--workers", "10", "--iterations", "12", "--seeds", "1",
           "--attacks", "sign_flip,poisoned_demos", "--aggregators", "mean,trimmed_mean", "--out", str(out_file),
           "--jobs", "2"]  # the rows run in two child processes, merged in the requested order
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["complete"] is True and json.loads(out_file.read_text()) == out
    assert not list(tmp_path.glob("rob.json.part*"))  # the children's files are merged and removed
    assert set(out["results"]) == {"sign_flip", "poisoned_demos"}
    for attack in out["results"].values():
        assert list(attack) == ["mean", "trimmed_mean"]
        for cells in attack.values():
            assert set(cells) == {"0.0", "0.1", "0.2", "0.3"}
            assert all(0.0 <= v <= 1.0 for v in cells.values())
    assert out["inputs"]["malicious_counts"] == [0, 1, 2, 3]
    # With no malicious worker the attack does nothing: both attack rows hold the same run per rule.
    for rule in ("mean", "trimmed_mean"):
        assert out["results"]["sign_flip"][rule]["0.0"] == out["results"]["poisoned_demos"][rule]["0.0"]
    # The targets are computed from the table: the worst drop from 0 % to 30 % malicious over the attacks.
    targets = out["targets"]
    for rule in ("mean", "trimmed_mean"):
        worst = max(out["results"][a][rule]["0.0"] - out["results"][a][rule]["0.3"] for a in out["results"])
        assert targets["worst_drop_at_0.3"][rule] == pytest.approx(worst)
        assert targets["within_2_points_at_0.3"][rule] == (worst <= 0.02)
    assert targets["mean_breaks"] == (targets["worst_drop_at_0.3"]["mean"] >= 0.10)


@pytest.mark.slow
def test_fractions_and_mixed_rows_and_the_tax_target():
    cmd = [sys.executable, str(SCRIPT), "--json", "--workers", "10", "--iterations", "8", "--seeds", "1",
           "--attacks", "sign_flip,gaussian_noise", "--aggregators", "mean,coordinate_median+nnm,sign_consensus",
           "--fractions", "0,0.3", "--override", "lr_rho=0.2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["inputs"]["malicious_counts"] == [0, 3] and out["inputs"]["override"] == {"lr_rho": 0.2}
    rows = out["results"]["sign_flip"]
    assert list(rows) == ["mean", "coordinate_median+nnm", "sign_consensus"] and set(rows["mean"]) == {"0.0", "0.3"}
    # mixing changes what the median sees
    assert rows["coordinate_median+nnm"] != rows["mean"] or out["results"]["gaussian_noise"]["coordinate_median+nnm"] != out["results"]["gaussian_noise"]["mean"]
    targets = out["targets"]
    clean = {g: sum(out["results"][a][g]["0.0"] for a in out["results"]) / 2 for g in rows}
    assert targets["b0_accuracy"] == pytest.approx(clean)
    expect = [g for g in ("coordinate_median+nnm",)
              if targets["worst_drop_at_0.3"][g] <= 0.02 and clean[g] >= clean["mean"] - 0.02]
    assert targets["within_2_points_and_no_tax"] == expect
    assert targets["sign_consensus_within_5_points"] == (targets["worst_drop_at_0.3"]["sign_consensus"] <= 0.05)


def test_bad_fractions_are_a_clear_error():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--fractions", "0,0.2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "include 0 and 0.3" in proc.stderr


def test_unknown_attack_is_a_clear_error():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--attacks", "label_flip"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "unknown attacks" in proc.stderr
