import json
import subprocess
import sys

import numpy as np

import asyndbt_jax
from asyndbt_jax.cli import main


def test_version_and_help():
    out = subprocess.run([sys.executable, "-m", "asyndbt_jax.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and asyndbt_jax.__version__ in out.stdout
    out = subprocess.run([sys.executable, "-m", "asyndbt_jax.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: asyndbt" in out.stdout


def test_info_prints_json(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    import jax

    assert info["asyndbt_jax"] == asyndbt_jax.__version__ and info["backend"] == jax.default_backend()


def test_simulate_prints_required_fields(capsys, tmp_path):
    history = tmp_path / "h.jsonl"
    args = ["simulate", "--workers", "4", "--active", "2", "--iterations", "4", "--samples", "4"]
    assert main(args + ["--quiet", "--json", "--history", str(history)]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("final_test_accuracy", "optimum_accuracy", "iterations", "virtual_time", "queries"):
        assert key in out
    rows = [json.loads(line) for line in history.read_text().splitlines()]
    assert out["iterations"] == len(rows) == 4
    # the summary is the history's: its last evaluation, and every query the iterations spent
    assert out["final_test_accuracy"] == rows[-1]["test_accuracy"]
    assert out["final_validation_accuracy"] == rows[-1]["validation_accuracy"]
    assert out["queries"] == sum(r["queries"] for r in rows)
    # The query-cost model: every arrival asks I = 4 samples x 20 validation queries; a refresh (iteration 0,
    # all R = 4 workers) also evaluates the lower level K + 1 = 4 times (K = 3 rounds, the evaluation at φ)
    # on 4 samples x 20 training queries per worker.
    assert rows[0]["refreshed"] and rows[0]["arrived"] == [0, 1, 2, 3]
    assert rows[0]["queries"] == 4 * 4 * 20 + 4 * (3 + 1) * 4 * 20
    for r in rows[1:]:
        assert not r["refreshed"] and len(r["arrived"]) == 2 and r["queries"] == 2 * 4 * 20


def test_simulate_bad_input_is_a_clear_error():
    import pytest

    with pytest.raises(SystemExit, match="--active"):
        main(["simulate", "--workers", "4", "--active", "5", "--quiet"])
    with pytest.raises(SystemExit, match="method"):
        main(["simulate", "--method", "adbo", "--quiet"])
    with pytest.raises(ValueError, match="delay"):
        main(["simulate", "--delay", "weibull:2", "--quiet"])


def test_simulate_runs_a_robust_rule_after_nearest_neighbour_mixing(capsys):
    import pytest

    args = ["simulate", "--workers", "6", "--active", "3", "--iterations", "3", "--samples", "4", "--quiet", "--json",
            "--malicious", "2", "--attack", "sign_flip", "--aggregator", "coordinate_median"]
    assert main(args + ["--pre-aggregation", "nnm"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pre_aggregation"] == "nnm" and 0.0 <= out["final_test_accuracy"] <= 1.0
    with pytest.raises(SystemExit, match="robust rule"):
        main(args[:-1] + ["mean", "--pre-aggregation", "nnm"])


def test_simulate_joint_trains_one_estimate_on_train_and_validation_queries(capsys):
    """``joint`` (the single-level ablation) scores each sampled configuration on a worker's
    train and validation queries together and never refreshes a lower level."""
    args = ["simulate", "--workers", "4", "--active", "2", "--iterations", "4", "--samples", "4", "--quiet", "--json"]
    assert main(args + ["--method", "joint"]) == 0
    joint = json.loads(capsys.readouterr().out)
    assert main(args + ["--method", "asyndbt"]) == 0
    bilevel = json.loads(capsys.readouterr().out)
    assert joint["iterations"] == 4 and joint["final_test_accuracy"] != bilevel["final_test_accuracy"]
    from asyndbt_jax.engine import Data, method_data

    data = Data(np.zeros((4, 3)), np.ones((4, 2)))
    both = method_data("joint", data)
    assert both.validation.shape == (4, 5) and (np.asarray(both.validation)[:, :3] == 0).all()
    assert method_data("asyndbt", data) is data
