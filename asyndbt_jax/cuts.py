"""Cutting-plane approximation of the lower-level constraint (paper Eqs. 5, 14–15, 28–33).

The constraint "the point is (nearly) lower-level optimal", ``h ≤ ε``, is approximated by
linear cuts over every variable of both levels,

    Σ_v ( a_l^(v)ᵀ p^(v) + e_l^(v)ᵀ q^(v) ) + b_lᵀ z + c_l ≤ 0,

each the first-order expansion of ``h`` at the point where it was added (when ``h > ε``),
dropped when its dual stayed below ``γ`` before and after an update. Two gaps:

* the **value-function gap** (:func:`value_cut`, one cut set for all rows): ``h = Σ_v g_v(p; q)
  − g_v(φ; q)``, the training loss the lower level would still remove at its estimate ``φ``.
  Its coefficient on the demonstrations, ``e = ∇_q g(p; q) − ∇_q g(φ; q)`` (Danskin), is the
  hypergradient: how the demonstrations move what the lower level can reach.
* the **argument-space gap** per fragment row ``i`` (:func:`add_cuts`): ``h_i = ||[{p_i^(v)};
  z_i] − φ_i||²`` (ADBO's squared ℓ2) or ``||·||₁``; its cuts have no coefficient on ``q``.

A buffer holds ``H`` rows of cuts (``H = M`` per fragment row, or ``H = 1`` for one set over
all rows) with a fixed capacity per row and an ``active`` mask, so every shape is static
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

NORMS = ("l1", "l2sq")  # the argument-space gaps (per fragment row)


class CutBuffer(NamedTuple):
    """Fixed-capacity cuts in ``H`` rows: ``H = M`` (one set per fragment row, a cut of row
    ``i`` involving only ``p_i`` and ``z_i``) or ``H = 1`` (one set over every row).

    Attributes:
      worker_coef: ``a``, a tuple of ``C`` arrays ``[R, M, N]`` (slot ``l``: the coefficients
        on every worker's ``p``; worker axis first). ``stack_worker_coef`` gives ``[R, M, C, N]``.
      consensus_coef: ``b [M, C, N]`` coefficients on ``z``.
      demo_coef: ``e``, a tuple of ``C`` arrays ``[R, U, V]``: the coefficients on every
        worker's demonstrations ``q`` (zero in per-row buffers).
      offset: ``c [H, C]``.
      active: bool ``[H, C]``.
      duals: ``λ [H, C]`` (0 for inactive cuts).
    """

    worker_coef: tuple[jax.Array, ...]
    consensus_coef: jax.Array
    demo_coef: tuple[jax.Array, ...]
    offset: jax.Array
    active: jax.Array
    duals: jax.Array

    @property
    def num_rows(self) -> int:
        """``H``: ``M`` (a cut set per fragment row) or 1 (one set over every row)."""
        return self.offset.shape[0]


def init_cuts(
    num_rows: int, capacity: int, num_workers: int, vocab_size: int, dtype=jnp.float32, *, demo_shape=(0, 0), per_row=True
) -> CutBuffer:
    """An empty buffer of ``capacity`` cuts per row.

    Args:
      num_rows: ``M``, the fragment rows.
      demo_shape: ``(U, V)`` of the demonstrations ``q`` (for the cuts' coefficients on them).
      per_row: ``True``: a cut set per fragment row (``H = M``, the argument-space gaps);
        ``False``: one set over every row (``H = 1``, the value-function gap).
    """
    if not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
    rows = num_rows if per_row else 1
    return CutBuffer(
        worker_coef=tuple(jnp.zeros((num_workers, num_rows, vocab_size), dtype) for _ in range(capacity)),
        consensus_coef=jnp.zeros((num_rows, capacity, vocab_size), dtype),
        demo_coef=tuple(jnp.zeros((num_workers,) + tuple(demo_shape), dtype) for _ in range(capacity)),
        offset=jnp.zeros((rows, capacity), dtype),
        active=jnp.zeros((rows, capacity), bool),
        duals=jnp.zeros((rows, capacity), dtype),
    )


def _to_rows(x, rows: int):
    """Per-fragment-row terms ``[..., M]`` summed into the buffer's ``H`` rows."""
    return x if x.shape[-1] == rows else jnp.sum(x, axis=-1, keepdims=True)


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
      norm: ``"l2sq"`` (squared ℓ2, ADBO) or ``"l1"`` (the paper's norm, measured worse: docs/algorithm.md). The
        engine's default gap is neither: the value-function gap (:func:`value_cut`).
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


def demo_terms(demo_coef, demo_probs) -> jax.Array:
    """``e_l^(v)ᵀ q^(v)`` for every worker and cut: ``[R, C]``, from the cuts' coefficients on
    ``q`` (``CutBuffer.demo_coef``: ``C`` arrays ``[R, U, V]``) and ``q [R, U, V]``. A worker
    computes its own row and sends these scalars (never ``q``)."""
    return jnp.stack([jnp.sum(e * demo_probs, axis=(-2, -1)) for e in demo_coef], axis=-1)


def worker_terms(cuts: CutBuffer, fragment_probs) -> jax.Array:
    """``a_l^(v)ᵀ p^(v)`` of every worker, row and cut: ``[R, H, C]`` (a cut over several
    fragment rows sums them). A worker's terms change only when its ``p`` or a cut's
    coefficients do, so a server that keeps them for every worker's latest ``p`` updates the
    arrived workers' rows only, and the λ step reads ``R · H · C`` scalars instead of the
    ``C`` coefficient arrays ``[R, M, N]`` (``fragment_probs`` and the buffer may hold any
    subset of the workers, e.g. :func:`~asyndbt_jax.engine.gather_cuts`)."""
    H = cuts.num_rows
    return jnp.stack([_to_rows(jnp.sum(a * fragment_probs, axis=-1), H) for a in cuts.worker_coef], axis=-1)


def cut_values(cuts: CutBuffer, fragment_probs, consensus, demo_terms=None, combine=_sum_workers,
               terms=None) -> jax.Array:
    """``Σ_v (a_l^(v)ᵀ p^(v) + e_l^(v)ᵀ q^(v)) + b_lᵀ z + c_l`` for every row and cut, 0 where
    inactive: ``[H, C]`` (``combine`` sums the per-worker terms ``[R, H, C]``; see :func:`gap`).
    ``demo_terms``: every worker's ``e_l^(v)ᵀ q^(v)`` ``[R, C]`` (:func:`demo_terms`; ``None``: none).
    ``terms``: :func:`worker_terms` of ``fragment_probs`` where the caller keeps them
    (``fragment_probs`` is then not read)."""
    terms = worker_terms(cuts, fragment_probs) if terms is None else terms
    if demo_terms is not None:
        terms = terms + demo_terms[:, None, :]
    consensus_part = _to_rows(jnp.sum(cuts.consensus_coef * consensus[:, None, :], axis=-1).T, cuts.num_rows).T
    return jnp.where(cuts.active, combine(terms) + consensus_part + cuts.offset, 0.0)


def insert_cuts(cuts: CutBuffer, add, worker_coef, consensus_coef, offset, demo_coef=None):
    """Put one new cut into every row ``add [H]`` marks: its coefficients ``worker_coef [R, M, N]``,
    ``consensus_coef [M, N]``, ``demo_coef [R, U, V]`` (``None``: zero) and ``offset [H]``.
    The cut takes the row's first inactive slot or, when the row is full, the slot with the
    smallest dual; its dual starts at 0.

    Returns:
      ``(new_buffer, put [H, C])``: the slots written."""
    score = jnp.where(cuts.active, cuts.duals, -jnp.inf)  # an inactive slot scores lowest
    slot = jnp.argmin(score, axis=-1)  # [H]
    capacity = cuts.active.shape[-1]
    put = add[:, None] & (jnp.arange(capacity)[None, :] == slot[:, None])  # [H, C]
    put_rows = jnp.broadcast_to(put, (consensus_coef.shape[0], capacity)) if cuts.num_rows == 1 else put  # [M, C]
    demo = (jnp.zeros_like(e) for e in cuts.demo_coef) if demo_coef is None else (demo_coef for _ in cuts.demo_coef)
    return CutBuffer(
        worker_coef=tuple(jnp.where(put_rows[None, :, l, None], worker_coef, old) for l, old in enumerate(cuts.worker_coef)),
        consensus_coef=jnp.where(put_rows[..., None], consensus_coef[:, None], cuts.consensus_coef),
        demo_coef=tuple(jnp.where(put[0, l] if cuts.num_rows == 1 else False, new, old)
                        for l, (new, old) in enumerate(zip(demo, cuts.demo_coef))),
        offset=jnp.where(put, offset[:, None], cuts.offset),
        active=cuts.active | put,
        duals=jnp.where(put, 0.0, cuts.duals),
    ), put


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
    if cuts.num_rows != fragment_probs.shape[1]:
        raise ValueError("argument-space cuts need a per-row buffer (init_cuts(..., per_row=True))")
    h = gap(fragment_probs, consensus, phi_probs, phi_consensus, norm, combine)  # [M]
    a, b = gap_gradient(fragment_probs, consensus, phi_probs, phi_consensus, norm)  # [R, M, N], [M, N]
    c = h - combine(jnp.sum(a * fragment_probs, axis=-1)) - jnp.sum(b * consensus, -1) - epsilon
    add = h > epsilon
    return insert_cuts(cuts, add, a, b, c)[0], add


def value_cut(cuts: CutBuffer, fragment_probs, consensus, coef, demo_term, gap_per_worker, epsilon: float, combine=_sum_workers):
    """Add a cut of the value-function gap ``h = Σ_v h_v`` at the current point when ``h > ε``.

    Args:
      cuts: a buffer with one row (``init_cuts(..., per_row=False)``).
      fragment_probs, consensus: the point's ``p [R, M, N]`` and ``z [M, N]``.
      coef: ``(a [R, M, N], b [M, N], e [R, U, V])``, the gap's gradient at the point.
      demo_term: ``e^(v)ᵀ q^(v) [R]`` at the point (each worker computes its own: ``q`` stays there).
      gap_per_worker: ``h_v [R]`` (``combine`` sums them; see :func:`gap`).
      epsilon: ``ε``.

    Returns:
      ``(new_buffer, h, put [C])``: the cut's value at the point is ``h − ε``; ``put`` marks
      the slot written (none when ``h ≤ ε``).
    """
    if cuts.num_rows != 1:
        raise ValueError("value-function cuts need a buffer of one row (init_cuts(..., per_row=False))")
    a, b, e = coef
    h = combine(gap_per_worker)
    at_point = combine(jnp.sum(a * fragment_probs, axis=(-2, -1)) + demo_term) + jnp.sum(b * consensus)
    c = h - at_point - epsilon
    new, put = insert_cuts(cuts, (h > epsilon)[None], a, b, c[None], e)
    return new, h, put[0]


def drop_cuts(cuts: CutBuffer, duals_before, gamma: float) -> CutBuffer:
    """Deactivate cuts whose dual was below ``γ`` both before and after the last update."""
    drop = cuts.active & (duals_before < gamma) & (cuts.duals < gamma)
    return cuts._replace(active=cuts.active & ~drop, duals=jnp.where(drop, 0.0, cuts.duals))


class CutForce(NamedTuple):
    """The cut terms of the upper-level steps: ``Σ_l λ_l a_l^(v) [R, M, N]`` on every worker's
    ``p``, ``Σ_l λ_l b_l [M, N]`` on ``z``, ``Σ_l λ_l e_l^(v) [R, U, V]`` on every worker's ``q``."""

    fragment: jax.Array
    consensus: jax.Array
    demos: jax.Array


def cut_force(cuts: CutBuffer) -> CutForce:
    """The cut terms of the upper-level steps (:class:`CutForce`)."""
    lam = jnp.where(cuts.active, cuts.duals, 0.0)  # [H, C]
    worker = sum(lam[None, :, l, None] * a for l, a in enumerate(cuts.worker_coef))
    consensus = jnp.sum(lam[:, :, None] * cuts.consensus_coef, axis=1)
    demos = sum(jnp.sum(lam[:, l]) * e for l, e in enumerate(cuts.demo_coef))
    return CutForce(worker, consensus, demos)


def dual_ascent(
    cuts: CutBuffer, fragment_probs, consensus, eta_lambda: float, c1: float, combine=_sum_workers, demo_terms=None,
    terms=None,
) -> CutBuffer:
    """``λ_l ← max(0, λ_l + η_λ (Σ_v (a_l^(v)ᵀ p^(v) + e_l^(v)ᵀ q^(v)) + b_lᵀ z + c_l − c_1 λ_l))`` on
    active cuts (``demo_terms [R, C]``: the workers' ``e_l^(v)ᵀ q^(v)``, :func:`demo_terms`;
    ``terms``: the kept :func:`worker_terms`, see :func:`cut_values`)."""
    values = cut_values(cuts, fragment_probs, consensus, demo_terms, combine, terms)
    new = jnp.maximum(0.0, cuts.duals + eta_lambda * (values - c1 * cuts.duals))
    return cuts._replace(duals=jnp.where(cuts.active, new, 0.0))
