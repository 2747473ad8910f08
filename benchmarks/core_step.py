"""One full AsynDBT iteration: jitted JAX over the worker axis vs a NumPy per-worker loop.

    python benchmarks/core_step.py [--quick] [--json] [--out FILE] [--workers R ...] [--numpy-max R]

One iteration = accept messages, server z/λ update and cut drop, then every worker samples
I = 20 configurations, scores them with the planted oracle on its 20 validation queries,
estimates both gradients, clips, adds the cut force and takes a projected Adam step
(all R workers arrive; no polyhedron refresh in the timed iterations; the state is donated
and threaded from one iteration to the next, as the simulator runs it). Shapes: M=75, N=100,
U=2, V=50, cut capacity 4. The NumPy side (benchmarks/numpy_step.py) loops over workers
in Python with each worker's maths vectorised in NumPy; tests/test_core_step.py checks
that both give the same result. ``ratio_by_workers`` maps R to numpy_seconds / jax_seconds.
``recompiles_on_hyperparameter_change``: compilations of the step caused by changing the
learning rates, ψ, μ and ε between two steps at the smallest R (hyper-parameters are traced
values: ``engine.jit_config``; 0 is the target).

``gather_speedup``: with S of R workers arriving (R = 10,000, S = 100 by default; ``--quick``:
R = 2,000, S = 20, the same 1 %), the seconds of the dense step (``num_active = R``: all R
workers computed, the S arrived kept) over those of the gathered step (``num_active = S``:
the arrived workers gathered, the cost in proportion to S), timed in alternating blocks in
one run on the same arrivals (:func:`gather_speedup`); both end in the same state
(tests/test_core_step.py). Target ≥ 10.
"""

from __future__ import annotations

import copy
import functools
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import numpy_step  # noqa: E402

from asyndbt_jax.engine import Data, jit_config, server_step  # noqa: E402
from asyndbt_jax.oracle import oracle_feedback  # noqa: E402


def time_threaded(step, config, feedback, state, arrived, data, repeats: int = 7) -> dict:
    """Time consecutive iterations, threading the (donated) state: the first call compiles.

    The case starts at iteration 1 with refresh every 10, so none of the 1 + ``repeats``
    iterations refreshes the polyhedron."""
    t0 = time.perf_counter()
    state, _ = _common.block(step(config, feedback, state, arrived, data))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, _ = _common.block(step(config, feedback, state, arrived, data))
        times.append(time.perf_counter() - t0)
    return {"first_call_s": first, "median_s": float(np.median(times)), "min_s": min(times), "repeats_s": times}


def recompiles_on_hyperparameter_change(R: int) -> int:
    """Compilations a compiled step adds when the step after the first changes the learning
    rates, ψ, μ and ε."""
    step = jit_config(server_step, static_argnums=(0, 1), donate_argnums=(2,))
    task, config, state = numpy_step.make_case(R)
    feedback = functools.partial(oracle_feedback, task.oracle)
    data, arrived = Data(task.train, task.validation), jnp.ones(R, bool)
    state, _ = _common.block(step(config, feedback, state, arrived, data))
    before = step.compiled._cache_size()
    changed = config._replace(lr_fragment=config.lr_fragment * 3, lr_demos=config.lr_demos / 2, psi=config.psi * 10,
                              mu=config.penalty() / 2 + 0.5, epsilon=0.123)
    _common.block(step(changed, feedback, state, arrived, data))
    return step.compiled._cache_size() - before


def gather_speedup(R: int, S: int, repeats: int = 5, block: int = 2) -> dict:
    """Dense-masked seconds over gathered seconds for one iteration with ``S`` of ``R``
    workers arriving (the same arrivals every iteration; no refresh in the timed ones).

    The two variants run in alternating blocks, so both see the same machine load: each
    block is one step timed apart, then ``block`` timed ones. The step apart is the first
    after a switch, which pays for the other variant's memory churn (``after_switch_s``,
    ``gather_speedup_after_switch``); a user runs one variant step after step, as the
    ``block`` steps do."""
    step = jit_config(server_step, static_argnums=(0, 1), donate_argnums=(2,))
    task, config, state = numpy_step.make_case(R)
    feedback = functools.partial(oracle_feedback, task.oracle)
    data = Data(task.train, task.validation)
    arrived = jnp.asarray(np.isin(np.arange(R), np.random.default_rng(0).choice(R, S, replace=False)))
    configs = {"dense": config._replace(num_active=R), "gathered": config._replace(num_active=S)}
    states = {"dense": state, "gathered": jax.tree.map(jnp.copy, state)}
    del state
    first, times, after_switch = {}, {name: [] for name in configs}, {name: [] for name in configs}
    for name in configs:  # the first call compiles
        t0 = time.perf_counter()
        states[name], _ = _common.block(step(configs[name], feedback, states[name], arrived, data))
        first[name] = time.perf_counter() - t0
    for _ in range(repeats):
        for name in configs:
            for i in range(block + 1):
                t0 = time.perf_counter()
                states[name], _ = _common.block(step(configs[name], feedback, states[name], arrived, data))
                (times[name] if i else after_switch[name]).append(time.perf_counter() - t0)
    median = {name: float(np.median(t)) for name, t in times.items()}
    switched = {name: float(np.median(t)) for name, t in after_switch.items()}
    return {"workers": R, "arrived": S, "first_call_s": first, "median_s": median, "repeats_s": times,
            "after_switch_s": switched, "gather_speedup": median["dense"] / median["gathered"],
            "gather_speedup_after_switch": switched["dense"] / switched["gathered"]}


