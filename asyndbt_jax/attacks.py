"""Attack models for malicious workers.

Strong threat model: the attackers see every benign update. Every message attack is a pure
function ``attack(updates, malicious, ...) -> updates`` of a pytree whose leaves have a
leading worker axis ``R`` and a boolean ``malicious [R]``; it rewrites the malicious rows
only (benign rows come back bit-for-bit). Statistics the attackers use (mean, standard
deviation) are taken over the benign workers. The updates are *displacements* (a
gradient, or a worker's message minus the current consensus): the AsynDBT server attacks
``p_v − z`` and re-centres.

Message attacks: :func:`sign_flip`, :func:`gaussian_noise`, :func:`scaling`, :func:`alie`
("a little is enough", Baruch et al. 2019), :func:`ipm` (inner-product manipulation, Xie et
al. 2020), :func:`stale_replay`. Feedback attack: :func:`poison_feedback` (a malicious
worker reports inverted or random losses to the black-box estimator). Data attack:
:func:`poison_demonstrations` (label-flipped demonstration pools; the malicious worker
then follows the algorithm honestly).

``malicious_workers(R, B)`` picks the identities (the last ``B`` workers by default, or a
seeded random subset).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import per_worker, worker_count
from .feedback import Feedback

PyTree = Any

MESSAGE_ATTACKS = ("none", "sign_flip", "gaussian_noise", "scaling", "alie", "ipm", "stale_replay")
FEEDBACK_ATTACKS = ("inverted_feedback", "random_feedback")
DATA_ATTACKS = ("poisoned_demos",)
ATTACKS = MESSAGE_ATTACKS + FEEDBACK_ATTACKS + DATA_ATTACKS
# The one parameter that sets each message attack's strength (``AsynDBTConfig.attack_strength``).
ATTACK_STRENGTH = {"sign_flip": "scale", "gaussian_noise": "std", "scaling": "factor", "alie": "z", "ipm": "epsilon"}


def malicious_workers(num_workers: int, num_malicious: int, seed: int | None = None) -> np.ndarray:
    """Boolean ``[R]`` marking ``B`` malicious workers: the last ``B`` (``seed=None``) or a seeded random set.

    Raises:
      ValueError: ``B`` outside ``[0, R]``.
    """
    if not (isinstance(num_malicious, int) and 0 <= num_malicious <= num_workers):
        raise ValueError(f"num_malicious must be an integer in [0, {num_workers}], got {num_malicious!r}")
    out = np.zeros(num_workers, bool)
    if seed is None:
        out[num_workers - num_malicious :] = True
    else:
        out[np.random.default_rng(seed).choice(num_workers, num_malicious, replace=False)] = True
    return out


def _check(updates: PyTree, malicious) -> jax.Array:
    R = worker_count(updates)
    malicious = jnp.asarray(malicious)
    if malicious.shape != (R,):
        raise ValueError(f"malicious must have shape ({R},), got {malicious.shape}")
    return malicious.astype(bool)


def _replace(updates: PyTree, malicious: jax.Array, fake: PyTree) -> PyTree:
    return jax.tree.map(lambda x, f: jnp.where(per_worker(malicious, x), jnp.broadcast_to(f, x.shape).astype(x.dtype), x), updates, fake)


def _benign_stats(updates: PyTree, malicious: jax.Array):
    benign = (~malicious).astype(jnp.float32)
    n = jnp.maximum(jnp.sum(benign), 1.0)

    def stats(x):
        w = per_worker(benign, x).astype(x.dtype)
        mu = jnp.sum(w * x, 0) / n
        var = jnp.sum(w * (x - mu) ** 2, 0) / jnp.maximum(n - 1, 1)
        return mu, jnp.sqrt(var)

    pairs = jax.tree.map(stats, updates)
    is_pair = lambda t: isinstance(t, tuple)  # noqa: E731
    return jax.tree.map(lambda p: p[0], pairs, is_leaf=is_pair), jax.tree.map(lambda p: p[1], pairs, is_leaf=is_pair)


def sign_flip(updates: PyTree, malicious, *, scale: float = 1.0) -> PyTree:
    """Each malicious worker sends ``−scale ×`` its own update."""
    malicious = _check(updates, malicious)
    return _replace(updates, malicious, jax.tree.map(lambda x: -scale * x, updates))


def gaussian_noise(updates: PyTree, malicious, key: jax.Array, *, std: float = 1.0) -> PyTree:
    """Malicious workers send i.i.d. ``N(0, std²)`` noise instead of their update."""
    malicious = _check(updates, malicious)
    leaves, treedef = jax.tree.flatten(updates)
    keys = jax.random.split(key, len(leaves))
    noise = [std * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return _replace(updates, malicious, jax.tree.unflatten(treedef, noise))


def scaling(updates: PyTree, malicious, *, factor: float = 10.0) -> PyTree:
    """Malicious workers send ``factor ×`` their update (a boosting attack)."""
    malicious = _check(updates, malicious)
    return _replace(updates, malicious, jax.tree.map(lambda x: factor * x, updates))


def alie_z(num_workers: int, num_malicious) -> jax.Array:
    """Baruch et al.'s ``z_max``: the largest shift (in benign standard deviations) that still
    keeps the fake update inside the majority: ``s = ⌊R/2 + 1⌋ − B``, ``z = Φ⁻¹((R − s)/R)``.
    ``num_malicious`` may be traced (a scalar array)."""
    s = math.floor(num_workers / 2 + 1) - jnp.asarray(num_malicious, jnp.float32)
    p = jnp.clip((num_workers - s) / num_workers, 1e-6, 1 - 1e-6)
    return jax.scipy.special.ndtri(p)


def alie(updates: PyTree, malicious, *, z: float | None = None) -> PyTree:
    """"A little is enough": every malicious worker sends ``μ − z·σ`` (benign mean and standard
    deviation per coordinate), small enough to pass robust rules, consistent enough to bias them.
    ``z`` defaults to :func:`alie_z` of the worker counts (works under ``jit``)."""
    malicious = _check(updates, malicious)
    if z is None:
        z = alie_z(malicious.shape[0], jnp.sum(malicious))
    mu, sigma = _benign_stats(updates, malicious)
    return _replace(updates, malicious, jax.tree.map(lambda m, s: m - z * s, mu, sigma))


def ipm(updates: PyTree, malicious, *, epsilon: float = 0.5) -> PyTree:
    """Inner-product manipulation: every malicious worker sends ``−epsilon ×`` the benign mean,
    so the aggregate's inner product with the true direction shrinks or turns negative."""
    malicious = _check(updates, malicious)
    mu, _ = _benign_stats(updates, malicious)
    return _replace(updates, malicious, jax.tree.map(lambda m: -epsilon * m, mu))


