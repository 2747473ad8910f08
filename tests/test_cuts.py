import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asyndbt_jax.cuts import (
    add_cuts,
    cut_force,
    cut_values,
    demo_terms,
    drop_cuts,
    dual_ascent,
    gap,
    init_cuts,
    stack_worker_coef,
    value_cut,
)

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


def _numpy_values(cuts, p, z, q=None):
    """Cut values by plain loops: Σ_v (a_l^(v)·p^(v) + e_l^(v)·q^(v)) + b_l·z + c_l per row and slot."""
    a = [np.asarray(x, np.float64) for x in cuts.worker_coef]
    e = [np.asarray(x, np.float64) for x in cuts.demo_coef]
    b, c = np.asarray(cuts.consensus_coef, np.float64), np.asarray(cuts.offset, np.float64)
    p, z = np.asarray(p, np.float64), np.asarray(z, np.float64)
    H, Cap = c.shape
    out = np.zeros((H, Cap))
    for h in range(H):
        rows = range(M) if H == 1 else [h]
        for l in range(Cap):
            if not cuts.active[h, l]:
                continue
            total = c[h, l]
            for v in range(R):
                total += sum(a[l][v, i] @ p[v, i] for i in rows)
                if q is not None:
                    total += float(np.sum(e[l][v] * np.asarray(q, np.float64)[v]))
            total += sum(b[i, l] @ z[i] for i in rows)
            out[h, l] = total
    return out


def test_force_and_dual_ascent_match_numpy():
    p, z, fp, fz = _point(3)
    cuts, _ = add_cuts(init_cuts(M, C, R, N), p, z, fp, fz, 0.0)
    cuts = cuts._replace(duals=jnp.where(cuts.active, 0.7, 0.0))
    force = cut_force(cuts)
    a, b, lam = np.asarray(stack_worker_coef(cuts)), np.asarray(cuts.consensus_coef), np.asarray(cuts.duals)
    for v in range(R):
        for i in range(M):
            np.testing.assert_allclose(force.fragment[v, i], sum(lam[i, l] * a[v, i, l] for l in range(C)), atol=1e-6)
    np.testing.assert_allclose(force.consensus[1], sum(lam[1, l] * b[1, l] for l in range(C)), atol=1e-6)
    new = dual_ascent(cuts, fp, fz, eta_lambda=0.1, c1=0.5)
    vals = _numpy_values(cuts, fp, fz)
    np.testing.assert_allclose(cut_values(cuts, fp, fz), vals, atol=1e-5)
    expect = np.where(np.asarray(cuts.active), np.maximum(0, lam + 0.1 * (vals - 0.5 * lam)), 0)
    np.testing.assert_allclose(new.duals, expect, atol=1e-5)
    assert float(new.duals.min()) >= 0


U, V = 2, 3


def _value_cut_at(seed, h_per_worker, eps=0.05, cuts=None):
    k = jax.random.split(jax.random.key(seed), 6)
    p, z, _, _ = _point(seed)
    q = jax.random.dirichlet(k[0], jnp.ones(V), (R, U))
    coef = (jax.random.normal(k[1], (R, M, N)), jax.random.normal(k[2], (M, N)), jax.random.normal(k[3], (R, U, V)))
    cuts = init_cuts(M, C, R, N, demo_shape=(U, V), per_row=False) if cuts is None else cuts
    term = jnp.sum(coef[2] * q, axis=(1, 2))
    new, h, put = value_cut(cuts, p, z, coef, term, jnp.asarray(h_per_worker, jnp.float32), eps)
    return new, h, put, (p, z, q), coef


def test_value_cut_is_the_first_order_expansion_of_the_gap():
    """The cut's value anywhere is h + a·Δp + e·Δq + b·Δz − ε (a plain NumPy expansion), and
    the demonstration terms the workers report make up its q part."""
    eps = 0.05
    cuts, h, put, (p, z, q), (a, b, e) = _value_cut_at(5, [0.1, 0.2, 0.0, 0.3], eps)
    assert float(h) == pytest.approx(0.6) and cuts.active.shape == (1, C)
    np.testing.assert_array_equal(put, [True, False])
    p2, z2, _, _ = _point(6)
    q2 = jax.random.dirichlet(jax.random.key(9), jnp.ones(V), (R, U))
    f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
    expansion = 0.6 + np.sum(f64(a) * (f64(p2) - f64(p))) + np.sum(f64(e) * (f64(q2) - f64(q))) + np.sum(f64(b) * (f64(z2) - f64(z))) - eps
    ours = cut_values(cuts, p2, z2, demo_terms(cuts.demo_coef, q2))
    assert float(ours[0, 0]) == pytest.approx(expansion, rel=1e-4, abs=1e-4)
    assert float(_numpy_values(cuts, p2, z2, q2)[0, 0]) == pytest.approx(expansion, rel=1e-4, abs=1e-4)
    assert float(cut_values(cuts, p, z, demo_terms(cuts.demo_coef, q))[0, 0]) == pytest.approx(0.6 - eps, abs=1e-4)


def test_value_cut_forces_reach_the_demonstrations():
    cuts, _, _, _, (a, b, e) = _value_cut_at(7, [0.5, 0.5, 0.5, 0.5])
    cuts = cuts._replace(duals=jnp.where(cuts.active, 0.3, 0.0))
    force = cut_force(cuts)
    np.testing.assert_allclose(force.demos, 0.3 * np.asarray(e), atol=1e-6)
    np.testing.assert_allclose(force.fragment, 0.3 * np.asarray(a), atol=1e-6)
    np.testing.assert_allclose(force.consensus, 0.3 * np.asarray(b), atol=1e-6)


def test_value_cut_only_above_epsilon_and_bad_buffers():
    cuts, h, put, _, _ = _value_cut_at(8, [0.01, 0.0, 0.0, 0.0], eps=0.05)
    assert not bool(cuts.active.any()) and not bool(put.any())
    with pytest.raises(ValueError, match="one row"):
        _value_cut_at(8, [1.0] * R, cuts=init_cuts(M, C, R, N, demo_shape=(U, V)))
    p, z, fp, fz = _point(1)
    with pytest.raises(ValueError, match="per-row"):
        add_cuts(init_cuts(M, C, R, N, per_row=False), p, z, fp, fz, 0.0)


def test_bad_input():
    with pytest.raises(ValueError, match="capacity"):
        init_cuts(M, 0, R, N)
    p, z, fp, fz = _point(4)
    with pytest.raises(ValueError, match="norm"):
        gap(p, z, fp, fz, norm="l2")
