import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from asyndbt_jax import project_simplex, project_simplex_bisection
from numpy_reference import bdpl_bisection
from numpy_reference import project_simplex as np_project

jit_project = jax.jit(project_simplex)
jit_project_sort = jax.jit(lambda x: project_simplex(x, method="sort"))
jit_bisection = jax.jit(project_simplex_bisection)

# A few fixed shapes (each compiles once) rather than every shape hypothesis can invent.
SHAPES = [(1, 1), (1, 2), (3, 3), (2, 7), (4, 40), (1, 100)]
rows_strategy = hnp.arrays(
    np.float32,
    st.sampled_from(SHAPES),
    elements=st.floats(-1e3, 1e3, width=32, allow_nan=False, allow_infinity=False),
)


def assert_on_simplex(p, atol=1e-5):
    p = np.asarray(p)
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=atol)


def assert_kkt(v, p, atol=1e-4):
    """x = max(v - theta, 0): positive entries share v - x = theta, zero entries have v <= theta."""
    v, p = np.asarray(v, np.float64), np.asarray(p, np.float64)
    for idx in np.ndindex(v.shape[:-1]):
        row, x = v[idx], p[idx]
        pos = x > 1e-6
        theta = (row[pos] - x[pos]).mean()
        scale = 1 + np.abs(row).max() * 1e-6
        np.testing.assert_allclose(row[pos] - x[pos], theta, atol=atol * scale)
        assert np.all(row[~pos] <= theta + atol * scale)


@given(rows_strategy, st.sampled_from(["michelot", "sort"]))
def test_matches_numpy_reference(v, method):
    p = (jit_project if method == "michelot" else jit_project_sort)(v)
    np.testing.assert_allclose(p, np_project(v), atol=2e-4)
    assert_on_simplex(p)
    assert_kkt(v, p)


@given(rows_strategy)
def test_idempotent(v):
    p = jit_project(v)
    np.testing.assert_allclose(jit_project(p), p, atol=1e-6)


@given(rows_strategy, st.integers(0, 2**31 - 1))
def test_is_the_closest_simplex_point(v, seed):
    p = np.asarray(jit_project(v), np.float64)
    rng = np.random.default_rng(seed)
    y = rng.dirichlet(np.ones(v.shape[-1]), size=v.shape[:-1])
    d_proj = np.linalg.norm(p - v, axis=-1)
    d_other = np.linalg.norm(y - v, axis=-1)
    assert np.all(d_proj <= d_other + 1e-3 * (1 + np.abs(v).max(-1)))


def test_agrees_with_optax_on_ordinary_rows():
    v = jax.random.normal(jax.random.key(0), (50, 20)) * 3
    ours = project_simplex(v)
    theirs = jax.vmap(optax.projections.projection_simplex)(v)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize(
    "row, expected",
    [
        ([0.3, 0.3, 0.3], [1 / 3, 1 / 3, 1 / 3]),  # ties
        ([5.0, 5.0, -5.0], [0.5, 0.5, 0.0]),
        ([1e30, 0.0], [1.0, 0.0]),  # huge values
        ([1e30, 1e30], [0.5, 0.5]),
        ([3e38, -3e38, -3e38], [1.0, 0.0, 0.0]),  # near float32 max
        ([3e38, 3e38], [0.5, 0.5]),  # an unshifted cumsum overflows here (optax gives [1, 1])
        ([-7.0, -9.0], [1.0, 0.0]),  # all negative
        ([-1e30, -1e30, -1e30, -1e30], [0.25] * 4),
        ([0.0, 1.0, 0.0], [0.0, 1.0, 0.0]),  # one-hot is a fixed point
        ([42.0], [1.0]),  # length 1
        ([-jnp.inf, 2.0, 2.5], [0.0, 0.25, 0.75]),  # -inf means probability 0
        ([1e-30, 0.0, -1e-30], [1 / 3, 1 / 3, 1 / 3]),
    ],
)
@pytest.mark.parametrize("method", ["michelot", "sort"])
def test_adversarial_rows(row, expected, method):
    p = project_simplex(jnp.asarray(row, jnp.float32), method=method)
    np.testing.assert_allclose(p, expected, atol=1e-6)
    assert_on_simplex(p)


