import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import asyndbt_jax as adbt
from numpy_reference import policy_gradient as np_policy_gradient

jit_pg = jax.jit(adbt.policy_gradient, static_argnames="variant")


def _random_problem(seed, rows=3, n=5, num=6, zeros=False):
    key = jax.random.key(seed)
    k1, k2, k3 = jax.random.split(key, 3)
    probs = jax.random.dirichlet(k1, jnp.ones(n), (rows,))
    if zeros:
        probs = adbt.project_simplex(probs - 0.15)  # some exact zeros, as after a projection
    samples = adbt.sample_categorical(k2, probs, num)
    losses = jax.random.normal(k3, (num,))
    return probs, samples, losses


@given(st.integers(0, 10_000), st.sampled_from(["exact", "negative"]), st.booleans())
def test_matches_numpy_reference(seed, variant, zeros):
    probs, samples, losses = _random_problem(seed, zeros=zeros)
    ours = jit_pg(probs, samples, losses, variant=variant)
    ref = np_policy_gradient(np.asarray(probs), np.asarray(samples), np.asarray(losses, np.float64), variant)
    # float32 rounding (e.g. of Σ_k w_k ≈ 0) is amplified by 1/p: compare g·p, then g itself loosely.
    p = np.asarray(probs, np.float64)
    np.testing.assert_allclose(np.asarray(ours) * p, ref * p, atol=1e-5)
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-3 / max(p[p > 0].min(), 1e-3))


def test_negative_variant_is_twice_exact():
    probs, samples, losses = _random_problem(9, rows=4, n=7, num=20)
    exact = adbt.policy_gradient(probs, samples, losses)
    negative = adbt.policy_gradient(probs, samples, losses, variant="negative")
    np.testing.assert_allclose(negative, 2 * exact, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("variant, factor", [("exact", 1.0), ("negative", 2.0)])
def test_unbiased_on_linear_objective(variant, factor):
    """L(j) = Σ_i c[i, j_i]  ⇒  E[L | j_i = n] − E[L] = c[i, n] − <p_i, c_i>; E[g] = factor·that."""
    rows, n, num, trials = 3, 4, 5, 40_000
    key = jax.random.key(11)
    probs = jnp.array([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]])
    c = jax.random.normal(jax.random.key(12), (rows, n))
    samples = adbt.sample_categorical(key, jnp.broadcast_to(probs, (trials, rows, n)), num)  # [T, I, rows]
    losses = jnp.sum(jnp.take_along_axis(c[None, None], samples[..., None], -1)[..., 0], -1)  # [T, I]
    g = np.asarray(jit_pg(jnp.broadcast_to(probs, (trials, rows, n)), samples, losses, variant=variant), np.float64)
    mean, se = g.mean(0), g.std(0) / np.sqrt(trials)
    truth = factor * (np.asarray(c) - np.sum(np.asarray(probs) * np.asarray(c), -1, keepdims=True))
    assert np.all(np.abs(mean - truth) < 5 * se + 1e-3), (mean, truth, se)
    # In the simplex tangent space (what the projection sees) this is the true gradient.
    tangent = mean - mean.mean(-1, keepdims=True)
    true_tangent = factor * (np.asarray(c) - np.asarray(c).mean(-1, keepdims=True))
    np.testing.assert_allclose(tangent, true_tangent, atol=float(10 * se.max()))


def test_batched_equals_vmap_and_selection_gradient():
    s = adbt.SelectionVariables(
        jax.random.dirichlet(jax.random.key(0), jnp.ones(10), (4, 3)),
        jax.random.dirichlet(jax.random.key(1), jnp.ones(6), (4, 2)),
    )
    cfg = adbt.sample_configurations(jax.random.key(2), s, 8)
    losses = jax.random.uniform(jax.random.key(3), (4, 8))
    batched = adbt.selection_gradient(s, cfg, losses)
    vmapped = jax.vmap(adbt.selection_gradient)(s, cfg, losses)
    for a, b in zip(batched, vmapped):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    single = adbt.policy_gradient(s.demo_probs[1], cfg.demos[1], losses[1])
    np.testing.assert_allclose(batched.demo_probs[1], single, rtol=1e-6)


def test_constant_losses_give_zero_gradient():
    probs, samples, _ = _random_problem(3)
    g = adbt.policy_gradient(probs, samples, jnp.full((6,), 2.5))
    np.testing.assert_allclose(g, 0.0, atol=1e-6)


@pytest.mark.parametrize(
    "shapes, kwargs, match",
    [
        (((3, 5), (1, 3), (1,)), {}, "I >= 2"),
        (((3, 5), (6, 4), (6,)), {}, "samples must be"),
        (((3, 5), (6, 3), (5,)), {}, "losses must be"),
        (((3, 5), (6, 3), (6,)), {"variant": "bdpl"}, "variant"),
    ],
)
def test_bad_input(shapes, kwargs, match):
    p, s, losses = shapes
    with pytest.raises(ValueError, match=match):
        adbt.policy_gradient(jnp.ones(p) / p[-1], jnp.zeros(s, jnp.int32), jnp.zeros(losses), **kwargs)