def main() -> None:
    def extra(p):
        p.add_argument("--workers", type=int, nargs="+", help="worker counts (default 10 100 1000 10000 100000)")
        p.add_argument("--numpy-max", type=int, default=1000, help="largest R timed on the NumPy side")
        p.add_argument("--gather", type=int, nargs=2, metavar=("R", "S"),
                       help="workers and arrivals of the gathered-step timing (default 10000 100; --quick 2000 20)")

    args = _common.parse_args(__doc__.splitlines()[1], extra)
    workers_list = args.workers or ([10, 100] if args.quick else [10, 100, 1000, 10_000, 100_000])
    step = jit_config(server_step, static_argnums=(0, 1), donate_argnums=(2,))  # as the simulator runs it
    results = {}
    for R in workers_list:
        _common.log(args, f"workers={R}")
        task, config, state = numpy_step.make_case(R)
        feedback = functools.partial(oracle_feedback, task.oracle)
        data = Data(task.train, task.validation)
        arrived = jnp.ones(R, bool)
        row = {}
        if R <= args.numpy_max:  # before the JAX side, whose calls donate (consume) the state
            ref = numpy_step.from_engine(state)
            times = []
            for _ in range(2 if R >= 1000 else 3):
                st = copy.deepcopy(ref)
                t0 = time.perf_counter()
                numpy_step.numpy_server_step(config, task.oracle, st, np.ones(R, bool), task.validation, state.key)
                times.append(time.perf_counter() - t0)
            row["numpy"] = {"median_s": float(np.median(times)), "repeats_s": times, "per_worker_us": float(np.median(times)) / R * 1e6}
        row["jax"] = time_threaded(step, config, feedback, state, arrived, data)
        row["jax"]["per_worker_us"] = row["jax"]["median_s"] / R * 1e6
        if "numpy" in row:
            row["ratio_numpy_over_jax"] = row["numpy"]["median_s"] / row["jax"]["median_s"]
            _common.log(args, f"  ratio {row['ratio_numpy_over_jax']:.1f}")
        results[str(R)] = row
        del task, state, data
    R_gather, S_gather = args.gather or ((2000, 20) if args.quick else (10_000, 100))
    _common.log(args, f"gathered step: {S_gather} of {R_gather} workers arrive")
    gathered = gather_speedup(R_gather, S_gather)
    _common.log(args, f"  gather speed-up {gathered['gather_speedup']:.1f}")
    recompiles = recompiles_on_hyperparameter_change(min(workers_list))
    _common.log(args, f"recompiles on a hyper-parameter change: {recompiles}")
    per_worker = {w: r["jax"]["per_worker_us"] for w, r in results.items()}
    big = [w for w in per_worker if int(w) >= 1000]
    out = {
        "benchmark": "core_step",
        **_common.machine(),
        "inputs": {"M": 75, "N": 100, "U": 2, "V": 50, "I": 20, "validation_batch": 20, "cut_capacity": 4, "workers": workers_list},
        "results": results,
        "ratio_by_workers": {w: r["ratio_numpy_over_jax"] for w, r in results.items() if "ratio_numpy_over_jax" in r},
        "jax_per_worker_us": per_worker,
        "recompiles_on_hyperparameter_change": recompiles,
        "gather": gathered,
        "gather_speedup": gathered["gather_speedup"],
        "per_worker_max_over_min_from_1k": (max(per_worker[w] for w in big) / min(per_worker[w] for w in big)) if len(big) > 1 else None,
    }
    _common.emit(out, args)


if __name__ == "__main__":
    main()