def test_michelot_worst_case_rows():
    """Geometric rows make Michelot drop one support element per round; still exact."""
    v = np.stack([0.5 ** np.arange(40), -np.arange(40.0) ** 2 / 100, np.linspace(1, 0, 40)]).astype(np.float32)
    np.testing.assert_allclose(project_simplex(v), np_project(v), atol=1e-6)
    np.testing.assert_allclose(project_simplex(v), project_simplex(v, method="sort"), atol=1e-6)


def test_optax_fails_where_we_do_not():
    """Documents why we do not reuse optax's projection (see simplex.py): its cumsum overflows."""
    v = jnp.array([3e38, 3e38], jnp.float32)
    assert float(optax.projections.projection_simplex(v).sum()) != pytest.approx(1.0)
    assert float(project_simplex(v).sum()) == pytest.approx(1.0)


def test_jit_vmap_leading_axes_and_dtype():
    v = jax.random.normal(jax.random.key(1), (3, 4, 5, 7))
    eager = project_simplex(v)
    np.testing.assert_allclose(jax.jit(project_simplex)(v), eager, atol=1e-7)
    np.testing.assert_allclose(jax.vmap(jax.vmap(project_simplex))(v), eager, atol=1e-7)
    assert eager.shape == v.shape and eager.dtype == jnp.float32
    assert project_simplex(np.array([[1, 2, 3]])).dtype == jnp.float32  # ints become floats


def test_gradient_is_finite_and_tangent():
    v = jax.random.normal(jax.random.key(2), (6,))
    g = jax.grad(lambda x: jnp.sum(project_simplex(x) * jnp.arange(6.0)))(v)
    assert np.all(np.isfinite(g))
    assert abs(float(g.sum())) < 1e-5  # moving along (1, ..., 1) does not change the projection


@pytest.mark.parametrize(
    "bad, match",
    [
        (jnp.array([0.1, jnp.nan]), "NaN or \\+inf"),
        (jnp.array([0.1, jnp.inf]), "NaN or \\+inf"),
        (jnp.array([-jnp.inf, -jnp.inf]), "entirely -inf"),
        (jnp.array(3.0), "at least 1 dimension"),
        (jnp.zeros((2, 0)), "empty last axis"),
        (np.array(["a", "b"]), "x must"),
    ],
)
def test_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        project_simplex(bad)
    with pytest.raises(ValueError, match="method"):
        project_simplex(jnp.ones(3), method="bisection")


@given(rows_strategy)
def test_bisection_transcribes_bdpl(v):
    ours = np.asarray(jit_bisection(v))
    ref = np.stack([bdpl_bisection(r) for r in np.asarray(v, np.float64).reshape(-1, v.shape[-1])])
    np.testing.assert_allclose(ours.reshape(ref.shape), ref, atol=5e-3)


def test_bisection_is_only_approximate():
    v = jax.random.uniform(jax.random.key(3), (200, 100)) * 0.05 + jnp.eye(200, 100) * 0.5
    exact, approx = project_simplex(v), project_simplex_bisection(v)
    err = jnp.abs(approx.sum(-1) - 1)
    assert float(err.max()) < 2e-3  # within BDPL's tolerance ...
    assert float(err.max()) > 1e-5  # ... but rows are off the simplex, where the exact projection's are not
    assert float(jnp.abs(exact.sum(-1) - 1).max()) < 1e-5
    assert jax.jit(project_simplex_bisection)(v).shape == v.shape


@pytest.mark.parametrize("method", ["michelot", "sort"])
def test_jacobian_matches_finite_differences(method):
    v = jnp.array([0.9, 0.5, 0.45, -0.3, 0.1], jnp.float64 if jax.config.x64_enabled else jnp.float32)
    jac = jax.jacrev(lambda x: project_simplex(x, method=method))(v)
    # On the support S: d p / d x = I - 11ᵀ/|S|; off the support: 0.
    p = np.asarray(project_simplex(v))
    support = p > 0
    expected = np.where(np.outer(support, support), np.eye(5) - 1.0 / support.sum(), 0.0)
    np.testing.assert_allclose(jac, expected, atol=1e-5)
    # central differences of the projection itself (piecewise linear: exact away from kinks)
    h = 1e-3
    columns = [(np.asarray(project_simplex(v.at[j].add(h), method=method)) - np.asarray(project_simplex(v.at[j].add(-h), method=method)))
               / (2 * h) for j in range(5)]
    np.testing.assert_allclose(np.stack(columns, axis=1), np.asarray(jac), atol=2e-3)
