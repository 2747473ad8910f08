"""Memory of one compiled AsynDBT iteration, from XLA's own memory analysis.

    python benchmarks/step_memory.py --workers R [R ...] [--json]

Prints argument, output, aliased (donated) and temporary sizes of ``server_step`` (state
donated, as the simulator runs it) for each R, to see what limits the number of workers
that fit on a device.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import numpy_step  # noqa: E402

from asyndbt_jax.engine import Data, server_step  # noqa: E402
from asyndbt_jax.oracle import oracle_feedback  # noqa: E402


def analyse(workers: int) -> dict:
    task, config, state = numpy_step.make_case(workers)
    feedback = functools.partial(oracle_feedback, task.oracle)
    analysis = (
        jax.jit(server_step, static_argnums=(0, 1), donate_argnums=2)
        .lower(config, feedback, state, jnp.ones(workers, bool), Data(task.train, task.validation))
        .compile()
        .memory_analysis()
    )
    return {
        "argument_gib": analysis.argument_size_in_bytes / 2**30,
        "output_gib": analysis.output_size_in_bytes / 2**30,
        "alias_gib": analysis.alias_size_in_bytes / 2**30,
        "temp_gib": analysis.temp_size_in_bytes / 2**30,
    }


def main() -> None:
    args = _common.parse_args(
        __doc__.splitlines()[1], lambda p: p.add_argument("--workers", type=int, nargs="+", default=[1000, 10_000])
    )
    results = {}
    for workers in args.workers:
        _common.log(args, f"workers={workers}")
        results[str(workers)] = analyse(workers)
    _common.emit({"benchmark": "step_memory", **_common.machine(), "results": results}, args)


if __name__ == "__main__":
    main()