def stale_replay(updates: PyTree, malicious, replay: PyTree) -> PyTree:
    """Malicious workers resend an old message ``replay`` (same structure as ``updates``)
    instead of the current one: stale information presented as fresh."""
    malicious = _check(updates, malicious)
    return _replace(updates, malicious, replay)


def apply(name: str, updates: PyTree, malicious, key: jax.Array, replay: PyTree | None = None, **options) -> PyTree:
    """Apply the message attack ``name`` (one of ``MESSAGE_ATTACKS``)."""
    if name not in MESSAGE_ATTACKS:
        raise ValueError(f"message attack must be one of {MESSAGE_ATTACKS}, got {name!r}")
    if name == "none":
        _check(updates, malicious)
        return updates
    if name == "gaussian_noise":
        return gaussian_noise(updates, malicious, key, **options)
    if name == "stale_replay":
        if replay is None:
            raise ValueError("stale_replay needs the replayed messages (replay=...)")
        return stale_replay(updates, malicious, replay)
    return {"sign_flip": sign_flip, "scaling": scaling, "alie": alie, "ipm": ipm}[name](updates, malicious, **options)


def poison_feedback(feedback: Feedback, malicious, key: jax.Array, *, mode: str = "invert") -> Feedback:
    """Malicious workers report poisoned losses to the estimator (feedback leaves ``[R, I, B]``).

    ``mode="invert"``: ``max − loss`` per worker, so the estimator climbs the loss. ``"random"``:
    uniform losses over the worker's observed range (the estimate becomes noise).
    """
    if mode not in ("invert", "random"):
        raise ValueError(f"mode must be 'invert' or 'random', got {mode!r}")
    losses = feedback.losses
    malicious = jnp.asarray(malicious, bool)
    if malicious.shape != losses.shape[:1]:
        raise ValueError(f"malicious must have shape ({losses.shape[0]},), got {malicious.shape}")
    axes = tuple(range(1, losses.ndim))
    hi = jnp.max(losses, axis=axes, keepdims=True)
    lo = jnp.min(losses, axis=axes, keepdims=True)
    if mode == "invert":
        fake = hi + lo - losses
    else:
        fake = lo + (hi - lo) * jax.random.uniform(key, losses.shape, losses.dtype)
    return Feedback(losses=jnp.where(per_worker(malicious, losses), fake, losses), correct=feedback.correct)


def poison_demonstrations(queries, malicious):
    """Label-flipped demonstration pools for the malicious workers (a data-poisoning attack).

    The malicious workers then run the algorithm honestly on poisoned data: every
    demonstration they show carries a wrong answer. ``queries`` is a per-worker query
    batch (leaves ``[R, B]``) with a ``flipped_demos`` field, as the planted oracle's
    :class:`~asyndbt_jax.oracle.Queries` has; the malicious rows are set to ``True``.

    Raises:
      ValueError: the queries have no ``flipped_demos`` field, or ``malicious`` has the wrong shape.
    """
    if not hasattr(queries, "flipped_demos") or not hasattr(queries, "_replace"):
        raise ValueError(
            "poisoned_demos needs queries with a 'flipped_demos' field (the planted oracle's Queries); "
            f"got {type(queries).__name__}"
        )
    flags = queries.flipped_demos
    malicious = jnp.asarray(malicious, bool)
    if flags.ndim < 1 or malicious.shape != flags.shape[:1]:
        raise ValueError(f"malicious must have shape ({flags.shape[0] if flags.ndim else '?'},), got {malicious.shape}")
    return queries._replace(flipped_demos=flags | per_worker(malicious, flags))


__all__ = [
    "ATTACKS",
    "ATTACK_STRENGTH",
    "DATA_ATTACKS",
    "FEEDBACK_ATTACKS",
    "MESSAGE_ATTACKS",
    "alie",
    "alie_z",
    "apply",
    "gaussian_noise",
    "ipm",
    "malicious_workers",
    "poison_demonstrations",
    "poison_feedback",
    "scaling",
    "sign_flip",
    "stale_replay",
]
