"""Virtual time for AsynDBT vs synchronous DBT to reach the same validation accuracy.

    python benchmarks/async_vs_sync.py [--quick] [--json] [--out FILE] [--gap l2sq|l1] [--seeds N] [--staleness TAU] [--delays A,B]

Planted oracle, R = 100 workers (quick: 20), AsynDBT waits for S = 10 (quick: 4) messages with
staleness bound τ = 20 (quick: 8); synchronous DBT waits for all. Delays: lognormal σ = 1
and Pareto α = 1.5. Synchronous DBT runs a fixed number of iterations; AsynDBT gets twice
the worker work as a budget. Both are evaluated after the same amount of worker work (every
5 synchronous iterations, every 5·R/S asynchronous ones) and both curves are smoothed with
the same moving average over SMOOTH evaluations (one evaluation is the mean accuracy of 100
workers on their own 20 validation queries: a single point is noisy, and a target set at
the noisiest point of one run measures luck). The target is the best smoothed validation
accuracy synchronous DBT reached; each method's time to target is the first time its
smoothed curve reaches it. Repeated over ``--seeds`` run seeds (delays and sampling; one
task); ``time_ratio`` = mean over seeds of async time / sync time (a seed where AsynDBT
never reaches the target counts as its whole budget and is flagged). Accuracies are test
accuracies at the time to target, averaged over seeds. Never asserts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from asyndbt_jax.harness import make_planted_task, run_planted  # noqa: E402
from asyndbt_jax.simulator import parse_delay  # noqa: E402


# Polyhedron refresh every REFRESH synchronous iterations; AsynDBT refreshes every
# REFRESH·R/S iterations, i.e. at the same rate per unit of worker work (each of its
# iterations advances only about S of the R workers). A refresh is synchronous over all
# online workers, so refreshing at the per-iteration rate would make AsynDBT pay R/S times
# more straggler-bound refreshes than synchronous DBT.
REFRESH = 10
EVAL = 5  # synchronous iterations between evaluations
SMOOTH = 4  # evaluations in the moving average


def smoothed(history):
    """``(times, smoothed validation, test)`` at every evaluation (moving average over SMOOTH)."""
    ev = [h for h in history if "validation_accuracy" in h]
    val = np.array([h["validation_accuracy"] for h in ev])
    kernel = np.ones(SMOOTH)
    counts = np.convolve(np.ones_like(val), kernel)[: len(val)]
    smooth = np.convolve(val, kernel)[: len(val)] / counts
    return np.array([h["virtual_time"] for h in ev]), smooth, np.array([h["test_accuracy"] for h in ev])


def first_time_at(curve, target):
    times, smooth, test = curve
    hit = np.flatnonzero(smooth >= target - 1e-9)
    if hit.size == 0:
        return None, None
    return float(times[hit[0]]), float(test[hit[0]])


def main() -> None:
    def extra(p):
        p.add_argument("--gap", choices=["l2sq", "l1"], default="l2sq", help="cut gap norm")
        p.add_argument("--seeds", type=int, default=3, help="run seeds per delay model")
        p.add_argument("--staleness", type=int, help="AsynDBT staleness bound τ (default 20; quick 8)")
        p.add_argument("--delays", default="lognormal:1.0,pareto:1.5", help="comma-separated delay models")

    args = _common.parse_args(__doc__.splitlines()[1], extra)
    R, S, tau = (20, 4, 8) if args.quick else (100, 10, 20)
    tau = args.staleness or tau
    seeds = 1 if args.quick else args.seeds
    sync_iterations = 40 if args.quick else 120
    async_iterations = sync_iterations * (R // S) * 2
    common = dict(num_samples=10, lr_fragment=0.05, lr_demos=0.05, progress=not args.json, gap_norm=args.gap)
    task = make_planted_task(jax.random.key(0), num_workers=R)
    results = {}
    for spec in args.delays.split(","):
        delay = parse_delay(spec)
        per_seed = []
        for seed in range(seeds):
            _common.log(args, f"{spec} seed {seed}: synchronous DBT")
            sync, _ = run_planted(
                "sync", task, delay, iterations=sync_iterations, num_active=R, max_staleness=tau,
                refresh_every=REFRESH, eval_every=EVAL, seed=seed, **common,
            )
            sync_curve = smoothed(sync.history)
            target = float(sync_curve[1].max())
            sync_time, sync_acc = first_time_at(sync_curve, target)
            _common.log(args, f"{spec} seed {seed}: AsynDBT (target smoothed validation accuracy {target:.3f})")
            asyn, _ = run_planted(
                "asyndbt", task, delay, iterations=async_iterations, num_active=S, max_staleness=tau,
                refresh_every=REFRESH * R // S, eval_every=EVAL * R // S, seed=seed, **common,
            )
            async_time, async_acc = first_time_at(smoothed(asyn.history), target)
            reached = async_time is not None
            per_seed.append({
                "seed": seed,
                "target_validation_accuracy": target,
                "sync_time_to_target": sync_time,
                "async_time_to_target": async_time if reached else asyn.virtual_time,
                "async_reached_target": reached,
                "time_ratio": (async_time if reached else asyn.virtual_time) / sync_time,
                "acc_sync": sync_acc,
                "acc_async": async_acc if reached else asyn.final_test_accuracy,
                "sync_virtual_time_total": sync.virtual_time,
                "async_virtual_time_total": asyn.virtual_time,
            })
        results[spec] = {
            "time_ratio": float(np.mean([r["time_ratio"] for r in per_seed])),
            "time_ratio_by_seed": [r["time_ratio"] for r in per_seed],
            "acc_sync": float(np.mean([r["acc_sync"] for r in per_seed])),
            "acc_async": float(np.mean([r["acc_async"] for r in per_seed])),
            "all_reached": all(r["async_reached_target"] for r in per_seed),
            "runs": per_seed,
        }
    _common.emit(
        {
            "benchmark": "async_vs_sync",
            **_common.machine(),
            "inputs": {"workers": R, "active": S, "staleness": tau, "sync_iterations": sync_iterations,
                       "async_iteration_budget": async_iterations, "seeds": seeds, "smooth": SMOOTH,
                       "quick": args.quick, "gap_norm": args.gap},
            "optimum_accuracy": task.optimum_accuracy,
            "results": results,
            "time_ratio": {k: v["time_ratio"] for k, v in results.items()},
            "acc_async": {k: v["acc_async"] for k, v in results.items()},
            "acc_sync": {k: v["acc_sync"] for k, v in results.items()},
        },
        args,
    )


if __name__ == "__main__":
    main()
