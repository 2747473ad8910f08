"""Real wall-clock of AsynDBT vs synchronous DBT on the real runtime (threads and Ray actors).

    python benchmarks/runtime.py [--quick] [--json] [--out FILE] [--drivers local,ray] [--seeds N]

Planted oracle, R = 8 workers, each update preceded by an injected sleep of
lognormal(σ = 1) × DELAY seconds (a stand-in for a slow LLM endpoint; DELAY = 0.1 s, quick:
0.03 s). AsynDBT waits for S = 2 messages with staleness bound τ = 8; synchronous DBT waits for
all 8. Both run the same number of server iterations (60, quick: 20); synchronous DBT
refreshes the polyhedron every 10 iterations, AsynDBT every 10·R/S (the same rate per unit of
worker work: a refresh is a barrier over every worker). The clock starts after iteration
WARMUP (the JIT compiles of the workers and the server are excluded; Ray actors start and
compile then). ``wall_ratio_async_vs_sync`` per driver = mean over seeds of async wall /
sync wall for the same iterations; ``wall_per_update_ratio`` divides each by its worker
updates (AsynDBT's iterations each advance fewer workers). Never asserts.
"""

from __future__ import annotations

import functools
import statistics
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from asyndbt_jax.engine import Data, method_config  # noqa: E402
from asyndbt_jax.harness import make_planted_task  # noqa: E402
from asyndbt_jax.oracle import oracle_feedback  # noqa: E402
from asyndbt_jax.runtime import run_runtime  # noqa: E402
from asyndbt_jax.simulator import parse_delay  # noqa: E402

R, S, TAU = 8, 2, 8
REFRESH = 10
WARMUP = 2


def extra(parser):
    parser.add_argument("--drivers", default="local,ray", help="comma-separated: local, ray")
    parser.add_argument("--seeds", type=int, default=None, help="run seeds (default 3, quick 1)")


def main():
    args = _common.parse_args(__doc__.splitlines()[0], extra)
    drivers = [d for d in args.drivers.split(",") if d]
    iterations = 20 if args.quick else 60
    delay_s = 0.03 if args.quick else 0.1
    seeds = args.seeds or (1 if args.quick else 3)
    task = make_planted_task(jax.random.key(0), num_workers=R, num_fragment_words=6, vocab_size=8,
                             num_candidates=6, num_test=200)
    M, N, _ = task.oracle.word_utility.shape
    U, V, _ = task.oracle.demo_utility.shape
    shapes = dict(num_fragment_words=M, vocab_size=N, num_classes=U, num_candidates=V, num_workers=R, max_staleness=TAU)
    configs = {
        "async": method_config("asyndbt", num_active=S, refresh_every=REFRESH * R // S, **shapes),
        "sync": method_config("sync", num_active=R, refresh_every=REFRESH, **shapes),
    }
    feedback = functools.partial(oracle_feedback, task.oracle)
    data = Data(task.train, task.validation)
    runs = {}
    if "ray" in drivers:
        import ray

        ray.init(include_dashboard=False, log_to_driver=False)
    for driver in drivers:
        for name, config in configs.items():
            for seed in range(seeds):
                _common.log(args, f"{driver} {name} seed {seed} ...")
                result = run_runtime(config, lambda: feedback, data, task.test, iterations=iterations, runtime=driver,
                                     seed=seed, delay=parse_delay("lognormal:1.0"), delay_seconds=delay_s,
                                     progress=not args.json)
                timed = result.history[WARMUP:]
                wall = timed[-1]["wall_time"] - result.history[WARMUP - 1]["wall_time"]
                updates = sum(len(h["arrived"]) for h in timed)
                runs.setdefault(driver, {}).setdefault(name, []).append({
                    "seed": seed, "wall_s": wall, "worker_updates": updates, "iterations_timed": len(timed),
                    "final_test_accuracy": result.final_test_accuracy,
                    "max_staleness": max(h["max_staleness"] for h in result.history),
                })
    summary = {}
    for driver, by_name in runs.items():
        pairs = list(zip(by_name["async"], by_name["sync"]))
        summary[driver] = {
            "wall_ratio_async_vs_sync": statistics.mean(a["wall_s"] / s["wall_s"] for a, s in pairs),
            "wall_per_update_ratio": statistics.mean((a["wall_s"] / a["worker_updates"]) / (s["wall_s"] / s["worker_updates"])
                                                     for a, s in pairs),
            "async_wall_s": [a["wall_s"] for a, _ in pairs],
            "sync_wall_s": [s["wall_s"] for _, s in pairs],
        }
    _common.emit({
        "benchmark": "runtime",
        **_common.machine(),
        "inputs": {"workers": R, "num_active": S, "max_staleness": TAU, "iterations": iterations, "warmup": WARMUP,
                   "delay": "lognormal:1.0", "delay_seconds": delay_s, "refresh_every_sync": REFRESH,
                   "refresh_every_async": REFRESH * R // S, "seeds": seeds, "quick": args.quick},
        "wall_ratio_async_vs_sync": {d: s["wall_ratio_async_vs_sync"] for d, s in summary.items()},
        "drivers": summary,
        "runs": runs,
    }, args)


if __name__ == "__main__":
    main()
