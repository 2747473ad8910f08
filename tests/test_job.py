"""``asyndbt run``: the real job end to end on gemma-3-270m and the MR sentences (a quick
run), its outputs, a rerun answered from the cache, and bad input."""

import json
import time

import pytest

from asyndbt_jax.cli import main

TINY = ["--workers", "2", "--active", "1", "--samples", "2", "--fragment-words", "3", "--test-size", "4",
        "--validation", "10"]


@pytest.mark.slow
def test_quick_run_then_a_free_rerun(tmp_path, capsys):
    args = ["run", "--quick", "--json", "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "r.sqlite")]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["task"] == "mr" and first["method"] == "asyndbt" and first["test_examples"] == 10
    assert set(first["test_accuracy"]) == {"manual", "random-icl", "asyndbt"}
    # fixed prompts on 10 test sentences: whole tenths; the calibrated fitted template is far above chance on MR
    # (78.8 % on 200 sentences, docs/tuning.md), a broken scorer or calibration sits at or below 0.5
    assert all(round(first["test_accuracy"][m] * 10, 4).is_integer() for m in ("manual", "random-icl"))
    assert first["test_accuracy"]["manual"] >= 0.7
    assert first["llm_prompts"] == sum(first["llm_prompts_by_method"].values()) and first["cache_misses"] > 0
    # calibrated (the default): each fixed prompt also asks the two content-free inputs
    assert first["llm_prompts_by_method"]["manual"] == first["llm_prompts_by_method"]["random-icl"] == 10 + 2
    assert first["template"] == "fitted:sst2" and first["calibrated"] is True
    assert len(first["learned_demonstrations"]) == 3 and all(len(d) == 2 for d in first["learned_demonstrations"])
    # early stopping (the default): each worker delivers its best prompt on its validation examples, fragment included
    assert first["kept_best"] is True and len(first["learned_fragments"]) == 3
    # the fragment holds vocabulary n-grams only ("" = no word is never printed)
    assert "  " not in first["learned_fragment"] and first["learned_fragment"] == first["learned_fragment"].strip()
    history = (tmp_path / "run" / "history.jsonl").read_text().splitlines()
    assert len(history) == first["iterations"] == 2
    # the pooled pick (the default): every worker delivers the prompt best on all their validation examples
    last = json.loads(history[-1])
    assert first["pick"] == "pooled" and first["picked_worker"] == last["picked_worker"] in (0, 1, 2)
    assert all(d == first["learned_demonstrations"][0] for d in first["learned_demonstrations"])
    assert len(set(first["learned_fragments"])) == 1
    assert first["test_accuracy"]["asyndbt"] == last["picked_test_accuracy"]  # the run's own last evaluation
    assert json.loads((tmp_path / "run" / "result.json").read_text())["test_accuracy"] == first["test_accuracy"]
    assert first["machine"]["cpu_count"] >= 1 and first["machine"]["device"]  # what measured it

    assert main(args) == 0  # the same experiment again: every answer is in the cache
    again = json.loads(capsys.readouterr().out)
    assert again["cache_misses"] == 0 and again["test_accuracy"] == first["test_accuracy"]
    assert again["learned_fragment"] == first["learned_fragment"]


@pytest.mark.parametrize("args, match", [
    (["--method", "magic"], r"unknown method 'magic'; known: \['manual', 'random-icl', 'kate', 'asyndbt'"),
    (["--task", "imdb"], r"unknown task 'imdb'; known: \[.*'mr'.*'qnli'.*\]"),
    (["--workers", "2", "--active", "3"], r"--active \(S=3\) must be between 1 and --workers \(R=2\)"),
    (["--attack", "bribe"], r"unknown attack 'bribe'; known: \['none'"),
    (["--aggregator", "vote"], r"unknown aggregator 'vote'; known: \['sign_consensus'"),
    (["--malicious", "3"], r"--malicious \(B=3\) must be between 0 and --workers - 1 \(2\)"),
    (["--malicious", "2"], r"--aggregator sign_consensus needs an honest majority: --malicious \(B=2\) must be below half"),
    (["--iterations", "0"], r"iterations must be >= 1, got 0"),
    (["--candidates", "0"], r"candidates must be >= 1, got 0"),
    (["--candidates", "2", "--demos-per-class", "3"], r"demos_per_class \(3\) cannot exceed candidates \(2\)"),
    (["--template", "fancy"], r"a task's template must be one of \('fitted', 'paper'\), got 'fancy'"),
    (["--cut-tolerance", "0"], r"cut_tolerance must be a finite positive number, got 0.0"),
    (["--samples", "1"], r"samples must be >= 2 \(the gradient estimate compares sampled configurations\), got 1"),
    (["--budget", "100"], r"--budget 100 is too small: the baselines score 24 prompts and one iteration with its "
                          r"evaluation up to \d+"),
    (["--resume", "nowhere"], r"nowhere holds no run to resume \(no config.json\)"),
    (["--runtime", "threads"], r"unknown runtime 'threads'; known: simulated, local, ray"),
    (["--runtime", "local", "--method", "cendbt"], r"--runtime local runs the distributed methods \(asyndbt, "),
    (["--runtime", "ray", "--malicious", "1"], r"attacks are simulated only"),
    (["--runtime", "local", "--budget", "1000"], r"--budget is checked on the simulated runtime only"),
    (["--runtime", "ray", "--ray-address", "127.0.0.1:9"], r"cannot reach the Ray cluster at '127.0.0.1:9'"),
])
def test_bad_input(args, match, tmp_path):
    with pytest.raises(SystemExit, match=match):
        main(["run", "--json", "--out", str(tmp_path), *([] if "--resume" in args else ["--quick"]), *args])
    assert not (tmp_path / "result.json").exists()


@pytest.mark.slow
def test_quick_run_on_the_local_runtime(tmp_path, capsys):
    """Real concurrent workers on threads, sharing the loaded gemma-3-270m."""
    assert main(["run", "--json", *TINY, "--iterations", "3", "--runtime", "local", "--out", str(tmp_path / "run"),
                 "--cache", str(tmp_path / "r.sqlite")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["runtime"] == "local" and result["iterations"] == 3 and result["failed_workers"] == {}
    assert len(result["learned_demonstrations"]) == 2
    assert result["kept_best"] is False  # a real runtime delivers the last decoded prompts
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert len(history) == 3 and history[0]["arrived"] == [0, 1]
    assert result["test_accuracy"]["asyndbt"] == history[-1]["test_accuracy"]  # the run's own last evaluation
    # every configuration-query pair the workers asked, plus the final evaluation of both workers' prompts
    # (calibrated: each prompt also asks 2 content-free inputs)
    assert result["llm_prompts_by_method"]["asyndbt"] >= sum(h["queries"] for h in history)


@pytest.mark.slow
def test_quick_run_on_ray_actors(tmp_path, capsys):
    """Two workers on one Ray actor that loads its own model (SmolLM2: the fast one)."""
    ray = pytest.importorskip("ray")
    try:
        assert main(["run", "--json", *TINY, "--iterations", "3", "--runtime", "ray", "--actors", "1",
                     "--model", "smollm2-135m", "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "r.sqlite")]) == 0
    finally:
        ray.shutdown()
    result = json.loads(capsys.readouterr().out)
    assert result["runtime"] == "ray" and result["iterations"] == 3 and result["failed_workers"] == {}
    assert len(result["learned_demonstrations"]) == 2
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert len(history) == 3 and result["test_accuracy"]["asyndbt"] == history[-1]["test_accuracy"]


def test_a_folder_holding_another_run_is_not_overwritten(tmp_path):
    from asyndbt_jax.job import JobConfig

    out = tmp_path / "run"
    out.mkdir()
    other = json.dumps(__import__("dataclasses").asdict(JobConfig(seed=1, out=str(out))))
    (out / "config.json").write_text(other)
    with pytest.raises(SystemExit, match=r"holds a run with other settings: seed=1 \(now 0\); choose another --out"):
        main(["run", "--json", "--out", str(out), "--seed", "0"])
    with pytest.raises(SystemExit, match=r"is a run with other settings: seed=1 \(now 2\); --resume continues"):
        main(["run", "--json", "--resume", str(out), "--seed", "2"])
    with pytest.raises(SystemExit, match=r"has no checkpoint yet .* start it again without --resume"):
        main(["run", "--json", "--resume", str(out), "--seed", "1"])
    assert (out / "config.json").read_text() == other and sorted(p.name for p in out.iterdir()) == ["config.json"]
    (out / "config.json").write_text("{not json")
    with pytest.raises(SystemExit, match="unreadable config.json"):
        main(["run", "--json", "--out", str(out)])


def test_toml_config_file(tmp_path):
    from asyndbt_jax.cli import build_parser
    from asyndbt_jax.job import read_config_file

    good = tmp_path / "job.toml"
    good.write_text('task = "mr"\nmethod = "sync"\nworkers = 5\nfragment-words = 7\nalpha = 0.5\n')
    assert read_config_file(str(good)) == {"task": "mr", "method": "sync", "workers": 5, "fragment_words": 7,
                                           "alpha": 0.5}
    bad = tmp_path / "bad.toml"
    bad.write_text("workerz = 5\n")
    with pytest.raises(SystemExit, match=r"bad.toml: unknown setting\(s\) \['workerz'\]; valid: \['active'"):
        main(["run", "--config", str(bad)])
    bad.write_text('workers = "five"\n')
    with pytest.raises(SystemExit, match=r"workers must be int, got 'five'"):
        main(["run", "--config", str(bad)])
    bad.write_text("workers = \n")
    with pytest.raises(SystemExit, match=r"bad.toml is not valid TOML"):
        main(["run", "--config", str(bad)])
    with pytest.raises(SystemExit, match=r"config file .*missing.toml does not exist"):
        main(["run", "--config", str(tmp_path / "missing.toml")])
    # flags beat the file, which beats the defaults: an unknown method named by the file is overridden
    bad.write_text('method = "magic"\nworkers = 2\nactive = 3\n')
    with pytest.raises(SystemExit, match=r"--active \(S=3\) must be between 1 and --workers \(R=2\)"):
        main(["run", "--config", str(bad), "--method", "sync", "--out", str(tmp_path / "o")])
    assert build_parser().parse_args(["run", "--config", str(good)]).config == str(good)




def _arrays(path):
    import numpy as np

    with np.load(path) as z:
        return {k: z[k] for k in z.files if k != "meta"}, json.loads(str(z["meta"]))


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_state(tmp_path):
    """Kill ``asyndbt run`` with SIGKILL after its third checkpoint, ``--resume`` it, and run
    the same job uninterrupted (on the same response cache, so the model's answers are the
    same bits): the final checkpoints (every array, the key, the clock and its generator),
    the iteration logs and the accuracies are identical."""
    import os
    import signal
    import subprocess
    import sys

    import numpy as np

    from asyndbt_jax.simulator import checkpoint_meta

    cache = str(tmp_path / "r.sqlite")
    args = [sys.executable, "-m", "asyndbt_jax.cli", "run", "--json", *TINY, "--iterations", "7", "--cache", cache]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if checkpoint_meta(killed / "checkpoint.npz")["next_iteration"] >= 3:
                break
        except ValueError:
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = checkpoint_meta(killed / "checkpoint.npz")["next_iteration"]
    assert 3 <= at_kill < 7 and not (killed / "result.json").exists()
    again = subprocess.run([*args, "--out", str(killed)], capture_output=True, text=True)
    assert again.returncode != 0 and "holds an unfinished run of these settings" in again.stderr
    assert checkpoint_meta(killed / "checkpoint.npz")["next_iteration"] == at_kill  # untouched

    spent = checkpoint_meta(killed / "checkpoint.npz")["extra"]["wall_seconds"]  # when the checkpoint was written
    start = time.perf_counter()
    resumed = subprocess.run([sys.executable, "-m", "asyndbt_jax.cli", "run", "--json", "--resume", str(killed)],
                             capture_output=True, text=True, check=True)
    took = time.perf_counter() - start
    whole = subprocess.run([*args, "--out", str(tmp_path / "whole")], capture_output=True, text=True, check=True)
    a, b = json.loads(resumed.stdout), json.loads(whole.stdout)
    assert a["resumed"] and a["iterations"] == b["iterations"] == 7
    assert 0 < spent < a["wall_seconds"] < spent + took  # the wall time of both parts, not only the last
    for key in ("test_accuracy", "llm_prompts_by_method", "learned_demonstrations", "learned_fragment",
                "virtual_time", "final_validation_accuracy"):
        assert a[key] == b[key], key
    (arrays_a, meta_a), (arrays_b, meta_b) = _arrays(killed / "checkpoint.npz"), _arrays(tmp_path / "whole" / "checkpoint.npz")
    assert arrays_a.keys() == arrays_b.keys()
    for k in arrays_a:
        np.testing.assert_array_equal(arrays_a[k], arrays_b[k])
    assert meta_a.pop("extra").keys() == meta_b.pop("extra").keys() == {"prompts", "wall_seconds"}
    assert meta_a == meta_b
    assert (killed / "history.jsonl").read_text() == (tmp_path / "whole" / "history.jsonl").read_text()


@pytest.mark.slow
def test_prompt_baselines_are_methods(tmp_path, capsys):
    """``--method kate`` scores one prompt per test query with its nearest candidates; the
    prompt baselines train nothing and report their own prompts."""
    assert main(["run", "--json", *TINY, "--method", "kate", "--out", str(tmp_path / "k"),
                 "--cache", str(tmp_path / "r.sqlite")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["test_accuracy"]) == {"manual", "random-icl", "kate"}
    # calibrated: every prompt (one for all queries; kate: one per query) also asks 2 content-free inputs
    assert out["llm_prompts_by_method"] == {"manual": 4 + 2, "random-icl": 4 + 2, "kate": 4 * (1 + 2)}
    assert "learned_fragment" not in out and "iterations" not in out


def test_nearest_demos_picks_the_most_similar_candidate_per_class():
    import numpy as np

    from asyndbt_jax.baselines import nearest_demos

    e = np.eye(4, dtype=np.float32)
    candidates = np.stack([np.stack([e[0], e[1]]), np.stack([e[2], e[3]])])  # [U=2, V=2, d=4]
    queries = np.stack([e[1], (e[0] + e[3]) / np.sqrt(2)])
    assert nearest_demos(queries, candidates).tolist() == [[1, 0], [0, 1]]
    # k = 2: the nearest of every class, then the second nearest (the prompt's slot order)
    assert nearest_demos(queries, candidates, 2).tolist() == [[1, 0, 0, 1], [0, 1, 1, 0]]


@pytest.mark.slow
def test_a_budget_stops_tuning_before_it_is_overrun(tmp_path, capsys):
    args = ["run", "--json", *TINY, "--iterations", "7", "--out", str(tmp_path / "b"), "--cache", str(tmp_path / "r.sqlite")]
    assert main([*args, "--budget", "300"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stopped_by_budget"] and 1 <= out["iterations"] < 7 and out["llm_prompts"] <= 300
    history = [json.loads(line) for line in (tmp_path / "b" / "history.jsonl").read_text().splitlines()]
    assert history[-1]["stopped"] and "test_accuracy" in history[-1] and len(history) == out["iterations"]


@pytest.mark.slow
def test_feddtpt_is_a_method_of_the_job(tmp_path, capsys):
    """``--method feddtpt`` (random-replacement client: no proposer, so it is quick) reports
    its accuracy, prompts, global note and communication like every other method."""
    assert main(["run", "--json", *TINY, "--iterations", "2", "--method", "feddtpt", "--feddtpt-client", "random",
                 "--feddtpt-server", "no-cluster", "--out", str(tmp_path / "f"),
                 "--cache", str(tmp_path / "r.sqlite")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["test_accuracy"]) == {"manual", "random-icl", "feddtpt"} and out["rounds"] == 2
    assert out["llm_prompts_by_method"]["feddtpt"] > 0 and out["communication"]["upload_tokens"] > 0
    assert isinstance(out["learned_fragment"], str)
    history = (tmp_path / "f" / "history.jsonl").read_text().splitlines()
    assert len(history) == 3  # round 0 (the initial prompt) and two rounds
    # checkpointed every round: --resume continues from checkpoint.json (here: after the last round)
    saved = json.loads((tmp_path / "f" / "checkpoint.json").read_text())
    assert saved["next_round"] == 3 and 0 < saved["extra"]["wall_seconds"] < out["wall_seconds"]
    saved["extra"]["wall_seconds"] = 1000.0  # planted: the resumed run adds its own time to what the checkpoint says
    (tmp_path / "f" / "checkpoint.json").write_text(json.dumps(saved))
    start = time.perf_counter()
    assert main(["run", "--json", "--resume", str(tmp_path / "f"), "--cache", str(tmp_path / "r.sqlite")]) == 0
    took = time.perf_counter() - start
    again = json.loads(capsys.readouterr().out)
    assert again["resumed"] and again["rounds"] == 2 and 1000.0 < again["wall_seconds"] < 1000.0 + took
    for key in ("test_accuracy", "learned_fragment", "llm_prompts_by_method", "communication"):
        assert again[key] == out[key]
    assert (tmp_path / "f" / "history.jsonl").read_text().splitlines() == history
    # the asynchronous extension: the same job on the virtual clock
    assert main(["run", "--json", *TINY, "--iterations", "2", "--method", "feddtpt", "--feddtpt-client", "random",
                 "--feddtpt-server", "no-cluster", "--feddtpt-async", "--out", str(tmp_path / "a"),
                 "--cache", str(tmp_path / "r.sqlite")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["asynchronous"] and out["virtual_time"] > 0 and out["rounds"] == 2
    rounds = [json.loads(line) for line in (tmp_path / "a" / "history.jsonl").read_text().splitlines()][1:]
    assert all(1 <= r["participants"] <= 3 for r in rounds) and max(r["max_staleness"] for r in rounds) <= 4
    with pytest.raises(SystemExit, match=r"unknown feddtpt server 'dbscan'; known: \['cluster'"):
        main(["run", "--json", *TINY, "--method", "feddtpt", "--feddtpt-server", "dbscan", "--out", str(tmp_path / "g")])


def test_runs_written_before_calibration_read_as_raw_scores_with_the_papers_template():
    import dataclasses

    from asyndbt_jax.job import DEFAULTS, JobConfig, differences, upgrade_config

    old = {k: v for k, v in DEFAULTS.items() if k not in ("calibrate", "candidates", "demos_per_class")}
    assert upgrade_config(old)["calibrate"] is False and upgrade_config(old)["template"] == "paper"
    assert upgrade_config({**old, "train_file": "mine.csv"})["template"] is None  # a user's file: its default block
    now = dataclasses.asdict(JobConfig())
    assert differences(old, now) == ["calibrate=False (now True)", "template='paper' (now None)"]
    assert differences(old, dataclasses.asdict(JobConfig(template="paper", calibrate=False))) == []
    assert upgrade_config(now) is now


def test_runs_written_before_the_validation_setting_read_as_the_papers_split_and_the_last_prompts():
    import dataclasses

    from asyndbt_jax.job import DEFAULTS, JobConfig, differences, upgrade_config

    old = {k: v for k, v in DEFAULTS.items() if k not in ("validation", "keep_best", "pick")}
    assert upgrade_config(old)["validation"] == 10 and upgrade_config(old)["keep_best"] is False
    now = dataclasses.asdict(JobConfig())
    assert differences(old, now) == ["keep_best=False (now True)", "pick='own' (now 'pooled')", "validation=10 (now 20)"]
    assert differences(old, dataclasses.asdict(JobConfig(validation=10, keep_best=False, pick="own"))) == []
    # written with early stopping but before the pooled pick: each worker delivered its own prompt
    kept = {k: v for k, v in DEFAULTS.items() if k != "pick"}
    assert differences(kept, now) == ["pick='own' (now 'pooled')"]


def test_the_validation_size_and_early_stopping_are_flags(tmp_path, capsys):
    from asyndbt_jax.job import JobConfig

    with pytest.raises(SystemExit, match=r"validation must be >= 1, got 0"):
        main(["run", "--json", "--validation", "0", "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match=r"the split needs 10060 \(train 10 \+ validation 10000 \+ candidates 50\)"):
        main(["run", "--json", "--validation", "10000", "--out", str(tmp_path / "b")])
    with pytest.raises(SystemExit):
        main(["run", "--json", "--pick", "vote", "--out", str(tmp_path / "c")])
    with pytest.raises(ValueError, match=r"pick must be one of \('own', 'pooled'\), got 'vote'"):
        JobConfig(pick="vote")  # a config file's value meets the same check as the flag
    assert "argument --pick: invalid choice: 'vote'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before the run folder
    assert not (tmp_path / "c").exists()
