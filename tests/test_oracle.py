import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import asyndbt_jax as adbt
from asyndbt_jax.oracle import (
    Queries,
    accuracy,
    make_planted_task,
    restricted_optimum,
    oracle_feedback,
    oracle_logits,
    planted_optimum,
)


@pytest.fixture(scope="module")
def tiny():
    return make_planted_task(
        jax.random.key(0), num_workers=3, num_fragment_words=2, vocab_size=3, num_classes=2, num_candidates=4,
        num_types=3, num_styles=2, num_test=500,
    )


def numpy_margin(oracle, demos, words, qtype):
    """Loop transcription of the margin formula in oracle.py's docstring (difficulty excluded)."""
    D, W, C = (np.asarray(x, np.float64) for x in (oracle.demo_utility, oracle.word_utility, oracle.interaction))
    style = np.asarray(oracle.demo_style, np.int64)
    U, M, S = D.shape[0], W.shape[0], C.shape[-1] - 1
    styles = [style[u, k] if k >= 0 else S for u, k in enumerate(demos)]
    demo_part = sum(D[u, k, qtype] for u, k in enumerate(demos) if k >= 0) / U
    word_part = 0.0
    for i, j in enumerate(words):
        if j >= 0:
            word_part += W[i, j, qtype] + np.mean([C[i, j, s] for s in styles])
    return float(oracle.bias) + demo_part + word_part / M


def test_logits_match_numpy(tiny):
    rng = np.random.default_rng(0)
    demos = rng.integers(-1, 4, size=(5, 2))
    words = rng.integers(-1, 3, size=(5, 2))
    q = jax.tree.map(lambda x: x[0, :7], tiny.train)
    logits = np.asarray(oracle_logits(tiny.oracle, adbt.Configuration(jnp.asarray(words), jnp.asarray(demos)), q))
    for k in range(5):
        for b in range(7):
            m = numpy_margin(tiny.oracle, demos[k], words[k], int(q.query_type[b])) - float(q.difficulty[b])
            clean = int(q.clean_label[b])
            np.testing.assert_allclose(logits[k, b, clean], m, atol=1e-5)
            assert logits[k, b, 1 - clean] == 0


def test_planted_optimum_is_optimal_by_brute_force(tiny):
    mix = np.array([0.2, 0.5, 0.3])
    best = planted_optimum(tiny.oracle, mix)
    expected = lambda d, w: sum(mix[t] * numpy_margin(tiny.oracle, d, w, t) for t in range(3))  # noqa: E731
    values = {
        (d, w): expected(d, w)
        for d in itertools.product(range(4), repeat=2)
        for w in itertools.product(range(3), repeat=2)
    }
    top = max(values.values())
    got = expected(tuple(np.asarray(best.demos)), tuple(np.asarray(best.fragment_words)))
    assert got == pytest.approx(top, abs=1e-9)


def test_feedback_shapes_jit_and_loss(tiny):
    R, I = 3, 6
    sel = adbt.init_selection(2, 3, 2, 4, batch_shape=(R,))
    cfg = adbt.sample_configurations(jax.random.key(1), sel, I)
    fb = jax.jit(oracle_feedback)(tiny.oracle, cfg, tiny.train)
    assert fb.losses.shape == (R, I, tiny.train.label.shape[-1]) and fb.correct.dtype == jnp.bool_
    logits = oracle_logits(tiny.oracle, cfg, tiny.train)
    manual = -jax.nn.log_softmax(logits)[..., 0]
    label0 = tiny.train.label[:, None, :] == 0
    np.testing.assert_allclose(jnp.where(label0, fb.losses, 0), jnp.where(label0, manual, 0), atol=1e-5)


