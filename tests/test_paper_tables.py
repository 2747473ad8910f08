"""benchmarks/paper_tables.py tabulates finished run folders: cells are mean ±
std over seeds with their count, the paper's numbers sit beside ours, and only runs whose
settings match the grid count."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from asyndbt_jax.job import JobConfig

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_tables.py"


PAPER_SETTING = {"template": "paper", "calibrate": False, "validation": 10, "keep_best": False, "pick": "own"}


def fake_run(runs, method, seed, acc, machine=None, extra=None, name=None, setting=PAPER_SETTING, **config):
    out = runs / (name or f"mr-{method}-seed{seed}")
    out.mkdir(parents=True)
    # the paper's setting: its template, raw scores, its validation size, the last prompts
    cfg = dataclasses.asdict(JobConfig(task="mr", method=method, seed=seed, out=str(out), **{**setting, **config}))
    result = {"task": "mr", "model": "gemma3-270m", "method": method, "seed": seed, "config": cfg,
              "test_accuracy": {"manual": 0.5, "random-icl": 0.55, method: acc}, "llm_prompts": 400 + seed,
              "wall_seconds": 10.0, **({"machine": machine} if machine else {}), **(extra or {})}
    (out / "result.json").write_text(json.dumps(result))


def test_report_only_tables(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "manual", 0, 0.5)
    fake_run(runs, "manual", 1, 0.5)
    box = {"cpu": "Some CPU", "cpu_count": 16, "device": "gpu:H100", "platform": "Linux", "jax_version": "0.10"}
    fake_run(runs, "cendbt", 0, 0.6, machine=box, extra={"cache_misses": 300, "virtual_time": 100.0,
                                                         "learned_fragment": "great film"})
    fake_run(runs, "cendbt", 1, 0.7, machine=box, extra={"cache_misses": 201, "virtual_time": 120.0,
                                                         "learned_fragment": "dull"})
    fake_run(runs, "feddtpt", 0, 0.5, extra={"learned_fragment": "b c"})
    (runs / "mr-feddtpt-seed0" / "history.jsonl").write_text(
        "".join(json.dumps({"round": i, "prompt": p}) + "\n" for i, p in enumerate(["a", "a", "b c", "b c"])))
    fake_run(runs, "cendbt", 2, 0.9, iterations=3)  # other settings: not this grid's run
    out = tmp_path / "results.md"
    cmd = [sys.executable, str(SCRIPT), "--report-only", "--no-plots", "--json", "--tasks", "mr", "--methods",
           "manual,cendbt,asyndbt", "--seeds", "3", "--setting", "paper", "--runs-dir", str(runs), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["runs_total"] == 9 and summary["runs_done"] == 4 and summary["runs_run_now"] == 0
    assert list(summary["cells"]) == ["paper"]  # no run of the job's defaults: no table of them
    cendbt = summary["cells"]["paper"]["mr"]["cendbt"]
    assert cendbt["n"] == 2 and abs(cendbt["mean"] - 0.65) < 1e-9 and abs(cendbt["std"] - 0.0707107) < 1e-6
    text = out.read_text()
    assert "| method | SST-2 |" in text  # mr stands for the paper's SST-2 column
    assert "| cendbt | 65.0 ± 7.1 (2) |" in text and "| *cendbt, paper* | *94.4* |" in text
    assert "| asyndbt | — |" in text
    # cost: means over seeds; a field some runs lack (older result.json files) is not averaged
    assert "| paper | mr | cendbt | 400 | 250 | 110.0 | 10 |" in text
    assert "| paper | mr | manual | 400 | — | — | 10 |" in text
    assert "| both | 65.0 ± 7.1 (2) |" in text and "| neither | 50.0 ± 0.0 (2) |" in text
    # what the tuned prompts ended with: the lowest seed; FedDTPT's global prompt changed once in 3 rounds
    assert "| paper | mr | cendbt | 0 | `great film` |  |" in text
    assert "| paper | mr | feddtpt | 0 | `b c` | 1 of 3 |" in text
    # the page names the machines that ran its runs, not the one that wrote it
    assert "Machines: Some CPU (16 CPUs, gpu:H100), Linux, jax 0.10: 2 runs; " \
           "not recorded (runs made before result.json recorded its machine): 3 runs." in text


def test_committed_glue_runs_count_wherever_the_glue_files_lie(tmp_path):
    """The runs under docs/runs were made on another machine: the GLUE folder's path differs,
    and only whether a run read GLUE files is a setting."""
    runs = tmp_path / "runs"
    out_dir = runs / "glue-sst2-manual-seed0"
    out_dir.mkdir(parents=True)
    cfg = dataclasses.asdict(JobConfig(task="sst2", method="manual", seed=0, out=str(out_dir),
                                       glue_dir="/somewhere/else/glue", template="paper", calibrate=False,
                                       validation=10, keep_best=False, pick="own"))
    (out_dir / "result.json").write_text(json.dumps({
        "task": "sst2", "method": "manual", "seed": 0, "config": cfg, "test_accuracy": {"manual": 0.5},
        "llm_prompts": 400, "wall_seconds": 1.0}))
    glue = tmp_path / "glue"
    glue.mkdir()
    out = tmp_path / "results.md"
    base = [sys.executable, str(SCRIPT), "--report-only", "--no-plots", "--json", "--methods", "manual", "--seeds",
            "1", "--setting", "paper", "--runs-dir", str(runs), "--out", str(out)]
    proc = subprocess.run([*base, "--tasks", "glue:sst2", "--glue-dir", str(glue)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["runs_done"] == 1
    assert "| manual | 50.0 (1) |" in out.read_text()


def test_the_two_settings_have_their_own_tables(tmp_path):
    """A run of the job's defaults counts in their table only when its folder says so; the paper's
    numbers sit in the paper's setting only."""
    runs = tmp_path / "runs"
    fake_run(runs, "cendbt", 0, 0.8, name="mr-cendbt-defaults-seed0", setting={})
    fake_run(runs, "cendbt", 1, 0.9, name="mr-cendbt-defaults-seed1")  # the paper's setting in a defaults folder
    fake_run(runs, "cendbt", 0, 0.6)
    out = tmp_path / "results.md"
    cmd = [sys.executable, str(SCRIPT), "--report-only", "--no-plots", "--json", "--tasks", "mr", "--methods",
           "cendbt", "--seeds", "2", "--runs-dir", str(runs), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["runs_done"] == 1  # the default --setting is the job's defaults
    assert summary["cells"]["defaults"]["mr"]["cendbt"]["n"] == 1
    assert summary["cells"]["defaults"]["mr"]["cendbt"]["mean"] == 0.8
    assert summary["cells"]["paper"]["mr"]["cendbt"]["mean"] == 0.6
    text = out.read_text()
    defaults, paper = text.split("## Table 3 with the paper's setting")
    assert "## Table 3 with the job's defaults" in defaults and "| cendbt | 80.0 (1) |" in defaults
    assert "*cendbt, paper*" not in defaults
    assert "| cendbt | 60.0 (1) |" in paper and "| *cendbt, paper* | *94.4* |" in paper
