"""Euclidean projection onto the probability simplex, row by row.

Every probability row of AsynDBT (fragment word distributions ``p_i``, demonstration
distributions ``q_u``, the consensus ``z_i``) is kept on the simplex by projecting after
each gradient step (the ``proj_Δ`` of every update of BDPL and AsynDBT).

``project_simplex`` is exact: Michelot's finite algorithm by default (no sort; fastest on
CPU), or the sort-based algorithm (Held et al. 1974; Duchi et al. 2008) with
``method="sort"``. ``project_simplex_bisection`` is the approximate 21-step
bisection BDPL ships, kept for parity experiments only.

Why not ``optax.projections.projection_simplex``: it projects a whole pytree as one
vector (we need every row separately, over arbitrary leading axes) and it does not
shift by the row maximum, so its cumulative sum overflows in float32 and it returns
``[1, 1]`` for the row ``[3e38, 3e38]``. ``tests/test_simplex.py`` uses it as a cross-check on ordinary rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._checks import (
    as_float_array,
    check_finite,
    check_no_nan_or_posinf,
    require_ndim,
    require_nonempty_last,
)

# Entries more than 1 below the row maximum are always 0 in the projection (the
# threshold theta is >= max - 1). Flooring the shifted row at -2 therefore leaves the
# result unchanged and keeps the cumulative sums finite for rows holding -inf or
# values spanning 1e38.
_FLOOR = -2.0


METHODS = ("michelot", "sort")


def project_simplex(x, *, method: str = "michelot") -> jax.Array:
    """Project every row (last axis) of ``x`` onto the probability simplex.

    Computes ``argmin_p ||p - x||_2`` subject to ``p >= 0, sum(p) = 1`` exactly, for each
    row. Works under ``jit``/``vmap``/``grad`` and over any number of leading axes.

    Both methods find the same threshold ``theta`` with ``p = max(x - theta, 0)``:

    * ``"michelot"`` (default): Michelot's finite algorithm (1986). Starting from
      ``theta_0 = (sum(x) - 1)/n``, a lower bound, repeat ``theta <- (sum_{x_i > theta} x_i
      - 1) / #{x_i > theta}``; theta rises monotonically and reaches the exact value
      once the support stops changing (at most ``n`` rounds, typically a handful). Each
      round is one fused O(n) pass, so it avoids a sort; this is much faster with XLA on CPU
      (see docs/performance.md).
    * ``"sort"``: the sort-based algorithm (Held et al. 1974; Duchi et al. 2008),
      O(n log n) in the worst case.

    Args:
      x: array ``[..., n]`` with ``n >= 1``. ``-inf`` entries are allowed (they get
        probability 0); NaN and ``+inf`` are rejected when ``x`` is concrete.
      method: ``"michelot"`` or ``"sort"``.

    Returns:
      Array of the same shape and floating dtype, every row non-negative and summing to 1.

    Raises:
      ValueError: unknown method, ``x`` is a scalar, has an empty last axis, or (when
        concrete) holds NaN or ``+inf``.

    Paper: the ``proj_Δ`` operator of BDPL and of every AsynDBT update.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    x = as_float_array("x", x)
    require_ndim("x", x, 1, "rows on the last axis")
    require_nonempty_last("x", x, "the simplex dimension")
    check_no_nan_or_posinf("x", x)
    shifted = x - jnp.max(x, axis=-1, keepdims=True)
    shifted = jnp.maximum(shifted, _FLOOR)
    theta = _threshold_michelot(shifted) if method == "michelot" else _threshold_sort(shifted)
    return jnp.maximum(shifted - theta, 0.0)


def _threshold_sort(shifted):
    n = shifted.shape[-1]
    descending = -jnp.sort(-shifted, axis=-1)
    cumulative = jnp.cumsum(descending, axis=-1)
    k = jnp.arange(1, n + 1, dtype=shifted.dtype)
    # rho = largest k with u_k - (sum_{j<=k} u_j - 1) / k > 0; k = 1 always qualifies.
    support = k * descending - cumulative + 1.0 > 0
    rho = jnp.sum(support, axis=-1, keepdims=True)
    total = jnp.take_along_axis(cumulative, rho - 1, axis=-1)
    return (total - 1.0) / rho.astype(shifted.dtype)


def _threshold_michelot(shifted):
    n = shifted.shape[-1]
    theta0 = (jnp.sum(jax.lax.stop_gradient(shifted), axis=-1, keepdims=True) - 1.0) / n

    def refine(theta):
        # The row maximum (0 after the shift) is always above theta, so the count is >= 1.
        above = shifted > theta
        return (jnp.sum(jnp.where(above, shifted, 0.0), axis=-1, keepdims=True) - 1.0) / jnp.sum(
            above, axis=-1, keepdims=True
        ).astype(shifted.dtype)

    def cond(carry):
        _, changed, rounds = carry
        return changed & (rounds <= n)

    def body(carry):
        theta, _, rounds = carry
        new = refine(theta)
        return new, jnp.any(new != theta), rounds + 1

    # Search on a gradient-free copy (reverse-mode AD cannot cross a while_loop), then one
    # differentiable refinement on the converged support: it returns the same theta and
    # carries the exact derivative of the projection.
    theta, _, _ = jax.lax.while_loop(cond, body, (jax.lax.stop_gradient(theta0), jnp.array(True), jnp.array(0)))
    return refine(jax.lax.stop_gradient(theta))


def project_simplex_bisection(x, max_steps: int = 21, tolerance: float = 1e-3) -> jax.Array:
    """BDPL's approximate simplex projection, for parity experiments.

    Finds ``mu`` in ``[0, max(x)]`` by bisection on ``sum(clip(x - mu, 0, 1)) = 1``,
    stopping when the residual is below ``tolerance`` or after ``max_steps`` midpoints,
    then returns ``clip(x - mu, 0, 1)`` (BDPL's ``constrainScoreByWholeExact``). The rows
    are only approximately on the simplex, and not at all when ``sum(clip(x, 0, 1)) < 1``
    (mu cannot go below 0): use :func:`project_simplex` for real work.

    Args:
      x: array ``[..., n]``.
      max_steps: number of bisection midpoints (BDPL: 21).
      tolerance: residual at which a row stops early (BDPL: 1e-3).

    Returns:
      Array of the same shape.
    """
    x = as_float_array("x", x)
    require_ndim("x", x, 1, "rows on the last axis")
    require_nonempty_last("x", x, "the simplex dimension")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    check_finite("x", x)

    def residual(mu):
        return jnp.sum(jnp.clip(x - mu, 0.0, 1.0), axis=-1, keepdims=True) - 1.0

    lo = jnp.zeros(x.shape[:-1] + (1,), x.dtype)
    hi = jnp.max(x, axis=-1, keepdims=True)
    mu = (lo + hi) / 2
    done = jnp.zeros(lo.shape, bool)

    def body(_, carry):
        lo, hi, mu, done = carry
        mid = (lo + hi) / 2
        r = residual(mid)
        mu = jnp.where(done, mu, mid)
        now_done = done | (jnp.abs(r) < tolerance)
        lo = jnp.where(now_done | (r < 0), lo, mid)
        hi = jnp.where(now_done | (r >= 0), hi, mid)
        return lo, hi, mu, now_done

    _, _, mu, _ = jax.lax.fori_loop(0, max_steps, body, (lo, hi, mu, done))
    return jnp.clip(x - mu, 0.0, 1.0)

