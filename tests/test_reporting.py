"""``asyndbt plot`` / ``asyndbt report`` on run folders (written here in the format
``asyndbt run`` writes; the job tests check that format)."""

import json

import pytest

from asyndbt_jax.cli import main
from asyndbt_jax.reporting import curves, load_run


def write_run(folder, method="asyndbt", seed=0, acc=0.6, active=2, iterations=4):
    folder.mkdir(parents=True)
    config = {"task": "mr", "method": method, "workers": 3, "active": active, "seed": seed, "out": str(folder)}
    history = [{"iteration": i, "virtual_time": 1.5 * i, "queries": 10, "mean_loss": 0.7 - 0.01 * i,
                "validation_accuracy": 0.5 + 0.02 * i} for i in range(iterations)]
    history[0]["test_accuracy"], history[-1]["test_accuracy"] = 0.5, acc
    result = {"task": "mr", "model": "gemma3-270m", "method": method, "seed": seed, "config": config,
              "test_accuracy": {"manual": 0.5, "random-icl": 0.55, method: acc}, "llm_prompts": 100 + seed,
              "iterations": iterations, "virtual_time": 1.5 * (iterations - 1), "wall_seconds": 12.0}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    (folder / "result.json").write_text(json.dumps(result))
    return folder


def test_curves_are_cumulative_and_keep_only_evaluated_points(tmp_path):
    c = curves(load_run(write_run(tmp_path / "a")).history)
    assert c["llm_queries"].tolist() == [10, 20, 30, 40]
    assert c["test_at"].tolist() == [0, 3] and c["test"].tolist() == [0.5, 0.6]
    assert c["val_at"].tolist() == [0, 1, 2, 3]


def test_report_rows_and_mean_std_over_seeds(tmp_path, capsys):
    runs = [write_run(tmp_path / f"s{s}", seed=s, acc=a) for s, a in [(0, 0.6), (1, 0.7), (2, 0.8)]]
    other = write_run(tmp_path / "sync", method="sync", active=3)
    assert main(["report", *map(str, runs), str(other)]) == 0
    text = capsys.readouterr().out
    assert "| s1 | mr | gemma3-270m | asyndbt | 3 | 2 | 1 | 50.0 | 55.0 | 70.0 | 101 | 4 | 4.5 | 12 |" in text
    assert "| mr | gemma3-270m | asyndbt | 3 | 2 | 3 | 50.0 ± 0.0 | 55.0 ± 0.0 | 70.0 ± 10.0 | 101 |" in text
    assert "\n| mr | gemma3-270m | sync |" not in text  # one run: no aggregate row
    assert main(["report", str(runs[0]), "--out", str(tmp_path / "r.md")]) == 0
    assert (tmp_path / "r.md").read_text().startswith("| run | task |")


def test_plot_writes_a_png_with_every_run(tmp_path):
    pytest.importorskip("matplotlib")
    a, s = write_run(tmp_path / "async"), write_run(tmp_path / "sync", method="sync", active=3)
    assert main(["plot", str(a), str(s)]) == 0
    png = (a / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_errors_name_the_folder(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "checkpoint.npz").write_bytes(b"")
    with pytest.raises(SystemExit, match=r"half holds no finished run: no result.json \(it has a checkpoint: asyndbt run --resume it\)"):
        main(["report", str(tmp_path / "half")])
    base = write_run(tmp_path / "manual", method="manual")
    (base / "history.jsonl").unlink()
    with pytest.raises(SystemExit, match="none of these runs has an iteration history to plot"):
        main(["plot", str(base)])
