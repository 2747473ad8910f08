"""``asyndbt run``: the real job end to end on gemma-3-270m and the MR sentences (a quick
run), its outputs, a rerun answered from the cache, and bad input (issue 8)."""

import json

import pytest

from asyndbt_jax.cli import main


@pytest.mark.slow
def test_quick_run_then_a_free_rerun(tmp_path, capsys):
    args = ["run", "--quick", "--json", "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "r.sqlite")]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["task"] == "mr" and first["method"] == "asyndbt" and first["test_examples"] == 20
    assert set(first["test_accuracy"]) == {"manual", "random_icl", "asyndbt"}
    assert all(0.0 <= a <= 1.0 for a in first["test_accuracy"].values())
    assert first["llm_prompts"] > 0 and first["cache_misses"] > 0
    assert len(first["learned_demonstrations"]) == 3 and all(len(d) == 2 for d in first["learned_demonstrations"])
    assert first["learned_fragment"]
    history = (tmp_path / "run" / "history.jsonl").read_text().splitlines()
    assert len(history) == first["iterations"] == 3
    assert json.loads((tmp_path / "run" / "result.json").read_text())["test_accuracy"] == first["test_accuracy"]

    assert main(args) == 0  # the same experiment again: every answer is in the cache
    again = json.loads(capsys.readouterr().out)
    assert again["cache_misses"] == 0 and again["test_accuracy"] == first["test_accuracy"]
    assert again["learned_fragment"] == first["learned_fragment"]


@pytest.mark.parametrize("args, match", [
    (["--method", "magic"], r"unknown method 'magic'; known: \['asyndbt'"),
    (["--task", "imdb"], r"unknown task 'imdb'; known: \['mr'\]"),
    (["--workers", "2", "--active", "3"], r"--active \(S=3\) must be between 1 and --workers \(R=2\)"),
])
def test_bad_input(args, match, tmp_path):
    with pytest.raises(SystemExit, match=match):
        main(["run", "--quick", "--json", "--out", str(tmp_path), *args])


def test_a_folder_holding_another_run_is_not_overwritten(tmp_path):
    from asyndbt_jax.job import JobConfig

    out = tmp_path / "run"
    out.mkdir()
    other = JobConfig(seed=1, out=str(out))
    result = json.dumps({"config": __import__("dataclasses").asdict(other)})
    (out / "result.json").write_text(result)
    with pytest.raises(SystemExit, match=r"holds a run with other settings: seed=1 \(now 0\); choose another --out"):
        main(["run", "--json", "--out", str(out), "--seed", "0"])
    assert (out / "result.json").read_text() == result and not (out / "history.jsonl").exists()
    (out / "result.json").write_text("{not json")
    with pytest.raises(SystemExit, match="unreadable result.json"):
        main(["run", "--json", "--out", str(out)])
