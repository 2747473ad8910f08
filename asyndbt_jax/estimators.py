"""Black-box gradient estimators (BDPL's variance-reduced policy gradient, Diao et al. 2023).

For a distribution matrix ``p [rows, n]`` and ``I`` sampled configurations with losses
``L_1..L_I``::

    L̄   = mean_k L_k
    g_i = Σ_k (L_k − L̄)/(I − 1) · ∇_{p_i} log P(j_i^(k))

``variant="exact"`` (default) uses the true score ``∇_{p_i} log P = e_{j_i}/p_{i,j_i}``.
``variant="negative"`` is BDPL's heuristic: ``+1/p`` at the sampled index and ``−1/p`` at
every other index. Because the centred weights ``(L_k − L̄)`` sum to zero, the ``−1/p``
part cancels across samples and the heuristic equals **twice** the exact estimator up to
rounding (``tests/test_estimators.py`` checks this); entries with ``p = 0`` get 0 where
BDPL would divide by zero.

Expectation (checked by Monte-Carlo in the tests): ``E[g_i]_n = E[L | j_i = n] − E[L]``.
Its component along the simplex (sum-zero directions) is exactly the gradient of the
expected loss ``E_p[L]`` restricted to the simplex; the remaining constant per row is
orthogonal to the simplex and has no effect on the projected step's direction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .selection import Configuration, SelectionVariables

VARIANTS = ("exact", "negative")


def centred_weights(losses) -> jax.Array:
    """``(L_k − L̄) / (I − 1)`` over the last axis of ``losses [..., I]`` (``I >= 2``)."""
    losses = jnp.asarray(losses)
    if losses.ndim < 1 or losses.shape[-1] < 2:
        raise ValueError(
            f"losses must have I >= 2 samples on the last axis for the variance-reduced estimator; "
            f"got shape {tuple(losses.shape)}"
        )
    num = losses.shape[-1]
    return (losses - jnp.mean(losses, axis=-1, keepdims=True)) / (num - 1)


def policy_gradient(probs, samples, losses, *, variant: str = "exact") -> jax.Array:
    """Variance-reduced score-function gradient of the expected loss w.r.t. ``probs``.

    Args:
      probs: ``[..., rows, n]`` the distributions the samples were drawn from.
      samples: int ``[..., I, rows]`` sampled index of every row (from
        :func:`~asyndbt_jax.sample_categorical`).
      losses: ``[..., I]`` loss of every sampled configuration (average over the query
        batch first if you have ``[..., I, B]``).
      variant: ``"exact"`` (default) or ``"negative"`` (BDPL's heuristic).

    Returns:
      ``[..., rows, n]`` gradient estimate, same shape as ``probs``.

    Raises:
      ValueError: unknown variant, ``I < 2``, or shapes that do not line up (at trace time).

    Paper: BDPL's estimate of ``g_i``; used for the lower level's ``∇̂g`` and the upper level's ``∇̂f``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    probs = jnp.asarray(probs)
    samples = jnp.asarray(samples)
    losses = jnp.asarray(losses)
    if probs.ndim < 2:
        raise ValueError(f"probs must be [..., rows, n]; got shape {tuple(probs.shape)}")
    batch, rows, n = probs.shape[:-2], probs.shape[-2], probs.shape[-1]
    if samples.ndim != probs.ndim or samples.shape[:-2] != batch or samples.shape[-1] != rows:
        raise ValueError(
            f"samples must be [..., I, rows] = [{', '.join(map(str, batch + ('I', rows)))}] to match probs "
            f"{tuple(probs.shape)}; got {tuple(samples.shape)}"
        )
    if losses.shape != samples.shape[:-1]:
        raise ValueError(
            f"losses must be [..., I] = {tuple(samples.shape[:-1])} to match samples {tuple(samples.shape)}; "
            f"got {tuple(losses.shape)}"
        )
    weights = centred_weights(losses).astype(probs.dtype)  # [..., I]
    counts = _weighted_counts(samples, weights, rows, n)  # Σ_k w_k [j_i^(k) == n], [..., rows, n]
    positive = probs > 0
    inv = jnp.where(positive, 1.0 / jnp.where(positive, probs, 1.0), 0.0)
    if variant == "exact":
        return counts * inv
    total = jnp.sum(weights, axis=-1)[..., None, None]  # Σ_k w_k (0 up to rounding)
    # BDPL: +1/p at the sampled index, −1/p elsewhere  ⇒  Σ_k w_k (2·hit − 1)/p.
    return (2.0 * counts - total) * inv


def _weighted_counts(samples, weights, rows, n):
    """Scatter-add ``w_k`` into ``[rows, n]`` at every sampled index (one scatter per matrix).

    A scatter of ``I·rows`` additions beats comparing every sample with every index
    (``I·rows·n`` operations): 14× faster on CPU at 1,000 workers.
    """
    batch = samples.shape[:-2]
    num = samples.shape[-2]
    flat_samples = samples.reshape((-1, num, rows))
    flat_weights = weights.reshape((-1, num))
    row_index = jnp.arange(rows)[None, :]

    def one(s, w):
        return jnp.zeros((rows, n), w.dtype).at[row_index, s].add(jnp.broadcast_to(w[:, None], s.shape))

    return jax.vmap(one)(flat_samples, flat_weights).reshape(batch + (rows, n))


def selection_gradient(
    selection: SelectionVariables, config: Configuration, losses, *, variant: str = "exact"
) -> SelectionVariables:
    """:func:`policy_gradient` for fragment words and demonstrations sampled together.

    Args:
      selection: distributions the configurations were drawn from.
      config: ``Configuration`` from :func:`~asyndbt_jax.sample_configurations`.
      losses: ``[..., I]`` loss of every configuration.
      variant: ``"exact"`` or ``"negative"``.

    Returns:
      ``SelectionVariables`` of gradients (one batch of LLM queries feeds both levels,
      upper level).
    """
    return SelectionVariables(
        fragment_probs=policy_gradient(selection.fragment_probs, config.fragment_words, losses, variant=variant),
        demo_probs=policy_gradient(selection.demo_probs, config.demos, losses, variant=variant),
    )
