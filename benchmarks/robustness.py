"""Robustness to malicious workers: every attack × every aggregator × attacker fraction.

    python benchmarks/robustness.py [--quick] [--json] [--out FILE] [--workers R]
        [--iterations T] [--seeds K] [--attacks a,b] [--aggregators x,y] [--strength X] [--heatmap PNG]
        [--jobs N] [--fractions 0,0.3] [--override mu=1.0,lr_rho=0.1]

AsynDBT on the planted task (paper shapes M = 75, N = 100, U = 2, V = 50; Dirichlet α = 1
non-IID workers; word utilities of scale 1.0 rather than the default 0.3, so the shared
fragment, the only thing the server aggregates, can move accuracy: ``fragment_lever`` in
the JSON gives the accuracy of the best demonstrations with the worst / a random / the best
fragment), R = 100 workers (``--quick``: R = 20), S = R/2, τ = 8, lognormal(1)
delays, I = 10, Adam lr 0.01 / 0.05. For every attack and aggregator, the attacker
fractions B/R (``--fractions``, default {0, 0.1, 0.2, 0.3}; 0 and 0.3 must be among them) and
``--seeds`` seeds run as one vmapped batch
(``simulator.simulate_batch``: one shared straggler schedule, one compilation); the
malicious workers are the last B; Krum's assumed bound is f = 0.3·R in every run. The
reported accuracy is the benign workers' final test accuracy, averaged over seeds. An
aggregator named ``rule+nnm`` runs ``rule`` after nearest-neighbour mixing (the engine's
``pre_aggregation="nnm"``, f = 0.3·R). ``--override`` sets engine settings for every cell
(e.g. the ψ-sign rule's earlier ``mu=1.0,lr_rho=0.1``, or its step ``lr_consensus``).
``--strength`` sets every message attack's parameter (``attacks.ATTACK_STRENGTH``: the
sign-flip scale, noise std, scaling factor, ALIE z, IPM ε) instead of its default.
``--jobs N`` runs the aggregator rows in N child processes of this script (each compiles
its own cells; on a GPU machine they share the card, each allocating on demand); the
merged JSON is the same as one process would print. ``--resume`` continues a stopped run:
the cells already written to ``--out`` (or, with ``--jobs``, to its ``.partN`` files) are kept.

JSON: ``results[attack][aggregator][fraction] = accuracy`` (fractions as strings, "0.3";
accuracies in [0, 1]), ``spread[...]`` the seed standard deviation alike, and ``targets``:
for each aggregator the largest drop from its B = 0 accuracy at 30 % over every attack,
whether that stays within 2 points, the rules that also stay within 2 points of the mean's
B = 0 accuracy (no heterogeneity tax), and the largest drop of ``mean``. Never asserts.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from asyndbt_jax.attacks import ATTACK_STRENGTH, ATTACKS  # noqa: E402
from asyndbt_jax.engine import AGGREGATORS, Data, method_config  # noqa: E402
from asyndbt_jax.oracle import accuracy, make_planted_task, oracle_feedback, restricted_optimum  # noqa: E402
from asyndbt_jax.selection import Configuration  # noqa: E402
from asyndbt_jax.simulator import parse_delay, simulate_batch  # noqa: E402

FRACTIONS = (0.0, 0.1, 0.2, 0.3)
# Every server rule, and the robust rules after nearest-neighbour mixing.
ROWS = AGGREGATORS + tuple(f"{g}+nnm" for g in AGGREGATORS if g not in ("mean", "sign_consensus"))


def _rule(row: str) -> dict:
    """The engine settings of a row name (``rule`` or ``rule+nnm``)."""
    rule, _, pre = row.partition("+")
    return {"aggregator": rule, "pre_aggregation": pre or "none"}


def _extra(parser):
    parser.add_argument("--workers", type=int, help="R (default 100; 20 with --quick)")
    parser.add_argument("--iterations", type=int, help="server iterations (default 600; 300 with --quick)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per cell (default 2)")
    parser.add_argument("--attacks", help="comma-separated subset of " + ",".join(a for a in ATTACKS if a != "none"))
    parser.add_argument("--aggregators", help="comma-separated subset of " + ",".join(ROWS))
    parser.add_argument("--fractions", default="0,0.1,0.2,0.3", help="attacker fractions B/R (default 0,0.1,0.2,0.3)")
    parser.add_argument("--override", default="",
                        help="engine settings for every cell, e.g. mu=1.0,lr_rho=0.1 (numbers; AsynDBTConfig field names)")
    parser.add_argument("--word-scale", type=float, default=1.0,
                        help="planted word-utility scale (default 1.0: the shared fragment can move accuracy; 0.3 is the task default)")
    parser.add_argument("--strength", type=float, help="attack_strength of the message attacks that have one (default: each attack's own)")
    parser.add_argument("--heatmap", help="write a heat map of the 30%% drops to this PNG")
    parser.add_argument("--jobs", type=int, default=1, help="aggregator rows run in this many child processes (default 1)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the cells already in --out (and its .partN files with --jobs) and run only the rest")


def _subset(text, universe, what):
    if not text:
        return list(universe)
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in universe]
    if unknown:
        raise SystemExit(f"unknown {what}: {unknown}; choose from {list(universe)}")
    return chosen


def heatmap(path: str, results: dict, attacks, aggregators) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drop = np.array([[100 * (results[a][g]["0.0"] - results[a][g]["0.3"]) for g in aggregators] for a in attacks])
    fig, ax = plt.subplots(figsize=(1.1 * len(aggregators) + 2, 0.5 * len(attacks) + 1.5))
    im = ax.imshow(drop, cmap="RdYlGn_r", aspect="auto", vmin=-5, vmax=max(15.0, float(np.nanmax(drop))))
    ax.set_xticks(range(len(aggregators)), aggregators, rotation=35, ha="right")
    ax.set_yticks(range(len(attacks)), attacks)
    for i in range(len(attacks)):
        for j in range(len(aggregators)):
            ax.text(j, i, f"{drop[i, j]:.1f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, label="accuracy drop at 30% malicious (points)")
    ax.set_title("Test accuracy lost to 30% malicious workers (vs. the rule's own B = 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def fragment_lever(task) -> dict:
    """Test accuracy of the best demonstrations with the worst, a random and the best fragment
    (by word utility): how far an attack on the shared fragment can move accuracy."""
    T = task.oracle.demo_utility.shape[-1]
    uniform = jnp.full((T,), 1.0 / T)
    demos = restricted_optimum(task.oracle, uniform, use_fragment=False, use_demos=True).demos
    score = np.asarray(task.oracle.word_utility) @ np.asarray(uniform)
    M, N = score.shape
    words = {"worst": score.argmin(-1), "random": np.random.default_rng(0).integers(0, N, M), "best": score.argmax(-1)}
    out = {f"{name}_fragment": float(accuracy(task.oracle, Configuration(jnp.asarray(w, jnp.int32), demos), task.test))
           for name, w in words.items()}
    out["no_fragment"] = float(accuracy(task.oracle, Configuration(jnp.full((M,), -1, jnp.int32), demos), task.test))
    out["optimum"] = task.optimum_accuracy
    return out


def _run_rows(args, aggregators, attacks, task, R, iterations, seeds, counts, bound):
    """Every (attack, aggregator) cell in this process: all fractions and seeds of a cell as one batch."""
    feedback = functools.partial(oracle_feedback, task.oracle)
    data = Data(task.train, task.validation)
    M, N, _ = task.oracle.word_utility.shape
    U, V, _ = task.oracle.demo_utility.shape
    delay = parse_delay("lognormal:1.0")
    fractions = args.fraction_list
    malicious = np.zeros((len(fractions) * len(seeds), R), bool)
    for i, B in enumerate(np.repeat(counts, len(seeds))):
        malicious[i, R - B :] = True
    results: dict = {attack: {} for attack in attacks}
    spread: dict = {attack: {} for attack in attacks}
    timings: dict = {}
    if args.resume and args.out and Path(args.out).exists():
        done = json.loads(Path(args.out).read_text())
        for attack in attacks:
            for aggregator in aggregators:
                if aggregator in done.get("results", {}).get(attack, {}):
                    results[attack][aggregator] = done["results"][attack][aggregator]
                    spread[attack][aggregator] = done.get("spread", {}).get(attack, {}).get(aggregator)
                    timings[f"{attack}/{aggregator}"] = done.get("seconds", {}).get(f"{attack}/{aggregator}")
    for aggregator in aggregators:  # one aggregator's full row at a time: a stopped run leaves complete rows
        for attack in attacks:
            if aggregator in results[attack]:
                continue
            config = method_config(
                "asyndbt", num_workers=R, num_active=R // 2, max_staleness=8, num_fragment_words=M, vocab_size=N,
                num_classes=U, num_candidates=V, num_samples=10, lr_fragment=0.01, lr_demos=0.05,
                **_rule(aggregator), attack=attack, num_malicious=bound,
                attack_strength=args.strength if attack in ATTACK_STRENGTH else None, **args.overrides,
            )
            started = time.perf_counter()
            batch = simulate_batch(
                config, feedback, data, task.test, delay, iterations=iterations, seeds=seeds * len(fractions),
                malicious=malicious, progress=False, chunk=iterations,
            )
            timings[f"{attack}/{aggregator}"] = time.perf_counter() - started
            acc = batch.test_accuracy.reshape(len(fractions), len(seeds))
            results[attack][aggregator] = {str(f): float(acc[i].mean()) for i, f in enumerate(fractions)}
            spread[attack][aggregator] = {str(f): float(acc[i].std()) for i, f in enumerate(fractions)}
            _common.log(args, f"{attack:18s} {aggregator:18s} " + " ".join(f"{a:.3f}" for a in acc.mean(1))
                        + f"  ({timings[f'{attack}/{aggregator}']:.0f}s)")
            if args.out:  # nothing lost if a long run is stopped: the cells so far, marked incomplete
                Path(args.out).write_text(json.dumps({"benchmark": "robustness", "complete": False, "results": results,
                                                      "spread": spread, "seconds": timings}, indent=2))

    return results, spread, timings


def _run_children(args, aggregators, attacks):
    """The aggregator rows split over ``args.jobs`` child processes of this script; their JSON merged."""
    groups = [aggregators[i :: args.jobs] for i in range(args.jobs) if aggregators[i :: args.jobs]]
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    passthrough = ["--seeds", str(args.seeds), "--word-scale", str(args.word_scale), "--attacks", ",".join(attacks),
                   "--fractions", args.fractions, "--override", args.override]
    for flag, value in (("--workers", args.workers), ("--iterations", args.iterations), ("--strength", args.strength)):
        if value is not None:
            passthrough += [flag, str(value)]
    if args.quick:
        passthrough.append("--quick")
    if args.resume:
        passthrough.append("--resume")
    with tempfile.TemporaryDirectory() as tmp:
        # beside --out when given, so a stopped run keeps every child's finished cells
        outs = [Path(f"{args.out}.part{i}" if args.out else Path(tmp) / f"part{i}.json") for i in range(len(groups))]
        procs = [subprocess.Popen([sys.executable, __file__, *passthrough, "--aggregators", ",".join(group),
                                   "--out", str(out), *(["--json"] if args.json else [])],
                                  env=env, stdout=subprocess.DEVNULL)
                 for group, out in zip(groups, outs)]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise SystemExit(f"a child run failed (exit codes {codes}); its rows are missing")
        parts = [json.loads(out.read_text()) for out in outs]
        for out in outs:
            out.unlink()
    owner = {g: part for group, part in zip(groups, parts) for g in group}  # rows in the requested order
    results = {a: {g: owner[g]["results"][a][g] for g in aggregators} for a in attacks}
    spread = {a: {g: owner[g]["spread"][a][g] for g in aggregators} for a in attacks}
    timings = {k: v for part in parts for k, v in part["seconds"].items()}
    return results, spread, timings


def main() -> None:
    args = _common.parse_args(__doc__.splitlines()[0], _extra)
    R = args.workers or (20 if args.quick else 100)
    iterations = args.iterations or (300 if args.quick else 600)
    attacks = _subset(args.attacks, [a for a in ATTACKS if a != "none"], "attacks")
    aggregators = _subset(args.aggregators, ROWS, "aggregators")
    try:
        args.overrides = {k.strip(): float(v) for k, v in (kv.split("=") for kv in args.override.split(",") if kv.strip())}
    except ValueError:
        raise SystemExit(f"--override must be name=number pairs, got {args.override!r}") from None
    try:
        args.fraction_list = sorted({float(f) for f in args.fractions.split(",")})
    except ValueError:
        raise SystemExit(f"--fractions must be comma-separated numbers, got {args.fractions!r}") from None
    if not {0.0, 0.3} <= set(args.fraction_list) or not all(0 <= f < 0.5 for f in args.fraction_list):
        raise SystemExit(f"--fractions must lie in [0, 0.5) and include 0 and 0.3, got {args.fractions!r}")
    if args.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    if args.jobs < 1:
        raise SystemExit("--jobs must be >= 1")
    if args.jobs > 1:  # before JAX starts: the parent must not hold the card its children share
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    counts = [round(f * R) for f in args.fraction_list]
    bound = round(0.3 * R)
    task = make_planted_task(jax.random.key(0), num_workers=R, word_scale=args.word_scale)
    lever = fragment_lever(task)
    seeds = list(range(args.seeds))

    if args.jobs > 1 and len(aggregators) > 1:
        results, spread, timings = _run_children(args, aggregators, attacks)
    else:
        results, spread, timings = _run_rows(args, aggregators, attacks, task, R, iterations, seeds, counts, bound)
    worst = {g: max(results[a][g]["0.0"] - results[a][g]["0.3"] for a in attacks) for g in aggregators}
    targets = {
        "within_2_points_at_0.3": {g: bool(worst[g] <= 0.02) for g in aggregators},
        "worst_drop_at_0.3": worst,
        "robust_rules_within_2_points": [g for g in aggregators if g not in ("mean", "sign_consensus") and worst[g] <= 0.02],
    }
    if "mean" in aggregators:  # the heterogeneity tax: a rule's B = 0 accuracy below the mean's
        clean = {g: float(np.mean([results[a][g]["0.0"] for a in attacks])) for g in aggregators}
        targets["b0_accuracy"] = clean
        targets["within_2_points_and_no_tax"] = [
            g for g in aggregators if g not in ("mean", "sign_consensus") and worst[g] <= 0.02 and clean[g] >= clean["mean"] - 0.02
        ]
        targets["mean_max_drop_at_0.3"] = worst["mean"]
        targets["mean_breaks"] = bool(worst["mean"] >= 0.10)
    if "sign_consensus" in aggregators:
        targets["sign_consensus_within_2_points"] = bool(worst["sign_consensus"] <= 0.02)
        targets["sign_consensus_within_5_points"] = bool(worst["sign_consensus"] <= 0.05)
    _common.emit(
        {
            "benchmark": "robustness",
            **_common.machine(),
            "inputs": {"workers": R, "active": R // 2, "max_staleness": 8, "iterations": iterations, "seeds": len(seeds),
                       "fractions": args.fraction_list, "malicious_counts": counts, "krum_bound": bound,
                       "delays": "lognormal:1.0", "dirichlet_alpha": 1.0,
                       "attack_strength": args.strength, "word_scale": args.word_scale, "override": args.overrides},
            "fragment_lever": lever,
            "complete": True,
            "results": results,
            "spread": spread,
            "targets": targets,
            "seconds": timings,
        },
        args,
    )
    if args.heatmap:  # after the JSON is out: a missing matplotlib loses nothing
        heatmap(args.heatmap, results, attacks, aggregators)


if __name__ == "__main__":
    main()
