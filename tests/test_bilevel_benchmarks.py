"""benchmarks/bilevel_planted.py prints the fields docs/algorithm.md quotes, and
benchmarks/runs_table.py summarises run folders (accuracy over seeds, cuts added)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_bilevel_planted_quick_prints_its_fields():
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "bilevel_planted.py"), "--quick", "--json"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["benchmark"] == "bilevel_planted" and out["inputs"]["seeds"] == [0, 1]
    assert set(out["results"]) == {"cendbt", "sync", "asyndbt", "joint"}
    for name, row in out["results"].items():
        assert len(row["test_accuracy"]) == 2 and len(row["runs"]) == 2
        assert row["test_accuracy_mean"] == pytest.approx(sum(row["test_accuracy"]) / 2)
        for run in row["runs"]:
            assert 0.3 < run["test_accuracy"] <= run["optimum_accuracy"] + 0.05  # a binary task, below the optimum
            if name == "joint":  # no lower level: no refresh, no cut
                assert run["refreshes"] == 0 and run["added_cuts"] == 0 and run["gap"] is None
            else:  # every δ = 10 iterations of 20, the value-function gap with ε = 0.01 nats per worker
                assert run["refreshes"] == 2 and run["gap"] == "value"
                assert run["epsilon"] == pytest.approx(0.01 * (1 if name == "cendbt" else 8))


def _run_folder(root, name, method, seed, acc, history):
    folder = root / name
    folder.mkdir()
    (folder / "result.json").write_text(json.dumps(
        {"method": method, "seed": seed, "test_accuracy": {"manual": 0.5 + seed / 100, method: acc},
         "llm_prompts": 100, "wall_seconds": 1.0}))
    (folder / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    return folder


def test_runs_table_summarises_by_method(tmp_path):
    refresh = {"refreshed": True, "active_cuts": 1, "added_cuts": 1}
    plain = {"refreshed": False, "active_cuts": 1, "added_cuts": 0}
    folders = [
        _run_folder(tmp_path, "a0", "asyndbt", 0, 0.8, [refresh, plain, refresh]),
        _run_folder(tmp_path, "a1", "asyndbt", 1, 0.7, [refresh, plain]),
        _run_folder(tmp_path, "j0", "joint", 0, 0.75, [{"refreshed": False, "active_cuts": 0, "added_cuts": 0}]),
    ]
    (tmp_path / "unfinished").mkdir()
    out = tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "runs_table.py"), *map(str, folders), str(tmp_path / "unfinished"),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.read_text())["summary"]
    assert summary["asyndbt"]["test_accuracy"] == [0.8, 0.7]
    assert summary["asyndbt"]["test_accuracy_mean"] == pytest.approx(0.75)
    assert summary["asyndbt"]["added_cuts"] == [2, 1] and summary["asyndbt"]["refreshes"] == [2, 1]
    assert summary["manual"]["seeds"] == [0, 1] and summary["manual"]["test_accuracy"] == [0.5, 0.51]  # once per seed
    assert "| asyndbt | 2 | 80.0, 70.0 | 75.0 ± 7.1 | 2, 1 | 2, 1 |" in proc.stdout
    assert "| joint | 1 | 75.0 | 75.0 ± 0.0 | — | 0 |" in proc.stdout
    assert "unfinished" in proc.stdout


@pytest.mark.slow
def test_fragment_landscape_quick_summarises_what_it_scored():
    """The real model scores the training queries with no fragment and with random ones; the summary is the
    scores' own statistics (quick: one pair, two fragments, on MR)."""
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "fragment_landscape.py"), "--task", "mr", "--quick",
                           "--json"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["benchmark"] == "fragment_landscape" and out["inputs"]["fragments"] == 2
    (pair,) = out["pairs"]
    assert pair["loss_fragments_min"] <= pair["loss_fragments_mean"] <= pair["loss_fragments_max"]
    assert pair["best_gain"] == pytest.approx(pair["loss_fragments_mean"] - pair["loss_fragments_min"])
    assert pair["loss_fragments_max"] > pair["loss_fragments_min"]  # two random fragments do not score alike
    assert out["best_gain_mean"] == pytest.approx(pair["best_gain"])
    # calibrated scoring asks 2 content-free inputs per prompt: (1 + 2 fragments) x (20 training queries + 2)
    assert out["prompts"] == 3 * (out["inputs"]["training_queries"] + 2)
