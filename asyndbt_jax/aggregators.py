"""Robust aggregation rules over a leading worker axis.

Every rule takes ``updates``: a pytree whose leaves share a leading worker axis ``R``
(``[R, ...]``), an optional boolean ``mask [R]`` of participating workers (asynchrony:
masked-out workers never influence the result) and, where the rule has a weighted form,
optional non-negative ``weights [R]``. It returns one aggregate with the leaves' trailing
shapes. All rules are pure and jit/vmap-able; the rules that need distances between whole
updates (geometric median, Krum, centred clipping) treat the pytree as one flat vector.

Rules: :func:`mean`, :func:`coordinate_median`, :func:`trimmed_mean`,
:func:`geometric_median` (smoothed Weiszfeld), :func:`krum` / :func:`multi_krum`,
:func:`centered_clipping` and :func:`sign_consensus` (the ψ-sign step of AsynDBT's server,
RSA-style). Pre-aggregations that keep honest non-IID workers from looking like outliers:
:func:`nearest_neighbor_mixing` and :func:`bucketing` (:func:`pre_aggregate`).
:func:`as_aggregator` wraps any rule, after an optional pre-aggregation, as an
``optax.experimental.aggregating.Aggregator`` so it drops into other optax pipelines.

Bad input raises ``ValueError`` before anything compiles: leaves with different worker
counts, a mask or weights of the wrong shape, ``trim_fraction`` outside ``[0, 0.5)``,
``num_byzantine`` too large for Krum or mixing, a bucket larger than the participants, or
(when the mask is concrete) every worker masked.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._checks import is_concrete, per_worker, worker_count
from ._select import _order_statistics

PyTree = Any


# ----------------------------------------------------------------------------- helpers


def _mask(mask, R: int) -> jax.Array:
    if mask is None:
        return jnp.ones((R,), bool)
    mask = jnp.asarray(mask)
    if mask.shape != (R,):
        raise ValueError(f"mask must have shape ({R},) (one entry per worker), got {mask.shape}")
    mask = mask.astype(bool)
    if is_concrete(mask) and not np.asarray(mask).any():
        raise ValueError("mask excludes every worker: there is nothing to aggregate")
    return mask


def _weights(weights, mask: jax.Array) -> jax.Array:
    """Weights ``[R]`` with masked-out workers at exactly 0 (default: 1 per participant)."""
    R = mask.shape[0]
    if weights is None:
        return mask.astype(jnp.float32)
    weights = jnp.asarray(weights, jnp.float32)
    if weights.shape != (R,):
        raise ValueError(f"weights must have shape ({R},), got {weights.shape}")
    if is_concrete(weights) and (~np.isfinite(np.asarray(weights)) | (np.asarray(weights) < 0)).any():
        raise ValueError("weights must be finite and non-negative")
    return jnp.where(mask, weights, 0.0)


def _flatten(updates: PyTree) -> tuple[jax.Array, Callable[[jax.Array], PyTree]]:
    """``[R, D]`` view of a pytree of ``[R, ...]`` leaves, and the inverse for one ``[D]`` vector."""
    leaves, treedef = jax.tree.flatten(updates)
    R = leaves[0].shape[0]
    dtype = jnp.result_type(*leaves)
    flat = jnp.concatenate([jnp.reshape(x, (R, -1)).astype(dtype) for x in leaves], axis=1)
    shapes = [x.shape[1:] for x in leaves]
    sizes = [int(jnp.size(x) // R) for x in leaves]
    dtypes = [x.dtype for x in leaves]

    def unflatten(vector: jax.Array) -> PyTree:
        parts, start = [], 0
        for shape, size, dt in zip(shapes, sizes, dtypes):
            parts.append(vector[start : start + size].reshape(shape).astype(dt))
            start += size
        return jax.tree.unflatten(treedef, parts)

    return flat, unflatten


def _weighted_average(flat: jax.Array, weights: jax.Array) -> jax.Array:
    total = jnp.maximum(jnp.sum(weights), 1e-30)
    return jnp.einsum("r,rd->d", weights, flat, precision=jax.lax.Precision.HIGHEST) / total


# ----------------------------------------------------------------------------- rules


def mean(updates: PyTree, mask=None, weights=None) -> PyTree:
    """Weighted average of the participating workers' updates (the non-robust baseline)."""
    R = worker_count(updates)
    w = _weights(weights, _mask(mask, R))
    total = jnp.maximum(jnp.sum(w), 1e-30)
    # A weighted sum over the worker axis as one contraction: XLA's CPU reduction over a
    # leading axis is ~4x slower (benchmarks/aggregators.py). HIGHEST keeps f32 on GPUs (no TF32).
    return jax.tree.map(
        lambda x: jnp.tensordot(w.astype(x.dtype), x, axes=1, precision=jax.lax.Precision.HIGHEST) / total.astype(x.dtype),
        updates,
    )


