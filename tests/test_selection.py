import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import asyndbt_jax as adbt


def test_init_shapes_and_uniform():
    s = adbt.init_selection(75, 100, 2, 50, batch_shape=(3,))
    assert s.fragment_probs.shape == (3, 75, 100) and s.demo_probs.shape == (3, 2, 50)
    np.testing.assert_allclose(s.fragment_probs, 0.01)
    np.testing.assert_allclose(s.demo_probs, 0.02)
    assert adbt.init_selection(0, 5, 0, 5).fragment_probs.shape == (0, 5)


@pytest.mark.parametrize(
    "args, match",
    [
        ((3, 0, 2, 5), "vocab_size"),
        ((3, 5, 2, 0), "num_candidates"),
        ((-1, 5, 2, 5), "num_fragment_words"),
        ((3, 5, 2.5, 5), "num_classes"),
    ],
)
def test_init_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        adbt.init_selection(*args)


@pytest.mark.parametrize(
    "probs",
    [
        [0.5, 0.5],
        [0.1, 0.2, 0.3, 0.4],
        [0.0, 0.7, 0.0, 0.3],  # zeros are never drawn
        [0.9, 0.05, 0.05],
        [0.01] * 100,
    ],
)
def test_sampling_frequencies_chi_square(probs):
    probs = np.asarray(probs, np.float32)
    n_draws = 20_000
    draws = adbt.sample_categorical(jax.random.key(123), jnp.asarray(probs)[None], n_draws)[:, 0]
    counts = np.bincount(np.asarray(draws), minlength=len(probs))
    assert counts[probs == 0].sum() == 0
    support = probs > 0
    expected = probs[support].astype(np.float64) / probs[support].astype(np.float64).sum() * n_draws
    result = stats.chisquare(counts[support], expected)
    assert result.pvalue > 1e-3, (counts, expected)


def test_sampling_matches_jax_categorical_in_distribution():
    p = jax.random.dirichlet(jax.random.key(0), jnp.ones(8), (1,))
    ours = adbt.sample_categorical(jax.random.key(1), p, 30_000)[:, 0]
    ref = jax.random.categorical(jax.random.key(2), jnp.log(p[0]), shape=(30_000,))
    table = np.stack([np.bincount(np.asarray(ours), minlength=8), np.bincount(np.asarray(ref), minlength=8)])
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_sampling_shapes_batch_jit_vmap():
    s = adbt.init_selection(4, 9, 2, 5, batch_shape=(6,))
    key = jax.random.key(7)
    cfg = adbt.sample_configurations(key, s, 11)
    assert cfg.fragment_words.shape == (6, 11, 4) and cfg.demos.shape == (6, 11, 2)
    assert cfg.fragment_words.dtype == jnp.int32
    jitted = jax.jit(adbt.sample_configurations, static_argnums=2)(key, s, 11)
    np.testing.assert_array_equal(jitted.fragment_words, cfg.fragment_words)
    keys = jax.random.split(key, 6)
    per_worker = jax.vmap(lambda k, sel: adbt.sample_configurations(k, sel, 11))(keys, s)
    assert per_worker.demos.shape == (6, 11, 2)
    assert int(per_worker.fragment_words.max()) < 9 and int(per_worker.fragment_words.min()) >= 0


def test_rows_are_independent():
    """Two rows sampled together are independent: the joint frequencies factorise."""
    p = jnp.array([[0.5, 0.5], [0.3, 0.7]])
    draws = np.asarray(adbt.sample_categorical(jax.random.key(5), p, 40_000))
    table = np.zeros((2, 2))
    np.add.at(table, (draws[:, 0], draws[:, 1]), 1)
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_log_prob_matches_numpy():
    key = jax.random.key(3)
    s = adbt.SelectionVariables(
        jax.random.dirichlet(key, jnp.ones(6), (2, 3)), jax.random.dirichlet(key, jnp.ones(4), (2, 2))
    )
    cfg = adbt.sample_configurations(jax.random.key(4), s, 5)
    lp = np.asarray(adbt.log_prob(s, cfg))
    fp, dp = np.asarray(s.fragment_probs, np.float64), np.asarray(s.demo_probs, np.float64)
    fw, dm = np.asarray(cfg.fragment_words), np.asarray(cfg.demos)
    for w in range(2):
        for k in range(5):
            ref = sum(np.log(fp[w, i, fw[w, k, i]]) for i in range(3)) + sum(
                np.log(dp[w, u, dm[w, k, u]]) for u in range(2)
            )
            assert lp[w, k] == pytest.approx(ref, rel=1e-5)


def test_decode_is_argmax():
    fp = jnp.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    dp = jnp.array([[0.0, 0.0, 1.0]])
    cfg = adbt.decode(adbt.SelectionVariables(fp, dp))
    np.testing.assert_array_equal(cfg.fragment_words, [1, 0])
    np.testing.assert_array_equal(cfg.demos, [2])


@pytest.mark.parametrize(
    "probs, n, match",
    [
        (jnp.array([[0.5, jnp.nan]]), 3, "non-finite"),
        (jnp.array([[1.5, -0.5]]), 3, "negative"),
        (jnp.array([[0.5, 0.1]]), 3, "sum to 1"),
        (jnp.zeros((2, 0)), 3, "empty"),
        (jnp.array([0.5, 0.5]), 3, "at least 2"),
        (jnp.array([[0.5, 0.5]]), 0, "num_samples"),
    ],
)
def test_sampling_bad_input(probs, n, match):
    with pytest.raises(ValueError, match=match):
        adbt.sample_categorical(jax.random.key(0), probs, n)


def test_log_prob_shape_mismatch():
    with pytest.raises(ValueError, match="do not match"):
        adbt.categorical_log_prob(jnp.ones((3, 4)) / 4, jnp.zeros((5, 2), jnp.int32))
