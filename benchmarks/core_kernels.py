"""Core kernels at 10 … 100k workers: projection, sampling, estimator.

    python benchmarks/core_kernels.py [--quick] [--json] [--out FILE] [--workers R ...]

Shapes follow the paper: M=75 fragment words over N=100 words, U=2 classes with V=50
candidates, I=20 samples per worker. Compares the two exact projections (Michelot,
the default, and sort-based) with BDPL's bisection, inverse-CDF sampling with ``jax.random.categorical`` (Gumbel-argmax), and times
the policy-gradient estimator. Prints one JSON object; never asserts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import asyndbt_jax as adbt  # noqa: E402

M, N, U, V, I = 75, 100, 2, 50, 20


def main() -> None:
    args = _common.parse_args(
        __doc__.splitlines()[1],
        lambda p: p.add_argument("--workers", type=int, nargs="+", help="worker counts (default 10 1000 10000 100000)"),
    )
    workers_list = args.workers or ([10, 1000] if args.quick else [10, 1000, 10_000, 100_000])
    memory = _common.available_memory_bytes()

    project = jax.jit(adbt.project_simplex)
    project_sort = jax.jit(lambda x: adbt.project_simplex(x, method="sort"))
    bisect = jax.jit(adbt.project_simplex_bisection)
    inverse_cdf = jax.jit(adbt.sample_categorical, static_argnums=2)

    @jax.jit
    def gumbel(key, probs):
        # jax.random.categorical draws Gumbel noise for every class of every draw.
        logits = jnp.log(probs)[..., None, :, :]
        shape = probs.shape[:-2] + (I,) + probs.shape[-2:-1]
        return jax.random.categorical(key, logits, axis=-1, shape=shape)

    estimator = jax.jit(adbt.policy_gradient)
    full = jax.jit(
        lambda key, sel, losses: adbt.selection_gradient(sel, adbt.sample_configurations(key, sel, I), losses)
    )

    results = {}
    for workers in workers_list:
        _common.log(args, f"workers={workers}")
        key = jax.random.key(workers)
        raw = jax.random.normal(key, (workers, M, N))
        probs = adbt.project_simplex(raw)
        sel = adbt.SelectionVariables(probs, jax.random.dirichlet(key, jnp.ones(V), (workers, U)))
        samples = inverse_cdf(key, probs, I)
        losses = jax.random.uniform(key, (workers, I))
        row = {
            "projection_michelot": _common.time_call(project, raw),
            "projection_sort": _common.time_call(project_sort, raw),
            "projection_bisection": _common.time_call(bisect, raw),
            "sampling_inverse_cdf": _common.time_call(inverse_cdf, key, probs, I),
            "estimator": _common.time_call(estimator, probs, samples, losses),
            "sample_and_estimate_both_levels": _common.time_call(full, key, sel, losses),
        }
        gumbel_bytes = workers * I * M * N * 4
        # Gumbel-argmax materialises noise, bits and logits of this size several times over
        # (the first CPU attempt at 10k workers was killed for memory with a 3x guard).
        if 4 * gumbel_bytes < 0.6 * memory:
            row["sampling_categorical"] = _common.time_call(gumbel, key, probs)
        else:
            row["sampling_categorical"] = {
                "skipped": f"needs ~{4 * gumbel_bytes / 2**30:.0f} GiB for Gumbel noise, device has {memory / 2**30:.0f} GiB"
            }
        for name, timing in row.items():
            if "median_s" in timing:
                timing["per_worker_us"] = timing["median_s"] / workers * 1e6
        michelot = row["projection_michelot"]["median_s"]
        ratios = {
            "sort_over_michelot": row["projection_sort"]["median_s"] / michelot,
            "bisection_over_michelot": row["projection_bisection"]["median_s"] / michelot,
        }
        if "median_s" in row["sampling_categorical"]:
            ratios["categorical_over_inverse_cdf"] = (
                row["sampling_categorical"]["median_s"] / row["sampling_inverse_cdf"]["median_s"]
            )
        row["ratios"] = ratios
        results[str(workers)] = row
        _common.log(args, f"  {ratios}")
        del raw, probs, sel, samples, losses

    out = {
        "benchmark": "core_kernels",
        **_common.machine(),
        "inputs": {"M": M, "N": N, "U": U, "V": V, "I": I, "workers": workers_list, "quick": args.quick},
        "results": results,
        "ratio_categorical_over_inverse_cdf": {
            w: r["ratios"].get("categorical_over_inverse_cdf") for w, r in results.items()
        },
        "ratio_sort_over_michelot": {w: r["ratios"]["sort_over_michelot"] for w, r in results.items()},
        "ratio_bisection_over_michelot": {w: r["ratios"]["bisection_over_michelot"] for w, r in results.items()},
        "per_worker_us_sample_and_estimate": {
            w: r["sample_and_estimate_both_levels"]["per_worker_us"] for w, r in results.items()
        },
    }
    _common.emit(out, args)


if __name__ == "__main__":
    main()