def coordinate_median(updates: PyTree, mask=None) -> PyTree:
    """Coordinate-wise median over participating workers (mean of the two middle values
    when their count is even). Exact; a selection by bisection on the values' bits, not a
    sort."""
    R = worker_count(updates)
    mask = _mask(mask, R)
    n = jnp.sum(mask)

    def leaf(x):
        v = _order_statistics(x, mask, jnp.stack([(n - 1) // 2, n // 2]))
        return jnp.where(v[0] == v[1], v[0], 0.5 * v[0] + 0.5 * v[1]).astype(x.dtype)  # no overflow near the float max

    return jax.tree.map(leaf, updates)


def trimmed_mean(updates: PyTree, mask=None, trim_fraction: float = 0.1) -> PyTree:
    """Coordinate-wise mean after dropping the ``⌊trim_fraction · n⌋`` largest and smallest
    values of the ``n`` participating workers.

    The two cut points are exact order statistics (as in :func:`coordinate_median`); one
    more pass sums the values between them, and ties at a cut point count as often as
    they are kept.

    Raises:
      ValueError: ``trim_fraction`` outside ``[0, 0.5)``.
    """
    if not (isinstance(trim_fraction, (int, float)) and 0 <= trim_fraction < 0.5):
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction!r}")
    R = worker_count(updates)
    mask = _mask(mask, R)
    n = jnp.sum(mask)
    k = jnp.floor(trim_fraction * n).astype(jnp.int32)

    def leaf(x):
        work = x if x.dtype in (jnp.float32, jnp.float64) else x.astype(jnp.float32)
        lo, hi = _order_statistics(work, mask, jnp.stack([k, n - k - 1]))
        m = per_worker(mask, work)
        inside = jnp.sum(jnp.where(m & (work > lo) & (work < hi), work, 0.0), axis=0)
        at_or_below_lo = jnp.sum(m & (work <= lo), axis=0)  # ranks 0 .. at_or_below_lo - 1 hold lo or less
        below_hi = jnp.sum(m & (work < hi), axis=0)  # ranks below_hi .. n - 1 hold hi or more
        total = inside + lo * (at_or_below_lo - k) + hi * (n - k - below_hi)
        total = jnp.where(lo == hi, lo * (n - 2 * k), total)
        return (total / jnp.maximum(n - 2 * k, 1).astype(work.dtype)).astype(x.dtype)

    return jax.tree.map(leaf, updates)


class GeometricMedianInfo(NamedTuple):
    """Convergence of :func:`geometric_median`: iterations run, whether the last relative
    change fell below ``tol``, and that change."""

    iterations: jax.Array
    converged: jax.Array
    relative_change: jax.Array


def geometric_median(
    updates: PyTree,
    mask=None,
    weights=None,
    *,
    max_iterations: int = 100,
    tol: float = 1e-6,
    smoothing: float = 1e-8,
) -> tuple[PyTree, GeometricMedianInfo]:
    """Smoothed Weiszfeld geometric median (Pillutla et al.'s RFA) of the participating updates.

    Iterates ``y ← Σ_r β_r x_r / Σ_r β_r`` with ``β_r = w_r / max(smoothing, ||x_r − y||)``
    from the coordinate-wise median of the participants (a start the attackers cannot move
    far, unlike the mean: with a bounded iteration count the start matters), stopping after
    ``max_iterations`` or once ``||y_new − y|| ≤ tol · max(||y||, 1e-12)``.

    Returns:
      ``(median, GeometricMedianInfo)``.
    """
    if not (isinstance(max_iterations, int) and max_iterations >= 1):
        raise ValueError(f"max_iterations must be a positive integer, got {max_iterations!r}")
    if not tol >= 0 or not smoothing > 0:
        raise ValueError(f"tol must be >= 0 and smoothing > 0, got tol={tol!r}, smoothing={smoothing!r}")
    R = worker_count(updates)
    mask = _mask(mask, R)
    w = _weights(weights, mask)
    flat, unflatten = _flatten(updates)
    weighted = w > 0  # the participants with weight (masked-out workers have weight 0)
    y0 = coordinate_median(flat, jnp.where(jnp.any(weighted), weighted, mask))

    def body(carry):
        y, _, it = carry
        dist = jnp.sqrt(jnp.sum((flat - y) ** 2, axis=1))
        beta = w / jnp.maximum(dist, smoothing)
        y_new = _weighted_average(flat, beta)
        change = jnp.sqrt(jnp.sum((y_new - y) ** 2)) / jnp.maximum(jnp.sqrt(jnp.sum(y**2)), 1e-12)
        return y_new, change, it + 1

    def cond(carry):
        _, change, it = carry
        return (it < max_iterations) & (change > tol)

    y, change, it = jax.lax.while_loop(cond, body, (y0, jnp.asarray(jnp.inf, y0.dtype), jnp.asarray(0, jnp.int32)))
    return unflatten(y), GeometricMedianInfo(it, change <= tol, change)


def _pairwise_sq_distances(flat: jax.Array) -> jax.Array:
    sq = jnp.sum(flat**2, axis=1)
    d = sq[:, None] + sq[None, :] - 2.0 * (flat @ flat.T)
    return jnp.maximum(d, 0.0)


def _check_byzantine(num_byzantine, R: int) -> None:
    if not (isinstance(num_byzantine, int) and num_byzantine >= 0):
        raise ValueError(f"num_byzantine must be an integer >= 0, got {num_byzantine!r}")
    if 2 * num_byzantine >= R:
        raise ValueError(f"Krum needs num_byzantine < R/2; got R={R}, num_byzantine={num_byzantine}")


def krum_scores(updates: PyTree, mask=None, *, num_byzantine: int) -> jax.Array:
    """Krum score of every worker (``+inf`` for masked-out ones): the sum of squared distances
    to its ``max(n − f − 2, 1)`` nearest participating neighbours (Blanchard et al., 2017).

    Raises:
      ValueError: ``num_byzantine ≥ R/2``.
    """
    R = worker_count(updates)
    _check_byzantine(num_byzantine, R)
    mask = _mask(mask, R)
    flat, _ = _flatten(updates)
    valid = mask[:, None] & mask[None, :] & ~jnp.eye(R, dtype=bool)
    d = jnp.where(valid, _pairwise_sq_distances(flat), jnp.inf)
    n = jnp.sum(mask)
    m = jnp.maximum(n - num_byzantine - 2, 1)
    # Worker j's score from column j: its m-th smallest distance t by exact selection (the
    # sort of the R x R matrix it replaces was most of Krum's time on a CPU), then the
    # distances below t plus t once for each of the m slots they leave (ties at t).
    t = _order_statistics(d, jnp.ones(R, bool), (m - 1)[None])[0]
    below = d < t[None, :]
    score = jnp.sum(jnp.where(below, d, 0.0), axis=0) + t * (m - jnp.sum(below, axis=0))
    return jnp.where(mask, score, jnp.inf)


def multi_krum(updates: PyTree, mask=None, *, num_byzantine: int, num_selected: int | None = None) -> PyTree:
    """Average of the ``num_selected`` participating updates with the lowest Krum scores
    (default ``n − num_byzantine``, clipped to the participants)."""
    if num_selected is not None and not (isinstance(num_selected, int) and num_selected >= 1):
        raise ValueError(f"num_selected must be a positive integer, got {num_selected!r}")
    R = worker_count(updates)
    mask = _mask(mask, R)
    scores = krum_scores(updates, mask, num_byzantine=num_byzantine)
    n = jnp.sum(mask)
    m = n - num_byzantine if num_selected is None else jnp.minimum(num_selected, n)
    rank = jnp.argsort(jnp.argsort(scores))
    chosen = mask & (rank < jnp.maximum(m, 1))
    return mean(updates, chosen)


def krum(updates: PyTree, mask=None, *, num_byzantine: int) -> PyTree:
    """The single participating update with the lowest Krum score."""
    return multi_krum(updates, mask, num_byzantine=num_byzantine, num_selected=1)


def centered_clipping(
    updates: PyTree,
    mask=None,
    weights=None,
    *,
    center: PyTree | None = None,
    radius: float | None = None,
    num_iterations: int = 3,
) -> PyTree:
    """Centred clipping (Karimireddy et al., 2021): ``v ← v + Σ_r w_r clip_τ(x_r − v) / Σ_r w_r``
    repeated ``num_iterations`` times from ``center`` (default: the coordinate-wise median, so the
    rule is robust without a previous aggregate).

    ``radius`` τ: a fixed clipping radius, or ``None`` (the default) for an adaptive one,
    recomputed each iteration as the median distance of the participants to ``v``. A fixed
    radius has to match the updates' scale, which differs between uses and changes during a
    run; at the median distance at most half the participants are clipped, and whatever the
    attackers (a minority) send, the radius stays within the honest workers' distances.
    """
    if not (radius is None or radius > 0) or not (isinstance(num_iterations, int) and num_iterations >= 1):
        raise ValueError(f"radius must be > 0 (or None: adaptive) and num_iterations >= 1, got {radius!r}, {num_iterations!r}")
    R = worker_count(updates)
    mask = _mask(mask, R)
    w = _weights(weights, mask)
    flat, unflatten = _flatten(updates)
    if center is None:
        v = coordinate_median(flat, mask)
    else:
        v = _flatten(jax.tree.map(lambda x: jnp.asarray(x)[None], center))[0][0]
        if v.shape != flat.shape[1:]:
            raise ValueError(f"center must have the shape of one worker's update ({flat.shape[1]} entries), got {v.shape[0]}")

    def step(v, _):
        diff = flat - v
        norm = jnp.sqrt(jnp.sum(diff**2, axis=1))
        tau = radius if radius is not None else coordinate_median(norm, mask)
        scale = jnp.minimum(1.0, tau / jnp.maximum(norm, 1e-30))
        return v + _weighted_average(diff * scale[:, None], w), None

    v, _ = jax.lax.scan(step, v, None, length=num_iterations)
    return unflatten(v)


def sign_consensus(
    updates: PyTree,
    center: PyTree,
    mask=None,
    weights=None,
    *,
    psi: float = 1e-3,
    step_size: float = 1.0,
) -> PyTree:
    """The ψ-sign consensus step of AsynDBT's server (RSA-style ℓ1 aggregation, Li et al. 2019):
    ``center − step_size · ψ · Σ_r w_r sign(center − x_r)``.

    Whatever a worker sends, it moves each coordinate by at most ``step_size · ψ · w_r``:
    the influence of a malicious worker is bounded by construction, not by detection.
    """
    if not (psi >= 0 and step_size >= 0):
        raise ValueError(f"psi and step_size must be >= 0, got {psi!r}, {step_size!r}")
    R = worker_count(updates)
    w = _weights(weights, _mask(mask, R))
    return jax.tree.map(
        lambda x, c: c - step_size * psi * jnp.sum(per_worker(w, x).astype(x.dtype) * jnp.sign(c[None] - x), axis=0),
        updates,
        center,
    )


# ----------------------------------------------------------------------------- pre-aggregation
#
# Honest workers with different data send different updates, and a robust rule that
# trusts the dense cluster takes the spread for attacks (the "heterogeneity tax"). A
# pre-aggregation first shrinks the honest spread, then any rule runs on its output.


def _check_mixing(num_byzantine, R: int) -> None:
    if not (isinstance(num_byzantine, int) and 0 <= num_byzantine < R):
        raise ValueError(f"num_byzantine must be an integer in [0, R={R}), got {num_byzantine!r}")


def nearest_neighbor_mixing(updates: PyTree, mask=None, *, num_byzantine: int) -> PyTree:
    """Nearest-neighbour mixing (Allouah et al., "Fixing by mixing", AISTATS 2023).

    Every participating update is replaced by the average of its ``n − f`` nearest
    participating updates in ℓ2 (itself included; ``n`` participants, ``f = num_byzantine``);
    masked-out rows come back unchanged. Any robust rule then runs on the mixed updates
    (``as_aggregator(rule, pre_aggregation="nnm")``): with at most ``f`` attackers, each mixed
    honest update averages at least ``n − 2f`` honest ones, so the honest spread shrinks
    while an attacker's pull on any mixed update is at most ``f/(n − f)``.
    Costs the ``R × R`` distance matrix (as Krum).

    Raises:
      ValueError: ``num_byzantine`` outside ``[0, R)``.
    """
    R = worker_count(updates)
    _check_mixing(num_byzantine, R)
    mask = _mask(mask, R)
    flat, _ = _flatten(updates)
    d = jnp.where(mask[None, :], _pairwise_sq_distances(flat), jnp.inf)
    d = jnp.where(jnp.eye(R, dtype=bool) & mask[:, None], -1.0, d)  # itself first, whatever the rounding
    k = jnp.maximum(jnp.sum(mask) - num_byzantine, 1)
    rank = jnp.argsort(jnp.argsort(d, axis=1), axis=1)  # ties broken by index: exactly k neighbours
    chosen = (rank < k) & mask[None, :]
    weight = chosen.astype(flat.dtype) / k.astype(flat.dtype)

    def leaf(x):
        mixed = jnp.tensordot(weight.astype(x.dtype), x, axes=1, precision=jax.lax.Precision.HIGHEST)
        return jnp.where(per_worker(mask, x), mixed, x)

    return jax.tree.map(leaf, updates)


def bucketing(updates: PyTree, mask=None, *, key: jax.Array, bucket_size: int) -> tuple[PyTree, jax.Array]:
    """Bucketing (Karimireddy, He and Jaggi, ICLR 2022): the participants in a fresh random
    order, cut into buckets of ``bucket_size``, each bucket replaced by its mean.

    Returns ``(bucket_means, bucket_mask)`` with the input's shapes: the first
    ``⌈n / bucket_size⌉`` rows are the buckets (the last may be smaller), the rest are
    masked out. A robust rule then aggregates the bucket means; ``f`` attackers spoil at
    most ``f`` buckets, and a rule's ``num_byzantine`` keeps counting them. Draw a new
    ``key`` every aggregation, or the attackers learn the partition.

    Raises:
      ValueError: ``bucket_size`` not a positive integer, or (with a concrete mask) larger
        than the number of participants (every message would land in one bucket).
    """
    if not (isinstance(bucket_size, int) and bucket_size >= 1):
        raise ValueError(f"bucket_size must be a positive integer, got {bucket_size!r}")
    R = worker_count(updates)
    mask = _mask(mask, R)
    if is_concrete(mask) and bucket_size > int(np.asarray(mask).sum()):
        raise ValueError(f"bucket_size={bucket_size} exceeds the {int(np.asarray(mask).sum())} participating messages")
    order = jnp.argsort(jnp.where(mask, jax.random.uniform(key, (R,)), 2.0))  # participants first, shuffled
    position = jnp.zeros((R,), jnp.int32).at[order].set(jnp.arange(R, dtype=jnp.int32))
    bucket = jnp.where(mask, position // bucket_size, R)  # masked-out rows fall outside the segments
    counts = jax.ops.segment_sum(mask.astype(jnp.float32), bucket, num_segments=R)

    def leaf(x):
        sums = jax.ops.segment_sum(jnp.where(per_worker(mask, x), x, 0).astype(jnp.float32), bucket, num_segments=R)
        return (sums / jnp.maximum(counts, 1.0).reshape((R,) + (1,) * (x.ndim - 1))).astype(x.dtype)

    return jax.tree.map(leaf, updates), counts > 0


PRE_AGGREGATIONS = ("none", "nnm", "bucketing")


# ----------------------------------------------------------------------------- optax adapter

RULES = {
    "mean": mean,
    "coordinate_median": coordinate_median,
    "trimmed_mean": trimmed_mean,
    "geometric_median": lambda u, mask=None, **kw: geometric_median(u, mask, **kw)[0],
    "krum": krum,
    "multi_krum": multi_krum,
    "centered_clipping": centered_clipping,
}


def pre_aggregate(
    name: str, updates: PyTree, mask=None, *, num_byzantine: int = 0, bucket_size: int = 2, key: jax.Array | None = None
) -> tuple[PyTree, jax.Array]:
    """The pre-aggregation ``name`` (one of ``PRE_AGGREGATIONS``) as ``(updates, mask)`` for a rule.

    ``"none"`` passes both through; ``"nnm"``: :func:`nearest_neighbor_mixing` with
    ``num_byzantine``; ``"bucketing"``: :func:`bucketing` with ``bucket_size`` and ``key``.
    """
    if name not in PRE_AGGREGATIONS:
        raise ValueError(f"pre_aggregation must be one of {PRE_AGGREGATIONS}, got {name!r}")
    R = worker_count(updates)
    mask = _mask(mask, R)
    if name == "nnm":
        return nearest_neighbor_mixing(updates, mask, num_byzantine=num_byzantine), mask
    if name == "bucketing":
        if key is None:
            raise ValueError("bucketing needs a fresh random key per aggregation (key=...)")
        return bucketing(updates, mask, key=key, bucket_size=bucket_size)
    return updates, mask


def as_aggregator(
    rule: str | Callable[..., PyTree],
    *,
    pre_aggregation: str = "none",
    num_byzantine: int | None = None,
    bucket_size: int = 2,
    seed: int = 0,
    **options,
):
    """An ``optax.experimental.aggregating.Aggregator`` applying ``rule``, after an optional
    pre-aggregation.

    ``update(per_worker_updates, state, params=None, mask=None)`` returns the aggregate.
    ``rule`` is a name from ``RULES`` or a callable ``rule(updates, mask, **options)``.
    ``pre_aggregation`` (``PRE_AGGREGATIONS``): ``"nnm"`` mixes each update with its
    nearest neighbours (needs ``num_byzantine``), ``"bucketing"`` averages random buckets of
    ``bucket_size`` (its state is the random key, split every update; ``seed`` starts it).
    ``num_byzantine`` is also passed to rules that take it (Krum). ``sign_consensus`` needs a
    centre and is not wrapped: use it directly.
    """
    from optax.experimental import aggregating

    if isinstance(rule, str):
        if rule not in RULES:
            raise ValueError(f"rule must be one of {sorted(RULES)} or a callable, got {rule!r}")
        if rule in ("krum", "multi_krum"):
            if num_byzantine is None:
                raise ValueError(f"{rule} needs num_byzantine")
            options = {"num_byzantine": num_byzantine, **options}
        rule = RULES[rule]
    if pre_aggregation not in PRE_AGGREGATIONS:
        raise ValueError(f"pre_aggregation must be one of {PRE_AGGREGATIONS}, got {pre_aggregation!r}")
    if pre_aggregation == "nnm" and num_byzantine is None:
        raise ValueError("nearest-neighbour mixing needs num_byzantine")
    if not (isinstance(bucket_size, int) and bucket_size >= 1):
        raise ValueError(f"bucket_size must be a positive integer, got {bucket_size!r}")
    fn = functools.partial(rule, **options)

    def init(params=None):
        return jax.random.key(seed) if pre_aggregation == "bucketing" else optax.init_empty_state(params)

    def update(per_elt_updates, state, params=None, *, mask=None, **extra_args):
        del params, extra_args
        sub = None
        if pre_aggregation == "bucketing":
            state, sub = jax.random.split(state)
        pre, pre_mask = pre_aggregate(
            pre_aggregation, per_elt_updates, mask, num_byzantine=num_byzantine or 0, bucket_size=bucket_size, key=sub
        )
        return fn(pre, pre_mask), state

    return aggregating.Aggregator(init=init, update=update)


__all__ = [
    "GeometricMedianInfo",
    "PRE_AGGREGATIONS",
    "RULES",
    "as_aggregator",
    "bucketing",
    "centered_clipping",
    "coordinate_median",
    "geometric_median",
    "krum",
    "krum_scores",
    "mean",
    "multi_krum",
    "nearest_neighbor_mixing",
    "pre_aggregate",
    "sign_consensus",
    "trimmed_mean",
]
