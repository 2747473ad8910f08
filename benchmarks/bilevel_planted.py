"""The bilevel ablation on the planted task: does the lower level earn its keep?

    python benchmarks/bilevel_planted.py [--quick] [--json] [--out FILE] [--seeds 0,1,2,3,4] [--hidden-seed N]

The default planted task (paper shapes M = 75, N = 100, U = 2, V = 50; R = 8 non-IID
workers, Dirichlet α = 1; lognormal(1) delays; AsynDBT with S = 4, τ = 5; I = 10, Adam lr
0.01 for the fragment and 0.05 for the demonstrations; 200 server iterations), one task and
one run per seed. Rows:

* ``cendbt``, ``sync``, ``asyndbt``: the bilevel methods with the value-function gap (the
  default: cuts with coefficients on the demonstrations, the hypergradient);
* ``*-argument``: the same with the argument-space gap ``Σ ||x − φ||²`` per fragment row (no
  coefficient on the demonstrations);
* ``*-no-hypergradient``: the value-function gap with the cuts' coefficient on ``q`` zeroed;
* ``*-no-lower``: the same methods with the lower level switched off (``bilevel=False``: no
  refresh, no cuts; the upper level alone on the validation queries);
* ``joint``: the single-level ablation (one policy gradient over both variables on the
  training and validation queries together, AsynDBT's workers and server);
* ``demos-only`` and ``fragment-only`` (BDPL): one level tuned.

Per row: test accuracy per seed, mean and standard deviation, and the cuts: added per run
(``added_cuts``), the mean number active per iteration and the share of refreshes that
added one. ``--hidden-seed`` reruns the bilevel rows and ``joint`` on a task seed that no
default was chosen on. Never asserts.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from asyndbt_jax import engine  # noqa: E402
from asyndbt_jax.harness import make_planted_task, run_planted  # noqa: E402
from asyndbt_jax.simulator import parse_delay  # noqa: E402

BILEVEL = ("cendbt", "sync", "asyndbt")
ROWS = (
    [(m, m, {}) for m in BILEVEL]
    + [(f"{m}-argument", m, {"gap_norm": "l2sq"}) for m in BILEVEL]
    + [(f"{m}-no-hypergradient", m, {"_no_hypergradient": True}) for m in ("cendbt", "asyndbt")]
    + [(f"{m}-no-lower", m, {"bilevel": False}) for m in BILEVEL]
    + [("joint", "joint", {}), ("demos-only", "demos-only", {}), ("fragment-only", "bdpl", {})]
)
HIDDEN_ROWS = ("cendbt", "sync", "asyndbt", "joint", "cendbt-no-lower", "asyndbt-no-lower")


def _without_hypergradient():
    """Zero the value-function cut's coefficient on the demonstrations (an ablation only)."""
    original = engine.value_cut_coefficients

    def patched(config, start, at_point, at_phi):
        (a, b, e), gap, term = original(config, start, at_point, at_phi)
        return (a, b, jnp.zeros_like(e)), gap, jnp.zeros_like(term)

    return original, patched


def run_row(method: str, overrides: dict, seed: int, iterations: int) -> dict:
    overrides = dict(overrides)
    ablate = overrides.pop("_no_hypergradient", False)
    original, patched = _without_hypergradient()
    if ablate:
        engine.value_cut_coefficients = patched
    try:
        task = make_planted_task(jax.random.key(seed), num_workers=8)
        result, config = run_planted(
            method, task, parse_delay("lognormal:1.0"), iterations=iterations, num_active=4, max_staleness=5,
            progress=False, num_samples=10, lr_fragment=0.01, lr_demos=0.05, eval_every=50, seed=seed, **overrides,
        )
    finally:
        engine.value_cut_coefficients = original
        jax.clear_caches()  # one compiled step per row and seed: without this, ~80 of them exhaust the JIT's code memory
    refreshes = [h for h in result.history if h["refreshed"]]
    return {
        "test_accuracy": result.final_test_accuracy,
        "optimum_accuracy": task.optimum_accuracy,
        "added_cuts": sum(h["added_cuts"] for h in result.history),
        "mean_active_cuts": sum(h["active_cuts"] for h in result.history) / len(result.history),
        "refreshes": len(refreshes),
        "share_of_refreshes_adding_a_cut": (sum(h["added_cuts"] > 0 for h in refreshes) / len(refreshes)) if refreshes else None,
        "queries": result.queries,
        "gap": config.gap_norm if config.bilevel and config.use_fragment else None,
        "epsilon": config.eps() if config.bilevel and config.use_fragment else None,
    }


def summarise(runs: list[dict]) -> dict:
    acc = [r["test_accuracy"] for r in runs]
    return {
        "test_accuracy_mean": statistics.mean(acc),
        "test_accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
        "test_accuracy": acc,
        "share_of_optimum_mean": statistics.mean(r["test_accuracy"] / r["optimum_accuracy"] for r in runs),
        "added_cuts_per_run": [r["added_cuts"] for r in runs],
        "mean_active_cuts": statistics.mean(r["mean_active_cuts"] for r in runs),
        "runs": runs,
    }


def main() -> None:
    args = _common.parse_args(
        __doc__.splitlines()[1],
        lambda p: (
            p.add_argument("--seeds", default="0,1,2,3,4", help="task and run seeds (comma-separated)"),
            p.add_argument("--hidden-seed", type=int, default=20261207, help="a task seed no default was chosen on"),
            p.add_argument("--iterations", type=int, default=200),
        ),
    )
    seeds = [0, 1] if args.quick else [int(s) for s in args.seeds.split(",")]
    iterations = 20 if args.quick else args.iterations
    rows = ROWS[:3] + [r for r in ROWS if r[0] == "joint"] if args.quick else ROWS
    results = {}
    for name, method, overrides in rows:
        runs = []
        for seed in seeds:
            runs.append(run_row(method, overrides, seed, iterations))
            _common.log(args, f"{name} seed {seed}: {runs[-1]['test_accuracy']:.4f} ({runs[-1]['added_cuts']} cuts added)")
        results[name] = summarise(runs)
    hidden = {}
    if not args.quick:
        for name, method, overrides in (r for r in ROWS if r[0] in HIDDEN_ROWS):
            hidden[name] = run_row(method, overrides, args.hidden_seed, iterations)
            _common.log(args, f"hidden seed {name}: {hidden[name]['test_accuracy']:.4f}")
    _common.emit(
        {
            "benchmark": "bilevel_planted",
            **_common.machine(),
            "inputs": {"workers": 8, "num_active": 4, "max_staleness": 5, "iterations": iterations, "seeds": seeds,
                       "hidden_seed": None if args.quick else args.hidden_seed, "num_samples": 10,
                       "lr_fragment": 0.01, "lr_demos": 0.05, "delay": "lognormal:1.0", "dirichlet_alpha": 1.0},
            "results": results,
            "hidden_seed_results": hidden,
        },
        args,
    )


if __name__ == "__main__":
    main()