def test_default_task_is_bilevel_and_separates_methods():
    """Shaped like the paper's ablation: both levels > demonstrations only > fragment only > neither."""
    task = make_planted_task(jax.random.key(0), num_workers=4)
    uniform = jnp.full(4, 0.25)
    acc = {
        (f, d): float(accuracy(task.oracle, restricted_optimum(task.oracle, uniform, use_fragment=f, use_demos=d), task.test))
        for f in (True, False)
        for d in (True, False)
    }
    assert acc[True, True] == pytest.approx(task.optimum_accuracy)
    assert acc[True, True] > acc[False, True] + 0.05 > acc[True, False] + 0.05 > acc[False, False] + 0.05
    # The best fragment depends on the demonstrations (coupling through styles): compare the
    # best words given demonstrations of two different style combinations.
    style = np.asarray(task.oracle.demo_style)
    first = [int(np.flatnonzero(style[u] == 0)[0]) for u in range(2)]
    second = [int(np.flatnonzero(style[u] == 1)[0]) for u in range(2)]

    def best_words(demos):
        styles = [style[u, k] for u, k in enumerate(demos)]
        score = np.asarray(task.oracle.word_utility) @ np.asarray(uniform) + np.asarray(task.oracle.interaction)[
            :, :, styles
        ].mean(-1)
        return score.argmax(-1)

    assert np.mean(best_words(first) != best_words(second)) > 0.5


def test_restricted_optimum_is_optimal_by_brute_force(tiny):
    mix = np.array([0.2, 0.5, 0.3])
    best = restricted_optimum(tiny.oracle, mix, use_fragment=True, use_demos=False)
    expected = lambda w: sum(mix[t] * numpy_margin(tiny.oracle, (-1, -1), w, t) for t in range(3))  # noqa: E731
    top = max(expected(w) for w in itertools.product(range(3), repeat=2))
    assert expected(tuple(np.asarray(best.fragment_words))) == pytest.approx(top, abs=1e-9)
    assert np.all(np.asarray(best.demos) == -1)


def test_non_iid_workers_and_label_noise():
    skewed = make_planted_task(jax.random.key(1), num_workers=50, dirichlet_alpha=0.1, label_noise=0.2, num_train=200)
    assert float(jnp.mean(skewed.worker_mixture.max(-1))) > 0.8
    flips = float(jnp.mean(skewed.train.label != skewed.train.clean_label))
    assert 0.17 < flips < 0.23
    iid = make_planted_task(jax.random.key(1), num_workers=50, dirichlet_alpha=100.0)
    assert float(jnp.mean(iid.worker_mixture.max(-1))) < 0.4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_workers": 0}, "num_workers"),
        ({"num_workers": 2, "label_noise": 1.0}, "label_noise"),
        ({"num_workers": 2, "dirichlet_alpha": 0.0}, "dirichlet_alpha"),
        ({"num_workers": 2, "vocab_size": 0}, "vocab_size"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_planted_task(jax.random.key(0), **kwargs)


def test_queries_type_is_exported():
    assert Queries._fields == ("query_type", "label", "clean_label", "difficulty", "flipped_demos")


def test_flipped_demonstration_pool_flips_the_demonstration_utility():
    from asyndbt_jax.oracle import oracle_logits

    task = make_planted_task(jax.random.key(1), num_workers=2, num_fragment_words=3, vocab_size=5, num_candidates=4, num_test=50)
    q = task.test
    flipped = q._replace(flipped_demos=jnp.ones_like(q.flipped_demos))
    with_demos = adbt.Configuration(fragment_words=jnp.asarray([[0, 1, 2]]), demos=jnp.asarray([[1, 2]]))
    no_demos = adbt.Configuration(fragment_words=jnp.asarray([[0, 1, 2]]), demos=jnp.asarray([[-1, -1]]))
    none = adbt.Configuration(fragment_words=jnp.asarray([[-1, -1, -1]]), demos=jnp.asarray([[-1, -1]]))
    demos_only = adbt.Configuration(fragment_words=jnp.asarray([[-1, -1, -1]]), demos=jnp.asarray([[1, 2]]))
    # without demonstrations the flag changes nothing
    np.testing.assert_allclose(oracle_logits(task.oracle, no_demos, q), oracle_logits(task.oracle, no_demos, flipped))
    # with them, the demonstration part of the margin changes sign
    base = oracle_logits(task.oracle, none, q).sum(-1)
    demo = oracle_logits(task.oracle, demos_only, q).sum(-1) - base
    demo_flipped = oracle_logits(task.oracle, demos_only, flipped).sum(-1) - base
    np.testing.assert_allclose(demo_flipped, -demo, atol=1e-5)
    assert not np.allclose(oracle_logits(task.oracle, with_demos, q), oracle_logits(task.oracle, with_demos, flipped))
