import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import asyndbt_jax as adbt


def test_rows_stay_on_simplex():
    params = adbt.init_selection(5, 8, 2, 4)
    opt = adbt.simplex_adam(0.3)
    state = opt.init(params)
    for i in range(20):
        grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(i), p.shape) * 10, params)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        for leaf in params:
            assert float(leaf.min()) >= 0
            np.testing.assert_allclose(leaf.sum(-1), 1.0, atol=1e-5)


def test_matches_hand_written_chain():
    """clip to global norm 3, Adam, project: checked against NumPy for two steps."""
    p = np.array([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])
    grads = [np.array([[4.0, -1.0, 2.0], [0.0, 3.0, -3.0]]), np.array([[0.1, 0.2, -0.3], [0.5, 0.5, 0.0]])]
    lr, b1, b2, eps = 0.05, 0.9, 0.999, 1e-8
    m, v, ref = np.zeros_like(p), np.zeros_like(p), p.copy()
    for t, g in enumerate(grads, 1):
        norm = np.linalg.norm(g)
        g = g * min(1.0, 3.0 / norm)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
        step = lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        from numpy_reference import project_simplex

        ref = project_simplex(ref - step)
    opt = adbt.simplex_adam(lr)
    params = jnp.asarray(p, jnp.float32)
    state = opt.init(params)
    for g in grads:
        updates, state = opt.update(jnp.asarray(g, jnp.float32), state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params, ref, atol=1e-5)


def test_vmap_over_workers_equals_per_worker_loop():
    workers = 4
    params = adbt.SelectionVariables(
        jax.random.dirichlet(jax.random.key(0), jnp.ones(6), (workers, 3)),
        jax.random.dirichlet(jax.random.key(1), jnp.ones(5), (workers, 2)),
    )
    grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(2), x.shape) * 5, params)
    opt = adbt.simplex_adam(0.1)
    state = jax.vmap(opt.init)(params)
    updates, _ = jax.jit(jax.vmap(opt.update))(grads, state, params)
    for w in range(workers):
        one = jax.tree.map(lambda x: x[w], params)
        u_w, _ = opt.update(jax.tree.map(lambda x: x[w], grads), opt.init(one), one)
        for a, b in zip(u_w, updates):
            np.testing.assert_allclose(a, b[w], atol=1e-6)


def test_finds_planted_optimum_with_black_box_gradients():
    """End to end at the core level: sample → losses → policy gradient → projected Adam.

    Hidden per-row costs c[i, j] plus noise; the optimum picks argmin_j c[i, j] in every
    row, and the argmax decoding must recover it."""
    rows, n, num = 6, 12, 16
    best = np.asarray(jax.random.randint(jax.random.key(0), (rows,), 0, n))
    c = jax.random.uniform(jax.random.key(1), (rows, n), minval=0.3, maxval=1.0)
    c = c.at[jnp.arange(rows), best].set(0.0)  # planted optimum with a margin of at least 0.3
    opt = adbt.simplex_adam(0.05)
    probs = jnp.full((rows, n), 1.0 / n)
    state = opt.init(probs)

    @jax.jit
    def step(probs, state, key):
        k1, k2 = jax.random.split(key)
        samples = adbt.sample_categorical(k1, probs, num)
        losses = jnp.take_along_axis(c[None], samples[..., None], -1)[..., 0].sum(-1)
        losses = losses + 0.3 * jax.random.normal(k2, losses.shape)
        grads = adbt.policy_gradient(probs, samples, losses)
        updates, state = opt.update(grads, state, probs)
        return optax.apply_updates(probs, updates), state

    for key in jax.random.split(jax.random.key(2), 300):
        probs, state = step(probs, state, key)
    np.testing.assert_array_equal(np.asarray(jnp.argmax(probs, -1)), best)


def test_bad_input():
    with pytest.raises(ValueError, match="learning_rate"):
        adbt.simplex_adam(float("nan"))
    with pytest.raises(ValueError, match="max_norm"):
        adbt.simplex_adam(0.1, max_norm=0.0)
    opt = adbt.project_onto_simplex()
    with pytest.raises(ValueError, match="needs params"):
        opt.update(jnp.zeros(3), opt.init(None))
