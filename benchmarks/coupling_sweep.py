"""Sweep of the bilevel coupling settings on the planted oracle (synchronous rounds).

    python benchmarks/coupling_sweep.py [--quick] [--json] [--out FILE]

R = 8 workers, all reporting every iteration (so the maths, not the clock, is compared),
lr 0.05, I = 10, 300 iterations (quick: 60). Prints test accuracy of the decoded prompts
and the state of the cuts for each variant. Never asserts.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from asyndbt_jax import cuts as cutlib  # noqa: E402
from asyndbt_jax.engine import Data, evaluate, init_state, method_config, server_step  # noqa: E402
from asyndbt_jax.oracle import make_planted_task, oracle_feedback  # noqa: E402

VARIANTS = {
    "upper level only (bilevel=False)": {"bilevel": False},
    "l1 gap (spec default)": {},
    "l1 gap, c1=1": {"dual_reg": 1.0},
    "squared-l2 gap, default epsilon": {"gap_norm": "l2sq"},
    "squared-l2 gap, epsilon=0.01": {"gap_norm": "l2sq", "epsilon": 0.01},
}


def main() -> None:
    args = _common.parse_args(__doc__.splitlines()[1])
    workers, iterations = 8, 60 if args.quick else 300
    task = make_planted_task(jax.random.key(0), num_workers=workers)
    feedback = functools.partial(oracle_feedback, task.oracle)
    data = Data(task.train, task.validation)
    step = jax.jit(server_step, static_argnums=(0, 1))
    evaluate_jit = jax.jit(evaluate, static_argnums=(0, 1))
    base = dict(
        num_workers=workers, num_fragment_words=75, vocab_size=100, num_classes=2, num_candidates=50,
        num_active=workers, max_staleness=1, lr_fragment=0.05, lr_demos=0.05, num_samples=10,
    )
    results = {}
    for name, overrides in VARIANTS.items():
        _common.log(args, name)
        config = method_config("sync", **{**base, **overrides})
        state = init_state(config, jax.random.key(1))
        started = time.perf_counter()
        for _ in range(iterations):
            state, metrics = step(config, feedback, state, jnp.ones(workers, bool), data)
        force = cutlib.cut_force(state.server.cuts).fragment
        p = state.workers.selection.fragment_probs
        results[name] = {
            "test_accuracy": float(jnp.mean(evaluate_jit(config, feedback, state, task.test))),
            "active_cuts": int(metrics.active_cuts),
            "max_cut_dual": float(state.server.cuts.duals.max()),
            "mean_l1_cut_force_per_row": float(jnp.abs(force).sum(-1).mean()),
            "mean_max_prob_p": float(p.max(-1).mean()),
            "mean_max_prob_z": float(state.server.consensus.max(-1).mean()),
            "seconds": time.perf_counter() - started,
        }
    _common.emit(
        {
            "benchmark": "coupling_sweep",
            **_common.machine(),
            "inputs": {"workers": workers, "iterations": iterations, "lr": 0.05, "num_samples": 10},
            "optimum_accuracy": task.optimum_accuracy,
            "results": results,
        },
        args,
    )


if __name__ == "__main__":
    main()
