import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asyndbt_jax.cuts import add_cuts, cut_force, cut_values, drop_cuts, dual_ascent, gap, init_cuts, stack_worker_coef

R, M, N, C = 4, 3, 5, 2


def _point(seed):
    k = jax.random.split(jax.random.key(seed), 4)
    return (
        jax.random.dirichlet(k[0], jnp.ones(N), (R, M)),
        jax.random.dirichlet(k[1], jnp.ones(N), (M,)),
        jax.random.dirichlet(k[2], jnp.ones(N), (R, M)),
        jax.random.dirichlet(k[3], jnp.ones(N), (M,)),
    )


@pytest.mark.parametrize("norm", ["l1", "l2sq"])
def test_gap_matches_numpy(norm):
    p, z, fp, fz = (np.asarray(x, np.float64) for x in _point(0))
    ours = gap(p, z, fp, fz, norm)
    for i in range(M):
        x = np.concatenate([p[:, i].ravel(), z[i]])
        phi = np.concatenate([fp[:, i].ravel(), fz[i]])
        ref = np.abs(x - phi).sum() if norm == "l1" else ((x - phi) ** 2).sum()
        assert float(ours[i]) == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("norm", ["l1", "l2sq"])
def test_new_cut_is_violated_here_and_satisfied_at_phi(norm):
    p, z, fp, fz = _point(1)
    eps = 0.01
    cuts, added = add_cuts(init_cuts(M, C, R, N), p, z, fp, fz, eps, norm)
    assert bool(added.all()) and int(cuts.active.sum()) == M
    here = cut_values(cuts, p, z)[cuts.active]
    np.testing.assert_allclose(here, gap(p, z, fp, fz, norm) - eps, rtol=1e-5)  # h(x_t) − ε > 0
    at_phi = cut_values(cuts, fp, fz)[cuts.active]
    assert np.all(np.asarray(at_phi) <= -eps + 1e-5)  # convexity: the cut never excludes φ


def test_slots_fill_then_replace_smallest_dual_and_drop_rule():
    p, z, fp, fz = _point(2)
    cuts = init_cuts(M, C, R, N)
    cuts, _ = add_cuts(cuts, p, z, fp, fz, 0.0)
    cuts = cuts._replace(duals=jnp.where(cuts.active, 0.5, 0.0))
    cuts, _ = add_cuts(cuts, fp * 0.5 + p * 0.5, z, fp, fz, 0.0)
    assert bool(cuts.active.all())
    cuts = cuts._replace(duals=jnp.array([[0.5, 0.2]] * M))
    before = stack_worker_coef(cuts)
    cuts, _ = add_cuts(cuts, p * 0.9 + fp * 0.1, z, fp, fz, 0.0)
    after = stack_worker_coef(cuts)
    np.testing.assert_array_equal(after[:, :, 0], before[:, :, 0])  # larger dual kept
    assert not np.array_equal(after[:, :, 1], before[:, :, 1])  # smaller dual replaced
    assert float(cuts.duals[0, 1]) == 0.0  # replaced slot starts at λ = 0
    prev = jnp.array([[0.5, 0.01]] * M)
    cuts = cuts._replace(duals=jnp.array([[0.4, 0.02]] * M))
    dropped = drop_cuts(cuts, prev, gamma=0.05)
    np.testing.assert_array_equal(dropped.active, np.array([[True, False]] * M))
    assert not bool(gap(p, z, p, z).any())  # zero gap at φ = x: no cut needed
    same, added = add_cuts(dropped, p, z, p, z, 0.01)
    assert not bool(added.any()) and np.array_equal(same.active, dropped.active)


def test_force_and_dual_ascent_match_numpy():
    p, z, fp, fz = _point(3)
    cuts, _ = add_cuts(init_cuts(M, C, R, N), p, z, fp, fz, 0.0)
    cuts = cuts._replace(duals=jnp.where(cuts.active, 0.7, 0.0))
    fw, fc = cut_force(cuts)
    a, b, lam = np.asarray(stack_worker_coef(cuts)), np.asarray(cuts.consensus_coef), np.asarray(cuts.duals)
    for v in range(R):
        for i in range(M):
            np.testing.assert_allclose(fw[v, i], sum(lam[i, l] * a[v, i, l] for l in range(C)), atol=1e-6)
    np.testing.assert_allclose(fc[1], sum(lam[1, l] * b[1, l] for l in range(C)), atol=1e-6)
    new = dual_ascent(cuts, fp, fz, eta_lambda=0.1, c1=0.5)
    vals = np.asarray(cut_values(cuts, fp, fz))
    expect = np.where(np.asarray(cuts.active), np.maximum(0, lam + 0.1 * (vals - 0.5 * lam)), 0)
    np.testing.assert_allclose(new.duals, expect, atol=1e-6)
    assert float(new.duals.min()) >= 0


def test_bad_input():
    with pytest.raises(ValueError, match="capacity"):
        init_cuts(M, 0, R, N)
    p, z, fp, fz = _point(4)
    with pytest.raises(ValueError, match="norm"):
        gap(p, z, fp, fz, norm="l2")
