"""Virtual time for AsynDBT vs synchronous DBT to reach the same validation accuracy.

    python benchmarks/async_vs_sync.py [--quick] [--json] [--out FILE]

Planted oracle, R = 100 workers (quick: 20), AsynDBT waits for S = 10 (quick: 4) messages with
staleness bound τ = 20 (quick: 8); synchronous DBT waits for all. Delays: lognormal σ = 1
and Pareto α = 1.5. Synchronous DBT runs a fixed number of iterations; the target is the
best validation accuracy it reached; AsynDBT then runs (up to a larger iteration budget)
until it reaches that target (refreshing the polyhedron at the same rate per unit of
worker work, see REFRESH). ``time_ratio`` = async time to target / sync time to target
(null when AsynDBT never reached it within its budget). Accuracies are test accuracies at
the stopping point. Never asserts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax

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


def first_time_at(history, target):
    for record in history:
        if record.get("validation_accuracy", -1.0) >= target:
            return record["virtual_time"], record.get("test_accuracy")
    return None, None


def main() -> None:
    args = _common.parse_args(__doc__.splitlines()[1])
    R, S, tau = (20, 4, 8) if args.quick else (100, 10, 20)
    sync_iterations = 40 if args.quick else 120
    async_iterations = sync_iterations * (R // S) * 2
    common = dict(num_samples=10, lr_fragment=0.05, lr_demos=0.05, eval_every=5, progress=not args.json)
    task = make_planted_task(jax.random.key(0), num_workers=R)
    results = {}
    for spec in ("lognormal:1.0", "pareto:1.5"):
        delay = parse_delay(spec)
        _common.log(args, f"{spec}: synchronous DBT")
        sync, _ = run_planted(
            "sync", task, delay, iterations=sync_iterations, num_active=R, max_staleness=tau, refresh_every=REFRESH, **common
        )
        target = max(h["validation_accuracy"] for h in sync.history if "validation_accuracy" in h)
        sync_time, sync_acc = first_time_at(sync.history, target)
        _common.log(args, f"{spec}: AsynDBT until validation accuracy {target:.3f}")
        asyn, _ = run_planted(
            "asyndbt", task, delay, iterations=async_iterations, num_active=S, max_staleness=tau,
            target_validation_accuracy=target, refresh_every=REFRESH * R // S, **common,
        )
        async_time, async_acc = first_time_at(asyn.history, target)
        results[spec] = {
            "target_validation_accuracy": target,
            "sync_time_to_target": sync_time,
            "async_time_to_target": async_time,
            "time_ratio": None if async_time is None else async_time / sync_time,
            "acc_sync": sync_acc,
            "acc_async": async_acc if async_acc is not None else asyn.final_test_accuracy,
            "sync_iterations": sync.iterations,
            "async_iterations": asyn.iterations,
            "sync_queries": sync.queries,
            "async_queries": asyn.queries,
        }
    _common.emit(
        {
            "benchmark": "async_vs_sync",
            **_common.machine(),
            "inputs": {"workers": R, "active": S, "staleness": tau, "sync_iterations": sync_iterations,
                       "async_iteration_budget": async_iterations, "quick": args.quick},
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
