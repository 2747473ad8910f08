"""Lower-level estimate φ by K distributed primal-dual rounds (paper Eqs. 7–13).

Augmented Lagrangian of fragment row ``i`` (all rows at once here, ``p [R, M, N]``)::

    GP = Σ_v [ g(p^(v)) + ρ^(v)ᵀ (p^(v) − z) + (μ/2) ||p^(v) − z||² ]   (+ ψ Σ_v ||p^(v) − z||₁)

One round: every worker takes a projected step on its own ``p``, the server moves the
consensus ``z`` (with the ψ-sign robust-aggregation term) and the duals ``ρ``. The worker
axis is the leading axis; ``mask [R]`` marks the workers whose values count (all of them
during a refresh; the asynchronous upper level passes its active set).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .simplex import project_simplex


class PrimalDualHyperparams(NamedTuple):
    """Step sizes and penalties of the lower level.

    Attributes:
      eta_p: worker step on ``p``.
      eta_z: server step on ``z`` (applied to a **sum** over workers, as in the paper;
        ``1/(R·μ)`` moves ``z`` to the penalised mean in one step).
      eta_rho: dual ascent step on ``ρ``.
      mu: quadratic penalty ``μ``.
      psi: ℓ1 consensus penalty ``ψ`` (robust aggregation; 0 disables it).
    """

    eta_p: float
    eta_z: float
    eta_rho: float
    mu: float
    psi: float


def worker_primal_step(fragment_probs, grad, duals, consensus, hp: PrimalDualHyperparams) -> jax.Array:
    """``p ← proj_Δ(p − η_p (∇̂g(p) + ρ + μ(p − z) + ψ·sign(p − z)))`` for every worker.

    Args:
      fragment_probs: ``p [R, M, N]``.
      grad: ``∇̂g [R, M, N]``, the black-box estimate on each worker's training batch.
      duals: ``ρ [R, M, N]``.
      consensus: ``z [M, N]``.
      hp: hyper-parameters.

    Paper: Eq. 9 (worker update; the paper prints ``sign(z − p)``, the ℓ1 penalty
    ``ψ||p − z||₁`` gives ``sign(p − z)``).
    """
    diff = fragment_probs - consensus[None]
    step = grad + duals + hp.mu * diff + hp.psi * jnp.sign(diff)
    return project_simplex(fragment_probs - hp.eta_p * step)


def server_consensus_step(
    consensus, fragment_probs, duals, mask, hp: PrimalDualHyperparams, extra_force=0.0
) -> jax.Array:
    """``z ← proj_Δ(z − η_z (F + Σ_v (−ρ^(v) + μ(z − p^(v))) + ψ Σ_v sign(z − p^(v))))`` over masked workers.

    The ψ-sign terms are the regularised robust aggregation: whatever one worker sends,
    its sign term moves ``z`` by at most ``ψ·η_z`` per coordinate.

    Args:
      consensus: ``z [M, N]``.
      fragment_probs: ``p [R, M, N]`` (the server's latest copy of every worker's ``p``).
      duals: ``ρ [R, M, N]``.
      mask: bool ``[R]``, workers that take part.
      hp: hyper-parameters.
      extra_force: ``F [M, N]`` added to the step; the upper-level server passes the cut
        force ``Σ_l λ_l b_l`` (the upper level), the lower level nothing.

    Paper: Eq. 10 (and the upper level's z step).
    """
    weight = mask.astype(consensus.dtype)[:, None, None]
    diff = consensus[None] - fragment_probs
    step = jnp.sum(weight * (-duals + hp.mu * diff + hp.psi * jnp.sign(diff)), axis=0)
    return project_simplex(consensus - hp.eta_z * (extra_force + step))


def dual_step(duals, fragment_probs, consensus, mask, hp: PrimalDualHyperparams) -> jax.Array:
    """``ρ^(v) ← ρ^(v) + η_ρ (p^(v) − z)`` for masked workers (others keep their ``ρ``).

    Paper: Eq. 11.
    """
    update = duals + hp.eta_rho * (fragment_probs - consensus[None])
    return jnp.where(mask[:, None, None], update, duals)


class LowerLevelState(NamedTuple):
    """``φ`` and the duals after K rounds: ``fragment_probs [R, M, N]``, ``consensus [M, N]``, ``duals``."""

    fragment_probs: jax.Array
    consensus: jax.Array
    duals: jax.Array


def primal_dual_round(
    state: LowerLevelState, grad, mask, hp: PrimalDualHyperparams, consensus_step=server_consensus_step
) -> LowerLevelState:
    """One round given the workers' gradients ``grad [R, M, N]`` at ``state.fragment_probs``:
    the masked workers' primal step, then the server's ``z`` and ``ρ`` steps (Eqs. 9–11)."""
    p = worker_primal_step(state.fragment_probs, grad, state.duals, state.consensus, hp)
    p = jnp.where(mask[:, None, None], p, state.fragment_probs)
    z = consensus_step(state.consensus, p, state.duals, mask, hp)
    rho = dual_step(state.duals, p, z, mask, hp)
    return LowerLevelState(p, z, rho)


def primal_dual_rounds(
    state: LowerLevelState, grad_fn, key, num_rounds: int, mask, hp: PrimalDualHyperparams, consensus_step=server_consensus_step
):
    """K primal-dual rounds (paper Eqs. 7–13); returns the final state, i.e. ``φ = [{p^K}, z^K]``.

    Args:
      state: starting ``p``, ``z``, ``ρ`` (the current upper-level point and duals).
      grad_fn: ``(key, fragment_probs [R, M, N]) -> ∇̂g [R, M, N]``: the workers' black-box
        gradient of the training loss (it samples configurations and queries the feedback).
      key: ``jax.random`` key, split per round.
      num_rounds: ``K >= 1`` (static).
      mask: bool ``[R]`` workers that take part (others keep their ``p`` and ``ρ``).
      hp: hyper-parameters.
      consensus_step: the server's ``z`` step, ``(z, p, ρ, mask, hp) -> z`` (default: the
        paper's ψ-sign step; the engine passes its configured robust aggregator).
    """
    if not isinstance(num_rounds, int) or num_rounds < 1:
        raise ValueError(f"num_rounds (K) must be a positive integer, got {num_rounds!r}")

    def one_round(s: LowerLevelState, round_key):
        return primal_dual_round(s, grad_fn(round_key, s.fragment_probs), mask, hp, consensus_step), None

    final, _ = jax.lax.scan(one_round, state, jax.random.split(key, num_rounds))
    return final
