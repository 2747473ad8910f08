"""Input validation shared by the public kernels.

Shapes are checked at trace time (they are static under ``jit``). Values can
only be checked when the array is concrete: under ``jit`` the kernels cannot
raise on a NaN, so callers that need value checks inside compiled code must
validate before tracing (the AsynDBT server does this for worker messages).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """True when ``x`` holds values now (not a tracer inside ``jit``/``vmap``). A concrete
    array may still be used inside a trace (a constant a jitted function closes over), where
    ``jnp`` operations on it give tracers: value checks read it with NumPy instead."""
    return not isinstance(x, jax.core.Tracer)


def as_float_array(name: str, x) -> jax.Array:
    """Convert to a floating JAX array, naming ``name`` in the error on failure."""
    try:
        arr = jnp.asarray(x)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be an array of numbers: {exc}") from exc
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        if arr.dtype == jnp.bool_ or jnp.issubdtype(arr.dtype, jnp.integer):
            arr = arr.astype(jnp.result_type(float))
        else:
            raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr


def require_ndim(name: str, x, min_ndim: int, what: str) -> None:
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s) ({what}); got shape {tuple(x.shape)}")


def require_nonempty_last(name: str, x, what: str) -> None:
    if x.shape[-1] == 0:
        raise ValueError(f"{name} has an empty last axis ({what}); it needs at least one entry")


def check_finite(name: str, x) -> None:
    """Raise ``ValueError`` if a concrete ``x`` holds NaN or Inf (no-op on tracers)."""
    if not is_concrete(x) or not np.size(x):
        return
    finite = np.isfinite(np.asarray(x))
    if not finite.all():
        raise ValueError(f"{name} contains {int(finite.size - np.count_nonzero(finite))} non-finite value(s) (NaN or Inf)")


def check_no_nan_or_posinf(name: str, x) -> None:
    """Like :func:`check_finite` but allows ``-inf`` (probability 0), never a row of only ``-inf``."""
    if not is_concrete(x) or not np.size(x):
        return
    x = np.asarray(x)
    bad = np.isnan(x) | (x == np.inf)
    if bad.any():
        raise ValueError(f"{name} contains {int(bad.sum())} NaN or +inf value(s); only -inf is allowed")
    if np.all(x == -np.inf, axis=-1).any():
        raise ValueError(f"{name} has a row that is entirely -inf; its projection is undefined")


def check_probabilities(name: str, probs, atol: float = 1e-4) -> None:
    """Raise ``ValueError`` unless a concrete ``probs`` has finite, non-negative rows summing to 1."""
    check_finite(name, probs)
    if not is_concrete(probs) or probs.size == 0:
        return
    p = np.asarray(probs, dtype=np.float64)
    if p.min() < -atol:
        raise ValueError(f"{name} has negative probabilities (min {p.min():.3g}); project onto the simplex first")
    sums = p.sum(axis=-1)
    worst = float(np.max(np.abs(sums - 1.0)))
    if worst > atol * max(1, p.shape[-1]):
        raise ValueError(f"{name} rows must sum to 1 (worst row sums to {1.0 + worst:.6g} or {1.0 - worst:.6g})")


def worker_count(updates) -> int:
    """The leading worker axis ``R`` shared by every leaf of ``updates``.

    Raises:
      ValueError: an empty pytree, a leaf without a leading axis, leaves with different
        leading sizes, or ``R = 0``.
    """
    leaves = jax.tree.leaves(updates)
    if not leaves:
        raise ValueError("updates is an empty pytree")
    counts = set()
    for leaf in leaves:
        if jnp.ndim(leaf) < 1:
            raise ValueError(f"every leaf of updates needs a leading worker axis; got a leaf of shape {jnp.shape(leaf)}")
        counts.add(jnp.shape(leaf)[0])
    if len(counts) != 1:
        raise ValueError(f"every leaf of updates must have the same leading worker axis; got sizes {sorted(counts)}")
    (R,) = counts
    if R < 1:
        raise ValueError("updates has no workers (leading axis of size 0)")
    return R


def per_worker(v: jax.Array, leaf: jax.Array) -> jax.Array:
    """A per-worker vector ``v [R]`` reshaped to broadcast against ``leaf [R, ...]``."""
    return v.reshape(v.shape + (1,) * (leaf.ndim - 1))
