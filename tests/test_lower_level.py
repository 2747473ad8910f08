import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asyndbt_jax.lower_level import (
    LowerLevelState,
    PrimalDualHyperparams,
    dual_step,
    primal_dual_rounds,
    server_consensus_step,
    worker_primal_step,
)
from numpy_reference import project_simplex as np_project

R, M, N = 5, 3, 6


def _random(seed):
    k = jax.random.split(jax.random.key(seed), 4)
    p = jax.random.dirichlet(k[0], jnp.ones(N), (R, M))
    z = jax.random.dirichlet(k[1], jnp.ones(N), (M,))
    rho = 0.1 * jax.random.normal(k[2], (R, M, N))
    g = jax.random.normal(k[3], (R, M, N))
    return p, z, rho, g


HP = PrimalDualHyperparams(eta_p=0.1, eta_z=0.05, eta_rho=0.2, mu=1.0, psi=0.3)


def test_worker_step_matches_numpy_loop():
    p, z, rho, g = _random(0)
    ours = worker_primal_step(p, g, rho, z, HP)
    P, Z, RHO, G = (np.asarray(x, np.float64) for x in (p, z, rho, g))
    for v in range(R):
        step = G[v] + RHO[v] + HP.mu * (P[v] - Z) + HP.psi * np.sign(P[v] - Z)
        np.testing.assert_allclose(ours[v], np_project(P[v] - HP.eta_p * step), atol=1e-5)


def test_server_and_dual_steps_match_numpy_loop():
    p, z, rho, _ = _random(1)
    mask = jnp.array([True, False, True, True, False])
    ours_z = server_consensus_step(z, p, rho, mask, HP)
    P, Z, RHO = (np.asarray(x, np.float64) for x in (p, z, rho))
    step = np.zeros_like(Z)
    for v in range(R):
        if mask[v]:
            step += -RHO[v] + HP.mu * (Z - P[v]) + HP.psi * np.sign(Z - P[v])
    np.testing.assert_allclose(ours_z, np_project(Z - HP.eta_z * step), atol=1e-5)
    ours_rho = dual_step(rho, p, z, mask, HP)
    for v in range(R):
        expect = RHO[v] + HP.eta_rho * (P[v] - Z) if mask[v] else RHO[v]
        np.testing.assert_allclose(ours_rho[v], expect, atol=1e-6)


@pytest.mark.parametrize("duals", ["zero", "random"])
def test_sign_consensus_bounds_one_workers_influence_when_the_l1_term_carries_it(duals):
    """With μ = 0 (the ℓ1 term alone ties workers to z) one worker changes z by at most
    2ψη_z per coordinate before projection, whatever it sends and whatever the duals."""
    p, z, rho, _ = _random(2)
    hp = HP._replace(mu=0.0)
    rho = jnp.zeros_like(p) if duals == "zero" else rho
    mask = jnp.ones(R, bool)
    honest = server_consensus_step(z, p, rho, mask, hp)
    attacked_p = p.at[0].set(jnp.full((M, N), 1e6))  # not even on the simplex
    attacked = server_consensus_step(z, attacked_p, rho, mask, hp)
    bound = 2 * hp.psi * hp.eta_z * np.sqrt(N)  # projection is 1-Lipschitz in ℓ2
    assert np.all(np.linalg.norm(np.asarray(attacked - honest), axis=-1) <= bound + 1e-6)


def test_the_quadratic_pull_breaks_the_bound():
    """With μ > 0 a worker moves z in proportion to what it sends (μη_z per unit, up to the
    projection): the ψ-sign bound no longer holds, and the move stays within μη_z·|Δp| + 2ψη_z."""
    p, z, rho, _ = _random(2)
    hp = HP._replace(mu=0.5)
    mask = jnp.ones(R, bool)
    honest = server_consensus_step(z, p, rho, mask, hp)
    shift = jnp.zeros((M, N)).at[:, 0].set(5.0).at[:, 1].set(-5.0)
    attacked = server_consensus_step(z, p.at[0].add(shift), rho, mask, hp)
    moved = np.linalg.norm(np.asarray(attacked - honest), axis=-1)
    sign_bound = 2 * hp.psi * hp.eta_z * np.sqrt(N)
    assert np.all(moved > sign_bound)
    assert np.all(moved <= hp.mu * hp.eta_z * np.linalg.norm(np.asarray(shift), axis=-1) + sign_bound + 1e-6)


def test_finds_planted_consensus_optimum():
    """g_v(p) = ½||p − t_v||² under consensus p_v = z: the optimum is z = mean_v t_v."""
    targets = jax.random.dirichlet(jax.random.key(3), jnp.ones(N), (R, M))
    hp = PrimalDualHyperparams(eta_p=0.2, eta_z=1.0 / (R * 1.0), eta_rho=0.2, mu=1.0, psi=0.0)
    state = LowerLevelState(jnp.full((R, M, N), 1.0 / N), jnp.full((M, N), 1.0 / N), jnp.zeros((R, M, N)))
    grad_fn = lambda key, p: p - targets  # noqa: E731
    final = jax.jit(primal_dual_rounds, static_argnums=(1, 3, 5))(
        state, grad_fn, jax.random.key(0), 400, jnp.ones(R, bool), hp
    )
    np.testing.assert_allclose(final.consensus, targets.mean(0), atol=5e-3)
    np.testing.assert_allclose(final.fragment_probs, jnp.broadcast_to(targets.mean(0), (R, M, N)), atol=5e-3)


def test_masked_workers_are_frozen_and_k_validated():
    p, z, rho, _ = _random(4)
    mask = jnp.array([True, True, False, True, True])
    out = primal_dual_rounds(LowerLevelState(p, z, rho), lambda k, q: jnp.ones_like(q), jax.random.key(0), 3, mask, HP)
    np.testing.assert_array_equal(out.fragment_probs[2], p[2])
    np.testing.assert_array_equal(out.duals[2], rho[2])
    with pytest.raises(ValueError, match="num_rounds"):
        primal_dual_rounds(LowerLevelState(p, z, rho), lambda k, q: q, jax.random.key(0), 0, mask, HP)
