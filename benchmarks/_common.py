"""Shared helpers for benchmarks: device facts, timing of compiled JAX functions, JSON output,
the labelled data of a task."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import numpy as np

from asyndbt_jax.reporting import machine_info


def parse_args(description: str, extra=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    if extra:
        extra(parser)
    parser.add_argument("--quick", action="store_true", help="small sizes only (seconds, for CI and smoke tests)")
    parser.add_argument("--json", action="store_true", help="print only the JSON object (no progress lines)")
    parser.add_argument("--out", help="also write the JSON object to this file")
    return parser.parse_args()


def load_task(name: str, glue_dir):
    """The labelled data of ``name``: ``glue:NAME`` reads the GLUE files' train.tsv under
    ``glue_dir``; any other name is a registry task (prepared once from the package registries)."""
    from asyndbt_jax.tasks import load_glue, prepare

    if name.startswith("glue:"):
        if not glue_dir:
            raise SystemExit(f"{name} needs --glue-dir")
        return load_glue(glue_dir, name[5:], "train")
    return prepare(name, log=lambda m: print(m, file=sys.stderr))


def machine() -> dict:
    info = machine_info()
    try:
        import optax

        info["optax_version"] = optax.__version__
    except ImportError:
        pass
    return info


def block(tree):
    return jax.tree.map(lambda x: x.block_until_ready() if hasattr(x, "block_until_ready") else x, tree)


def time_call(fn, *args, min_repeats: int = 3, max_repeats: int = 20, budget_s: float = 2.0) -> dict:
    """Time ``fn(*args)`` (already jitted): first call (compile + run) then repeats.

    Returns raw seconds of every repeat, their median and minimum, and the first call.
    """
    t0 = time.perf_counter()
    block(fn(*args))
    first = time.perf_counter() - t0
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        block(fn(*args))
        times.append(time.perf_counter() - t0)
    return {
        "first_call_s": first,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "repeats_s": times,
    }


def available_memory_bytes() -> int:
    """Memory the default device can use: device bytes_limit on accelerators, physical RAM on CPU."""
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def emit(result: dict, args: argparse.Namespace) -> None:
    text = json.dumps(result, indent=2, default=_default)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


def _default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def log(args: argparse.Namespace, message: str) -> None:
    import sys

    if not args.json:
        print(message, file=sys.stderr, flush=True)
