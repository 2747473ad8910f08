"""Value checks on concrete inputs work inside ``jax.jit`` too: a constant that a jitted
function closes over is concrete, but ``jnp`` operations on it give tracers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asyndbt_jax import aggregators, project_simplex, sample_categorical


def test_kernels_take_closed_over_constants_under_jit():
    x = jnp.array([[0.3, 2.0, -1.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(jax.jit(lambda: project_simplex(x))(), project_simplex(x), atol=1e-7)
    probs = jnp.array([[0.2, 0.8], [1.0, 0.0]])
    draws = jax.jit(lambda key: sample_categorical(key, probs, 5))(jax.random.key(0))
    assert draws.shape == (5, 2) and (np.asarray(draws)[:, 1] == 0).all()  # [I, rows]
    updates = jnp.arange(6.0).reshape(3, 2)
    mask = jnp.array([True, False, True])
    np.testing.assert_allclose(jax.jit(lambda: aggregators.mean(updates, mask))(), [2.0, 3.0])


def test_bad_closed_over_constants_are_still_refused_before_tracing_fails():
    nan = jnp.array([[jnp.nan, 1.0]])
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        jax.jit(lambda: project_simplex(nan))()
    updates, nobody = jnp.ones((2, 3)), jnp.zeros(2, bool)
    with pytest.raises(ValueError, match="excludes every worker"):
        jax.jit(lambda: aggregators.mean(updates, nobody))()
