"""Cutting-plane approximation of the lower-level constraint (paper Eqs. 5, 14–15, 28–33).

For every fragment row ``i`` the gap between the current point ``x = [{p_i^(v)}; z_i]``
and the lower-level estimate ``φ_i`` is ``h_i(x) = ||x − φ_i||²`` (ADBO's squared ℓ2, the
default) or ``||x − φ_i||₁`` (``norm="l1"``, the spec's default, measured worse). The constraint ``h_i ≤ ε`` is approximated by linear cuts

    Σ_v a_l^(v)ᵀ p_i^(v) + b_lᵀ z_i + c_l ≤ 0

added at the current point when ``h_i > ε`` (a first-order lower bound of the convex
``h_i``) and dropped when their dual stayed below ``γ`` before and after an update. The
buffer has a fixed capacity per row with an ``active`` mask, so every shape is static
under ``jit``. Memory: ``capacity · R · M · N`` floats for the worker coefficients (the
largest part of the engine state), stored as ``C`` separate worker-leading ``[R, M, N]``
arrays, one per slot, not one ``[R, M, C, N]`` array: at M=75, N=100, C=4 the stacked
buffer passes 2^31 elements at 71,583 workers, and past that XLA's GPU emitter computes
every index of a fusion that touches it in 64-bit integers (a 64-bit division is a long
software routine on the GPU). Split, no array reaches 2^31 elements below 286,331 workers.
The per-slot loops are over the (small, static) capacity, never over workers.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

NORMS = ("l1", "l2sq")


class CutBuffer(NamedTuple):
    """Fixed-capacity cuts, one set per fragment row.

    Attributes:
      worker_coef: ``a``, a tuple of ``C`` arrays ``[R, M, N]`` (slot ``l``: the coefficients
        on every worker's ``p_i``; worker axis first). ``stack_worker_coef`` gives ``[R, M, C, N]``.
      consensus_coef: ``b [M, C, N]`` coefficients on ``z_i``.
      offset: ``c [M, C]``.
      active: bool ``[M, C]``.
      duals: ``λ [M, C]`` (0 for inactive cuts).
    """

    worker_coef: tuple[jax.Array, ...]
    consensus_coef: jax.Array
    offset: jax.Array
    active: jax.Array
    duals: jax.Array


def init_cuts(num_rows: int, capacity: int, num_workers: int, vocab_size: int, dtype=jnp.float32) -> CutBuffer:
    """An empty buffer of ``capacity`` cuts per row."""
    if not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
    return CutBuffer(
        worker_coef=tuple(jnp.zeros((num_workers, num_rows, vocab_size), dtype) for _ in range(capacity)),
        consensus_coef=jnp.zeros((num_rows, capacity, vocab_size), dtype),
        offset=jnp.zeros((num_rows, capacity), dtype),
        active=jnp.zeros((num_rows, capacity), bool),
        duals=jnp.zeros((num_rows, capacity), dtype),
    )


def stack_worker_coef(cuts: CutBuffer) -> jax.Array:
    """The worker coefficients as one ``[R, M, C, N]`` array (for inspection and references;
    the engine never builds it)."""
    return jnp.stack(cuts.worker_coef, axis=2)


def _sum_workers(terms):
    return jnp.sum(terms, axis=0)


def gap(fragment_probs, consensus, phi_probs, phi_consensus, norm: str = "l2sq", combine=_sum_workers) -> jax.Array:
    """``h_i = ||[{p_i^(v)}; z_i] − φ_i||`` for every row ``i``: ``[M]``.

    Args:
      fragment_probs: ``p [R, M, N]``; consensus: ``z [M, N]``; phi_probs, phi_consensus: ``φ`` alike.
      norm: ``"l2sq"`` (squared ℓ2, ADBO; the default) or ``"l1"`` (the spec's default, measured worse: docs/algorithm.md).
      combine: how the per-worker terms ``[R, M]`` are summed (default the plain sum; the
        engine passes ``R ×`` a robust rule, ``engine.worker_sum``).

    Paper: Eq. 5.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    dp, dz = fragment_probs - phi_probs, consensus - phi_consensus
    if norm == "l1":
        return combine(jnp.sum(jnp.abs(dp), axis=-1)) + jnp.sum(jnp.abs(dz), axis=-1)
    return combine(jnp.sum(dp**2, axis=-1)) + jnp.sum(dz**2, axis=-1)


def gap_gradient(fragment_probs, consensus, phi_probs, phi_consensus, norm: str = "l2sq"):
    """``(∂h/∂p [R, M, N], ∂h/∂z [M, N])`` (a subgradient for ℓ1: ``sign``)."""
    dp, dz = fragment_probs - phi_probs, consensus - phi_consensus
    if norm == "l1":
        return jnp.sign(dp), jnp.sign(dz)
    return 2.0 * dp, 2.0 * dz


def cut_values(cuts: CutBuffer, fragment_probs, consensus, combine=_sum_workers) -> jax.Array:
    """``Σ_v a_l^(v)ᵀ p_i^(v) + b_lᵀ z_i + c_l`` for every row and cut, 0 where inactive: ``[M, C]``
    (``combine`` sums the per-worker terms ``[R, M, C]``; see :func:`gap`)."""
    worker_part = combine(jnp.stack([jnp.sum(a * fragment_probs, axis=-1) for a in cuts.worker_coef], axis=-1))
    consensus_part = jnp.sum(cuts.consensus_coef * consensus[:, None, :], axis=-1)
    return jnp.where(cuts.active, worker_part + consensus_part + cuts.offset, 0.0)


def add_cuts(
    cuts: CutBuffer, fragment_probs, consensus, phi_probs, phi_consensus, epsilon: float, norm="l2sq", combine=_sum_workers
):
    """Add a cut at the current point to every row whose gap exceeds ``ε`` (paper Eqs. 14–15).

    ``a = ∂h/∂p``, ``b = ∂h/∂z``, ``c = h(x_t) − aᵀp_t − bᵀz_t − ε``. The new cut takes the
    row's first inactive slot or, when the row is full, the slot with the smallest dual.
    Its dual starts at 0. ``combine`` sums per-worker terms (see :func:`gap`); the cut's
    value at the current point is ``h − ε`` for any ``combine``.

    Returns:
      ``(new_buffer, added [M] bool)``.
    """
    h = gap(fragment_probs, consensus, phi_probs, phi_consensus, norm, combine)  # [M]
    a, b = gap_gradient(fragment_probs, consensus, phi_probs, phi_consensus, norm)  # [R, M, N], [M, N]
    c = h - combine(jnp.sum(a * fragment_probs, axis=-1)) - jnp.sum(b * consensus, -1) - epsilon
    add = h > epsilon
    score = jnp.where(cuts.active, cuts.duals, -jnp.inf)  # an inactive slot scores lowest
    slot = jnp.argmin(score, axis=-1)  # [M]
    capacity = cuts.active.shape[-1]
    put = add[:, None] & (jnp.arange(capacity)[None, :] == slot[:, None])  # [M, C]
    return (
        CutBuffer(
            worker_coef=tuple(jnp.where(put[None, :, l, None], a, old) for l, old in enumerate(cuts.worker_coef)),
            consensus_coef=jnp.where(put[..., None], b[:, None], cuts.consensus_coef),
            offset=jnp.where(put, c[:, None], cuts.offset),
            active=cuts.active | put,
            duals=jnp.where(put, 0.0, cuts.duals),
        ),
        add,
    )


def drop_cuts(cuts: CutBuffer, duals_before, gamma: float) -> CutBuffer:
    """Deactivate cuts whose dual was below ``γ`` both before and after the last update."""
    drop = cuts.active & (duals_before < gamma) & (cuts.duals < gamma)
    return cuts._replace(active=cuts.active & ~drop, duals=jnp.where(drop, 0.0, cuts.duals))


def cut_force(cuts: CutBuffer):
    """``(Σ_l λ_l a_l^(v) [R, M, N], Σ_l λ_l b_l [M, N])``: the cut terms of the upper-level steps."""
    lam = jnp.where(cuts.active, cuts.duals, 0.0)
    worker = sum(lam[None, :, l, None] * a for l, a in enumerate(cuts.worker_coef))
    consensus = jnp.sum(lam[:, :, None] * cuts.consensus_coef, axis=1)
    return worker, consensus


def dual_ascent(cuts: CutBuffer, fragment_probs, consensus, eta_lambda: float, c1: float, combine=_sum_workers) -> CutBuffer:
    """``λ_l ← max(0, λ_l + η_λ (Σ_v a_l^(v)ᵀ p^(v) + b_lᵀ z + c_l − c_1 λ_l))`` on active cuts."""
    values = cut_values(cuts, fragment_probs, consensus, combine)
    new = jnp.maximum(0.0, cuts.duals + eta_lambda * (values - c1 * cuts.duals))
    return cuts._replace(duals=jnp.where(cuts.active, new, 0.0))
