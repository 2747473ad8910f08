"""Relaxed selection variables: the categorical distributions AsynDBT tunes.

* Prompt fragment: ``M`` words, word ``i`` drawn from a vocabulary of ``N`` words,
  ``j_i ~ Cat(p_i)``; the rows ``p_i`` form ``fragment_probs [..., M, N]``.
* Demonstrations: one per class ``u``, drawn from that class's ``V`` candidates,
  ``k_u ~ Cat(q_u)``; the rows ``q_u`` form ``demo_probs [..., U, V]``.

Leading axes (``...``) are free: a worker axis ``[R, M, N]`` is the usual one. Sampling
uses inverse-CDF on uniforms (cumsum + searchsorted), which is much faster than
``jax.random.categorical``'s Gumbel-argmax over every class (measured in
``benchmarks/core_kernels.py``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._checks import check_probabilities, require_ndim, require_nonempty_last


class SelectionVariables(NamedTuple):
    """The relaxed variables of one worker (or a stack of workers on leading axes).

    Attributes:
      fragment_probs: ``[..., M, N]``, row ``i`` is the distribution ``p_i`` of fragment
        word ``i`` over the vocabulary.
      demo_probs: ``[..., U, V]``, row ``u`` is the distribution ``q_u`` over the
        demonstration candidates of class ``u``.
    """

    fragment_probs: jax.Array
    demo_probs: jax.Array


class Configuration(NamedTuple):
    """Sampled (or decoded) discrete prompt configurations.

    Attributes:
      fragment_words: int32 ``[..., I, M]`` vocabulary index of every fragment word
        (``[..., M]`` when decoded).
      demos: int32 ``[..., I, U]`` candidate index of the demonstration of every class
        (``[..., U]`` when decoded).
    """

    fragment_words: jax.Array
    demos: jax.Array


def init_selection(
    num_fragment_words: int,
    vocab_size: int,
    num_classes: int,
    num_candidates: int,
    *,
    batch_shape: tuple[int, ...] = (),
    dtype=jnp.float32,
) -> SelectionVariables:
    """Uniform selection variables.

    Args:
      num_fragment_words: ``M >= 0`` (0: no fragment is tuned).
      vocab_size: ``N >= 1`` fragment vocabulary size.
      num_classes: ``U >= 0`` (0: no demonstrations are tuned).
      num_candidates: ``V >= 1`` demonstration candidates per class.
      batch_shape: leading axes, e.g. ``(num_workers,)``.
      dtype: floating dtype of the probabilities.

    Returns:
      ``SelectionVariables`` with ``fragment_probs [*batch_shape, M, N] = 1/N`` and
      ``demo_probs [*batch_shape, U, V] = 1/V``.
    """
    for name, value, low in (
        ("num_fragment_words", num_fragment_words, 0),
        ("vocab_size", vocab_size, 1),
        ("num_classes", num_classes, 0),
        ("num_candidates", num_candidates, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            what = "an empty vocabulary/pool cannot be sampled" if low else "it counts rows"
            raise ValueError(f"{name} must be an integer >= {low} ({what}), got {value!r}")
    batch_shape = tuple(batch_shape)
    if any((not isinstance(b, int)) or b < 1 for b in batch_shape):
        raise ValueError(f"batch_shape must hold positive integers, got {batch_shape!r}")
    return SelectionVariables(
        fragment_probs=jnp.full(batch_shape + (num_fragment_words, vocab_size), 1.0 / vocab_size, dtype),
        demo_probs=jnp.full(batch_shape + (num_classes, num_candidates), 1.0 / num_candidates, dtype),
    )


def sample_categorical(key: jax.Array, probs, num_samples: int, *, workers=None) -> jax.Array:
    """Draw ``num_samples`` independent indices from every row of ``probs`` (inverse CDF).

    Args:
      key: a ``jax.random`` key.
      probs: ``[..., rows, n]`` probabilities (rows need not be exactly normalised: each
        row is scaled by its own total; entries are clipped at 0).
      num_samples: ``I >= 1``.
      workers: int ``[G]`` with ``probs [G, rows, n]``: the leading axis holds these
        workers, and worker ``w`` draws from ``fold_in(key, w)``. A worker thus samples the
        same whichever batch holds it: all ``R`` (the simulator's dense step), the ``S``
        that arrived (its gathered step) or itself alone (a worker of the real runtime).

    Returns:
      int32 ``[..., I, rows]``: sample ``k`` of row ``r`` is ``out[..., k, r]``.

    Raises:
      ValueError: bad shapes, ``num_samples < 1``, or (concrete input) rows that are not
        finite, non-negative probabilities.
    """
    probs = jnp.asarray(probs)
    require_ndim("probs", probs, 2, "[..., rows, n]")
    require_nonempty_last("probs", probs, "an empty vocabulary/pool cannot be sampled")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    check_probabilities("probs", probs)
    cdf = jnp.cumsum(jnp.maximum(probs, 0.0), axis=-1)  # [..., rows, n]
    batch, rows, n = probs.shape[:-2], probs.shape[-2], probs.shape[-1]
    if workers is None:
        u = jax.random.uniform(key, batch + (rows, num_samples), dtype=cdf.dtype)
    else:
        if len(batch) != 1 or jnp.shape(workers) != batch:
            raise ValueError(f"workers [G] needs probs [G, rows, n], got workers {jnp.shape(workers)} and probs {tuple(probs.shape)}")
        u = jax.vmap(lambda w: jax.random.uniform(jax.random.fold_in(key, w), (rows, num_samples), dtype=cdf.dtype))(
            jnp.asarray(workers))
    targets = u * cdf[..., -1:]  # [..., rows, I]: each row scaled by its own total
    flat_cdf = cdf.reshape(-1, n)
    flat_targets = targets.reshape(-1, num_samples)
    idx = jax.vmap(lambda c, t: jnp.searchsorted(c, t, side="right"))(flat_cdf, flat_targets)
    idx = jnp.minimum(idx, n - 1).astype(jnp.int32).reshape(batch + (rows, num_samples))
    return jnp.swapaxes(idx, -1, -2)


def categorical_log_prob(probs, samples) -> jax.Array:
    """``sum_r log probs[..., r, samples[..., k, r]]`` for every sample ``k``.

    Args:
      probs: ``[..., rows, n]``.
      samples: int ``[..., I, rows]``.

    Returns:
      ``[..., I]`` log-probability of each sampled configuration.
    """
    probs = jnp.asarray(probs)
    samples = jnp.asarray(samples)
    if samples.shape[:-2] != probs.shape[:-2] or samples.shape[-1] != probs.shape[-2]:
        raise ValueError(
            f"samples {tuple(samples.shape)} do not match probs {tuple(probs.shape)}: expected [..., I, rows]"
        )
    picked = jnp.take_along_axis(probs[..., None, :, :], samples[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.log(picked), axis=-1)


def sample_configurations(key: jax.Array, selection: SelectionVariables, num_samples: int, *, workers=None) -> Configuration:
    """Sample ``I`` prompt configurations (fragment words and demonstrations together).

    Args:
      key: a ``jax.random`` key.
      selection: ``SelectionVariables`` with any leading axes.
      num_samples: ``I``.
      workers: int ``[G]``: the workers the leading axis holds, each drawing from its own
        stream (see :func:`sample_categorical`).

    Returns:
      ``Configuration`` with ``fragment_words [..., I, M]`` and ``demos [..., I, U]``.
    """
    fragment_key, demo_key = jax.random.split(key)
    return Configuration(
        fragment_words=sample_categorical(fragment_key, selection.fragment_probs, num_samples, workers=workers),
        demos=sample_categorical(demo_key, selection.demo_probs, num_samples, workers=workers),
    )


def log_prob(selection: SelectionVariables, config: Configuration) -> jax.Array:
    """Log-probability ``[..., I]`` of sampled configurations under ``selection``."""
    return categorical_log_prob(selection.fragment_probs, config.fragment_words) + categorical_log_prob(
        selection.demo_probs, config.demos
    )


def decode(selection: SelectionVariables) -> Configuration:
    """The argmax configuration (BDPL: evaluation uses the argmax of each row).

    Returns:
      ``Configuration`` with ``fragment_words [..., M]`` and ``demos [..., U]``.
    """
    return Configuration(
        fragment_words=jnp.argmax(selection.fragment_probs, axis=-1).astype(jnp.int32),
        demos=jnp.argmax(selection.demo_probs, axis=-1).astype(jnp.int32),
    )
