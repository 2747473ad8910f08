"""Every method on the default planted task: test accuracy against the planted optima.

    python benchmarks/methods_planted.py [--quick] [--json] [--out FILE] [--iterations N]

R = 8 workers, lognormal(1) delays, AsynDBT with S = 4, τ = 5; I = 10, Adam lr 0.01 for the
fragment p and 0.05 for the demonstrations q. The task has the paper's shapes (M = 75,
N = 100, U = 2, V = 50) and non-IID workers (Dirichlet α = 1; ``--alpha`` changes it).
Reports each method's final test/validation accuracy, virtual time and queries, plus the
exact optima of the task when both levels, only the demonstrations or only the fragment
are tuned; ``asyndbt-l2sq`` / ``sync-l2sq`` and ``asyndbt-l1`` / ``sync-l1`` rerun the bilevel
methods with the argument-space gaps (squared ℓ2, ℓ1) instead of the default value-function
gap. Never asserts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from asyndbt_jax.engine import METHODS  # noqa: E402
from asyndbt_jax.harness import make_planted_task, run_planted  # noqa: E402
from asyndbt_jax.oracle import accuracy, restricted_optimum  # noqa: E402
from asyndbt_jax.simulator import parse_delay  # noqa: E402


def main() -> None:
    args = _common.parse_args(
        __doc__.splitlines()[1],
        lambda p: (p.add_argument("--iterations", type=int, default=1000), p.add_argument("--alpha", type=float, default=1.0)),
    )
    iterations = 40 if args.quick else args.iterations
    task = make_planted_task(jax.random.key(0), num_workers=8, dirichlet_alpha=args.alpha)
    uniform = jnp.full((task.oracle.demo_utility.shape[-1],), 1.0 / task.oracle.demo_utility.shape[-1])
    optima = {
        name: float(accuracy(task.oracle, restricted_optimum(task.oracle, uniform, use_fragment=f, use_demos=d), task.test))
        for name, f, d in [("both", True, True), ("demos_only", False, True), ("fragment_only", True, False), ("neither", False, False)]
    }
    results = {}
    runs = [(m, m, {}) for m in METHODS] + [
        (f"{m}-{gap}", m, {"gap_norm": gap}) for gap in ("l2sq", "l1") for m in ("asyndbt", "sync")
    ]
    for name, method, extra in runs:
        _common.log(args, name)
        result, _ = run_planted(
            method, task, parse_delay("lognormal:1.0"), iterations=iterations, num_active=4, max_staleness=5,
            progress=False, num_samples=10, lr_fragment=0.01, lr_demos=0.05, eval_every=50, **extra,
        )
        jax.clear_caches()  # one compiled step per row
        results[name] = {
            "final_test_accuracy": result.final_test_accuracy,
            "final_validation_accuracy": result.final_validation_accuracy,
            "virtual_time": result.virtual_time,
            "queries": result.queries,
        }
    _common.emit(
        {"benchmark": "methods_planted", **_common.machine(), "inputs": {"workers": 8, "iterations": iterations, "dirichlet_alpha": args.alpha},
         "optimum_accuracy": optima, "results": results},
        args,
    )


if __name__ == "__main__":
    main()
