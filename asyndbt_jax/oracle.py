"""A planted black box with a known optimum, for testing and simulating AsynDBT at scale.

The oracle plays the LLM. For a query of type ``t`` (one of ``T`` query types) and a
prompt configuration (demonstration ``k_u`` for every class ``u``, fragment word ``j_i``
at every position ``i``) it produces label logits whose true-label entry is

    margin = bias
           + (1/U) Σ_u D[u, k_u, t]                              demonstration utility
           + (1/M) Σ_i ( W[i, j_i, t] + (1/U) Σ_u C[i, j_i, style(u, k_u)] )
           − difficulty(query)

and 0 for every other label. ``C`` couples the two levels: every demonstration candidate
has a hidden *style*, and the value of a fragment word depends on the styles of the
chosen demonstrations, so the best fragment depends on the demonstrations (the problem is
genuinely bilevel). Index ``-1`` means "no demonstration" (utility 0, style ``S``, the
"none" style, whose coupling is 0) or "no word" (utility 0).

Queries carry a type, a clean label, an observed label (the clean one flipped with
probability ``label_noise``), a difficulty ``~ N(0, difficulty_scale)`` and a flag for a
label-flipped demonstration pool (the poisoned-demonstrations attack: the demonstration
utility changes sign). Workers are
non-IID: worker ``r`` draws query types from its own mixture ``π_r ~ Dirichlet(α·1)``;
the test set is drawn from the uniform mixture.

Because the margin is additive over positions once the demonstration styles are fixed,
the configuration with the highest expected margin on the test mixture is computed
exactly (enumerating the ``S^U`` style combinations), and its test accuracy is reported as
``optimum_accuracy``.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .feedback import Feedback
from .selection import Configuration


class PlantedOracle(NamedTuple):
    """Hidden parameters of the planted black box (a pytree of arrays).

    Attributes:
      demo_utility: ``[U, V, T]`` utility ``D`` of every demonstration candidate per query type.
      demo_style: int32 ``[U, V]`` hidden style of every candidate, in ``[0, S)``.
      word_utility: ``[M, N, T]`` utility ``W`` of every word at every position per query type.
      interaction: ``[M, N, S + 1]`` extra utility ``C`` of a word given a demonstration
        style (the last style is "no demonstration").
      bias: scalar added to every margin.
    """

    demo_utility: jax.Array
    demo_style: jax.Array
    word_utility: jax.Array
    interaction: jax.Array
    bias: jax.Array


class Queries(NamedTuple):
    """A batch of planted queries; leaves share leading axes (``[R, B]`` per worker)."""

    query_type: jax.Array
    label: jax.Array  # observed (possibly noisy) label
    clean_label: jax.Array
    difficulty: jax.Array
    # True where the worker scoring this query holds a label-flipped demonstration pool
    # (the poisoned-demonstrations attack): every shown demonstration carries a wrong answer,
    # so its utility flips sign. All False in a clean task.
    flipped_demos: jax.Array


class PlantedTask(NamedTuple):
    """An oracle with per-worker private data and a shared test set.

    Attributes:
      oracle: the hidden parameters.
      train: ``Queries [R, n_train]`` (lower level: training loss).
      validation: ``Queries [R, n_validation]`` (upper level: validation loss).
      test: ``Queries [n_test]``.
      worker_mixture: ``[R, T]`` query-type mixture of every worker.
      optimum: the planted optimal ``Configuration`` (``fragment_words [M]``, ``demos [U]``).
      optimum_accuracy: its accuracy on ``test``.
    """

    oracle: PlantedOracle
    train: Queries
    validation: Queries
    test: Queries
    worker_mixture: jax.Array
    optimum: Configuration
    optimum_accuracy: float


def oracle_logits(oracle: PlantedOracle, config: Configuration, queries: Queries) -> jax.Array:
    """Label logits ``[..., I, B, U]`` for ``I`` configurations on ``B`` queries.

    Args:
      oracle: hidden parameters.
      config: ``demos [..., I, U]``, ``fragment_words [..., I, M]`` (``-1`` = none).
      queries: ``Queries`` with leaves ``[..., B]``.
    """
    num_classes, _, num_types = oracle.demo_utility.shape
    num_words = oracle.word_utility.shape[0]
    none_style = oracle.interaction.shape[-1] - 1
    demos, words = config.demos, config.fragment_words
    class_index = jnp.arange(num_classes)
    has_demo = demos >= 0
    safe_demos = jnp.where(has_demo, demos, 0)
    d = oracle.demo_utility[class_index, safe_demos]  # [..., I, U, T]
    demo_part = jnp.sum(jnp.where(has_demo[..., None], d, 0.0), axis=-2) / num_classes  # [..., I, T]
    style = jnp.where(has_demo, oracle.demo_style[class_index, safe_demos], none_style)  # [..., I, U]

    position = jnp.arange(num_words)
    has_word = words >= 0
    safe_words = jnp.where(has_word, words, 0)
    w = jnp.where(has_word[..., None], oracle.word_utility[position, safe_words], 0.0)  # [..., I, M, T]
    c = jnp.where(has_word[..., None], oracle.interaction[position, safe_words], 0.0)  # [..., I, M, S+1]
    c_per_style = jnp.sum(c, axis=-2)  # [..., I, S+1]
    coupling = jnp.mean(jnp.take_along_axis(c_per_style, style, axis=-1), axis=-1)  # [..., I]
    word_part = (jnp.sum(w, axis=-2) + coupling[..., None]) / max(num_words, 1)  # [..., I, T]

    qtype = jnp.broadcast_to(queries.query_type[..., None, :], word_part.shape[:-1] + queries.query_type.shape[-1:])
    demo_q = jnp.take_along_axis(demo_part, qtype, axis=-1)  # [..., I, B]
    demo_q = jnp.where(queries.flipped_demos[..., None, :], -demo_q, demo_q)
    margin = oracle.bias + demo_q + jnp.take_along_axis(word_part, qtype, axis=-1) - queries.difficulty[..., None, :]
    true_label = jnp.broadcast_to(queries.clean_label[..., None, :], margin.shape)
    return jnp.where(jax.nn.one_hot(true_label, num_classes, dtype=bool), margin[..., None], 0.0)


def oracle_feedback(oracle: PlantedOracle, config: Configuration, queries: Queries, active=None) -> Feedback:
    """The feedback interface for the planted oracle: ``losses``/``correct`` ``[..., I, B]``.
    ``active`` is ignored: computing every worker costs next to nothing here."""
    logits = oracle_logits(oracle, config, queries)
    label = jnp.broadcast_to(queries.label[..., None, :], logits.shape[:-1])
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    losses = -jnp.take_along_axis(log_probs, label[..., None], axis=-1)[..., 0]
    correct = jnp.argmax(logits, axis=-1) == label
    return Feedback(losses=losses, correct=correct)


def accuracy(oracle: PlantedOracle, config: Configuration, queries: Queries) -> jax.Array:
    """Accuracy of decoded configurations (``demos [..., U]``, ``fragment_words [..., M]``) on ``queries [B]``."""
    one = Configuration(fragment_words=config.fragment_words[..., None, :], demos=config.demos[..., None, :])
    batch = config.demos.shape[:-1]
    q = jax.tree.map(lambda x: jnp.broadcast_to(x, batch + x.shape), queries)
    return jnp.mean(oracle_feedback(oracle, one, q).correct[..., 0, :], axis=-1)


def planted_optimum(oracle: PlantedOracle, type_mixture) -> Configuration:
    """The configuration with the highest expected margin under ``type_mixture [T]`` (exact).

    Enumerates the ``S^U`` style combinations; for each, the best demonstration per class
    among candidates of that style and the best word per position are independent.
    """
    demo_u = np.asarray(oracle.demo_utility, np.float64) @ np.asarray(type_mixture, np.float64)  # [U, V]
    word_u = np.asarray(oracle.word_utility, np.float64) @ np.asarray(type_mixture, np.float64)  # [M, N]
    inter = np.asarray(oracle.interaction, np.float64)  # [M, N, S+1]
    style = np.asarray(oracle.demo_style)
    num_classes, num_cand = demo_u.shape
    num_styles = inter.shape[-1] - 1
    best_value, best = -np.inf, None
    for combo in itertools.product(range(num_styles), repeat=num_classes):
        demos = []
        for u, s in enumerate(combo):
            mask = style[u] == s
            if not mask.any():
                break
            demos.append(int(np.argmax(np.where(mask, demo_u[u], -np.inf))))
        else:
            words_score = word_u + inter[:, :, list(combo)].mean(-1)  # [M, N]
            words = np.argmax(words_score, axis=-1)
            value = demo_u[np.arange(num_classes), demos].mean() + words_score.max(-1).mean()
            if value > best_value:
                best_value, best = value, (words, demos)
    words, demos = best
    return Configuration(fragment_words=jnp.asarray(words, jnp.int32), demos=jnp.asarray(demos, jnp.int32))


def restricted_optimum(oracle: PlantedOracle, type_mixture, *, use_fragment: bool, use_demos: bool) -> Configuration:
    """The best configuration when only one level is tuned (the other is absent, index -1).

    ``use_fragment and use_demos`` is :func:`planted_optimum`. Fragment only: the best word
    per position with no demonstrations (style "none", no coupling). Demonstrations only:
    the best candidate per class with no fragment.
    """
    num_words = oracle.word_utility.shape[0]
    num_classes = oracle.demo_utility.shape[0]
    mix = np.asarray(type_mixture, np.float64)
    if use_fragment and use_demos:
        return planted_optimum(oracle, type_mixture)
    no_words = jnp.full((num_words,), -1, jnp.int32)
    no_demos = jnp.full((num_classes,), -1, jnp.int32)
    if use_fragment:
        score = np.asarray(oracle.word_utility, np.float64) @ mix + np.asarray(oracle.interaction, np.float64)[:, :, -1]
        return Configuration(jnp.asarray(score.argmax(-1), jnp.int32), no_demos)
    if use_demos:
        score = np.asarray(oracle.demo_utility, np.float64) @ mix
        return Configuration(no_words, jnp.asarray(score.argmax(-1), jnp.int32))
    return Configuration(no_words, no_demos)


def _queries(key, mixture, size, num_classes, label_noise, difficulty_scale) -> Queries:
    k_type, k_label, k_flip, k_other, k_diff = jax.random.split(key, 5)
    mixture = jnp.asarray(mixture)
    qtype = jax.random.categorical(k_type, jnp.log(mixture)[..., None, :], shape=mixture.shape[:-1] + (size,))
    clean = jax.random.randint(k_label, qtype.shape, 0, num_classes)
    flip = jax.random.uniform(k_flip, qtype.shape) < label_noise
    other = (clean + jax.random.randint(k_other, qtype.shape, 1, max(num_classes, 2))) % num_classes
    label = jnp.where(flip & (num_classes > 1), other, clean)
    difficulty = difficulty_scale * jax.random.normal(k_diff, qtype.shape)
    return Queries(
        qtype.astype(jnp.int32), label.astype(jnp.int32), clean.astype(jnp.int32), difficulty, jnp.zeros(qtype.shape, bool)
    )


def make_planted_task(
    key: jax.Array,
    *,
    num_workers: int,
    num_fragment_words: int = 75,
    vocab_size: int = 100,
    num_classes: int = 2,
    num_candidates: int = 50,
    num_types: int = 4,
    num_styles: int = 4,
    dirichlet_alpha: float = 1.0,
    label_noise: float = 0.05,
    difficulty_scale: float = 1.0,
    demo_scale: float = 1.0,
    word_scale: float = 0.3,
    interaction_scale: float = 1.0,
    bias: float = 0.25,
    num_train: int = 20,
    num_validation: int = 20,
    num_test: int = 2000,
) -> PlantedTask:
    """Draw a planted task: hidden utilities, per-worker non-IID data, a test set, the optimum.

    Defaults follow the paper's shapes (M=75, N=100, U=2, V=50; 10 train and 10
    validation examples per class per worker).

    Raises:
      ValueError: non-positive sizes, ``label_noise`` outside ``[0, 1)``, or
        ``dirichlet_alpha <= 0``.
    """
    sizes = dict(
        num_workers=num_workers,
        vocab_size=vocab_size,
        num_classes=num_classes,
        num_candidates=num_candidates,
        num_types=num_types,
        num_styles=num_styles,
        num_train=num_train,
        num_validation=num_validation,
        num_test=num_test,
    )
    for name, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(num_fragment_words, int) or num_fragment_words < 0:
        raise ValueError(f"num_fragment_words must be an integer >= 0, got {num_fragment_words!r}")
    if not 0 <= label_noise < 1:
        raise ValueError(f"label_noise must be in [0, 1), got {label_noise!r}")
    if not dirichlet_alpha > 0:
        raise ValueError(f"dirichlet_alpha must be positive, got {dirichlet_alpha!r}")
    keys = jax.random.split(key, 10)
    oracle = PlantedOracle(
        demo_utility=demo_scale * jax.random.normal(keys[0], (num_classes, num_candidates, num_types)),
        demo_style=jax.random.randint(keys[1], (num_classes, num_candidates), 0, num_styles).astype(jnp.int32),
        word_utility=word_scale * jax.random.normal(keys[2], (num_fragment_words, vocab_size, num_types)),
        # The "no demonstration" style (last) gives no coupling bonus: without demonstrations a
        # fragment is worth only its own utility W.
        interaction=jnp.concatenate(
            [
                interaction_scale * jax.random.normal(keys[3], (num_fragment_words, vocab_size, num_styles)),
                jnp.zeros((num_fragment_words, vocab_size, 1)),
            ],
            axis=-1,
        ),
        bias=jnp.asarray(bias, jnp.float32),
    )
    mixture = jax.random.dirichlet(keys[4], jnp.full((num_types,), dirichlet_alpha), (num_workers,))
    mixture = jnp.maximum(mixture, 1e-6)
    mixture = mixture / mixture.sum(-1, keepdims=True)
    noise = dict(num_classes=num_classes, label_noise=label_noise, difficulty_scale=difficulty_scale)
    train = _queries(keys[5], mixture, num_train, **noise)
    validation = _queries(keys[6], mixture, num_validation, **noise)
    uniform = jnp.full((num_types,), 1.0 / num_types)
    test = _queries(keys[7], uniform, num_test, **noise)
    optimum = planted_optimum(oracle, uniform)
    optimum_accuracy = float(accuracy(oracle, optimum, test))
    return PlantedTask(oracle, train, validation, test, mixture, optimum, optimum_accuracy)
