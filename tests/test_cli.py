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
    assert out["iterations"] == 4 and 0 <= out["final_test_accuracy"] <= 1 and out["queries"] > 0
    assert len(history.read_text().splitlines()) == 4


def test_simulate_bad_input_is_a_clear_error():
    import pytest

    with pytest.raises(SystemExit, match="--active"):
        main(["simulate", "--workers", "4", "--active", "5", "--quiet"])
    with pytest.raises(SystemExit, match="method"):
        main(["simulate", "--method", "adbo", "--quiet"])
    with pytest.raises(ValueError, match="delay"):
        main(["simulate", "--delay", "weibull:2", "--quiet"])


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
