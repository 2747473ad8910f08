"""FedDTPT's server aggregation (Wu et al., arXiv 2411.00985).

The server receives every client's discrete prompt and merges them into one global prompt:

1. embed every client token (the caller's embedding layer; here the embeddings are input),
2. :func:`token_attention`: a token's weight is the sum of its cosine similarities to all
   tokens of the *other* clients, softmax-normalised within its own prompt,
3. :func:`knee_epsilon`: DBSCAN's ε is the knee of the sorted k-distance curve,
4. :func:`dbscan` over all token embeddings,
5. the highest-weight token of every cluster, reordered by original position, forms the
   global prompt (:func:`aggregate`, ``method="cluster"``).

The paper's ablations are the other methods of :func:`aggregate`: ``"fedavg"`` (average the
embeddings position-wise, map back to the nearest vocabulary token), ``"no-cluster"`` (top
tokens by weight) and ``"kmeans"`` (fixed k, :func:`kmeans`).

Everything works on padded, fixed-shape arrays so that it compiles once under ``jit``:
client prompts are token ids ``tokens [C, L]`` with a boolean ``mask [C, L]`` (prompts have
different lengths; padded entries are never used, whatever they hold), their embeddings are
``emb [C, L, d]``. The clustering kernels take the flattened points ``emb_flat [P, d]`` with
``mask_flat [P]`` (``P = C·L``, flat index ``c·L + l``). No Python loop runs over clients or
tokens; pairwise work is ``[P, P]`` matrices and connected components are found by label
propagation in a ``lax.while_loop``.

Choices the paper leaves open:

* **Normalisation.** :func:`knee_epsilon`, :func:`dbscan` and :func:`kmeans` use plain
  Euclidean distances on whatever points they are given (so they match
  ``sklearn.cluster.DBSCAN``). :func:`aggregate` L2-normalises the embeddings before
  clustering by default (``normalize=True``): the attention weights are cosine
  similarities, MLM embedding norms mostly track token frequency, and on unit vectors the
  Euclidean distance ``sqrt(2 - 2 cos)`` is a monotone function of the cosine.
* **Knee rule.** Kneedle for a convex increasing curve: both axes of the sorted k-distance
  curve are scaled to ``[0, 1]``; the knee is the point furthest *below* the chord from the
  first to the last point (largest ``x - y``, first index on ties). A curve with no point
  strictly below its chord (linear or concave: no knee) falls back to the median k-distance.
  The default ``k`` is ``min_samples - 1``: the k-distance is then exactly the smallest ε
  at which a point is a DBSCAN core point.
* **Noise.** DBSCAN noise tokens are kept as singleton clusters (``keep_noise=True``): a
  noise token is a token no other client proposed anything close to, which is what DBSCAN's
  "not merged with anything" means, and FedDTPT keeps one token per group of similar
  tokens. When the prompt is over ``max_length``, real clusters (consensus of several
  tokens) are kept before noise singletons, then higher weight first.
  ``keep_noise=False`` drops them.
* **no-cluster length.** The ``round(mean client prompt length)`` highest-weight tokens
  (capped at ``max_length``): the global prompt is as long as a typical client prompt.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._select import _order_statistics

METHODS = ("cluster", "no-cluster", "fedavg", "kmeans")
_HIGHEST = jax.lax.Precision.HIGHEST


class GlobalPrompt(NamedTuple):
    """The server's global prompt (padded to ``max_length``) and its diagnostics.

    Attributes:
        tokens: ``[max_length]`` int token ids; ``pad_id`` where ``mask`` is False.
        mask: ``[max_length]`` bool, a prefix of True entries (the prompt's length).
        positions: ``[max_length]`` int, original position (column ``l``) of each chosen
            token (for ``fedavg`` the averaged position); -1 on padding.
        clients: ``[max_length]`` int, the client each chosen token came from; -1 on
            padding and for ``fedavg`` (an average has no single client).
        weights: ``[C, L]`` attention weights of every client token (0 on padding).
        labels: ``[C, L]`` cluster of every client token (``cluster``/``kmeans``); -1 for
            noise, padding, and everywhere for ``fedavg``/``no-cluster``.
        eps: scalar DBSCAN ε used (``cluster``); NaN for the other methods.
        num_clusters: scalar int, number of clusters found (``cluster``: DBSCAN clusters,
            noise excluded; ``kmeans``: non-empty clusters); 0 for the other methods.
    """

    tokens: jax.Array
    mask: jax.Array
    positions: jax.Array
    clients: jax.Array
    weights: jax.Array
    labels: jax.Array
    eps: jax.Array
    num_clusters: jax.Array


# ----------------------------------------------------------------------------- helpers


def _float(name: str, x) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        if jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_:
            x = x.astype(jnp.float32)
        else:
            raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    return x


def _points(emb_flat, mask_flat) -> tuple[jax.Array, jax.Array]:
    """Validated ``[P, d]`` points with padded rows zeroed, and the ``[P]`` bool mask."""
    x = _float("emb_flat", emb_flat)
    if x.ndim != 2:
        raise ValueError(f"emb_flat must have shape [P, d], got {tuple(x.shape)}")
    mask = jnp.asarray(mask_flat).astype(bool)
    if mask.shape != x.shape[:1]:
        raise ValueError(f"mask_flat must have shape ({x.shape[0]},), got {tuple(mask.shape)}")
    return jnp.where(mask[:, None], x, 0), mask


def _unit(x: jax.Array) -> jax.Array:
    """Rows scaled to unit L2 norm; zero rows stay zero (their cosine with anything is 0)."""
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.where(norm > 0, norm, 1)


def _distances(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Exactly symmetric Euclidean distances ``[P, P]`` with a zero diagonal.

    ``|a|² + |b|² - 2 a·b`` on points centred at the valid points' mean (centring shrinks the
    norms, hence the cancellation error of the Gram form; distances are translation
    invariant); squared distances within round-off of zero are exactly zero, so identical
    points are at distance 0. Entries involving padded rows are meaningless; callers mask them.
    """
    P = x.shape[0]
    count = jnp.maximum(jnp.sum(mask), 1).astype(x.dtype)
    centre = jnp.sum(jnp.where(mask[:, None], x, 0), axis=0) / count
    x = jnp.where(mask[:, None], x - centre, 0)
    sq = jnp.sum(x * x, axis=-1)
    gram = jnp.matmul(x, x.T, precision=_HIGHEST)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2 * gram, 0)
    # The Gram form leaves identical points ~sqrt(eps)·|x| apart (1e-4 for unit float32
    # vectors), enough to put a knee ε of 0 below them: snap round-off to exact zeros.
    tolerance = 8 * jnp.finfo(x.dtype).eps * (sq[:, None] + sq[None, :])
    d2 = jnp.where(d2 <= tolerance, 0, d2)
    d2 = 0.5 * (d2 + d2.T)
    return jnp.where(jnp.eye(P, dtype=bool), 0, jnp.sqrt(d2))


def _k_distance_curve(dist: jax.Array, mask: jax.Array, k) -> jax.Array:
    """Sorted k-distances ``[P]``: valid points first (ascending), ``+inf`` for padding.

    Each point's k-th nearest distance is selected exactly (no sort of the ``[P, P]``
    matrix); ``dist`` is symmetric, so the column-wise selection is the row-wise one.
    """
    P = dist.shape[0]
    n = jnp.sum(mask)
    others = mask[:, None] & mask[None, :] & ~jnp.eye(P, dtype=bool)
    kk = jnp.clip(jnp.asarray(k, jnp.int32), 1, jnp.maximum(n - 1, 1))
    kd = _order_statistics(jnp.where(others, dist, jnp.inf), jnp.ones(P, bool), (kk - 1)[None])[0]
    kd = jnp.where(n > 1, kd, 0)  # a lone point has no neighbour: its k-distance is 0
    return jnp.sort(jnp.where(mask, kd, jnp.inf))


def _knee(curve: jax.Array, n) -> jax.Array:
    """Kneedle ε on a sorted curve whose first ``n`` entries are valid (module docstring)."""
    P = curve.shape[0]
    i = jnp.arange(P)
    valid = i < n
    last = jnp.clip(n - 1, 0, P - 1)
    y0, y1 = curve[0], curve[last]
    x = i / jnp.maximum(n - 1, 1).astype(curve.dtype)
    span = y1 - y0
    y = jnp.where(span > 0, (curve - y0) / jnp.where(span > 0, span, 1), 0)
    below_chord = jnp.where(valid, x - y, -jnp.inf)
    j = jnp.argmax(below_chord)
    median = 0.5 * (curve[jnp.clip((n - 1) // 2, 0, P - 1)] + curve[jnp.clip(n // 2, 0, P - 1)])
    eps = jnp.where(below_chord[j] > 0, curve[j], median)
    return jnp.where(n > 0, eps, 0).astype(curve.dtype)


def _canonical(group: jax.Array, num_groups: int) -> tuple[jax.Array, jax.Array]:
    """Relabel groups ``[P]`` (``num_groups`` = none) as 0.. in order of smallest member index.

    Returns the labels ``[P]`` (-1 for ungrouped points) and the number of non-empty groups.
    """
    P = group.shape[0]
    idx = jnp.arange(P)
    first = jax.ops.segment_min(idx, group, num_segments=num_groups + 1)[:num_groups]
    nonempty = (first >= 0) & (first < P)
    order = jnp.argsort(jnp.where(nonempty, first, P))
    rank = jnp.zeros((num_groups,), jnp.int32).at[order].set(jnp.arange(num_groups, dtype=jnp.int32))
    labels = jnp.where(group < num_groups, rank[jnp.clip(group, 0, num_groups - 1)], -1)
    return labels.astype(jnp.int32), jnp.sum(nonempty).astype(jnp.int32)


def _dbscan(dist: jax.Array, mask: jax.Array, eps, min_samples) -> tuple[jax.Array, jax.Array]:
    """DBSCAN on a distance matrix: canonical labels ``[P]`` and the cluster count."""
    P = dist.shape[0]
    idx = jnp.arange(P)
    eye = jnp.eye(P, dtype=bool)
    pair = mask[:, None] & mask[None, :]
    neighbours = pair & ((dist <= eps) | eye)  # sklearn: radius query with <=, self included
    core = mask & (jnp.sum(neighbours, axis=1) >= min_samples)
    core_edges = neighbours & core[:, None] & core[None, :]

    # Connected components of the core graph: every core point takes the smallest label among
    # its core neighbours, then jumps to its label's label (pointer jumping; labels are always
    # indices of core points of the same component that are <= the point's own index, so
    # this only speeds up convergence). Fixed point: the component's smallest core index.
    def body(state):
        label, _ = state
        smallest = jnp.min(jnp.where(core_edges, label[None, :], P), axis=1)
        new = jnp.where(core, jnp.minimum(label, smallest), P)
        new = jnp.where(core, new[jnp.clip(new, 0, P - 1)], P)
        return new, jnp.any(new != label)

    root, _ = jax.lax.while_loop(lambda s: s[1], body, (jnp.where(core, idx, P), jnp.asarray(True)))

    # Border points join the cluster of their nearest core neighbour (ties: smallest index).
    core_neighbour = neighbours & core[None, :]
    nearest = jnp.argmin(jnp.where(core_neighbour, dist, jnp.inf), axis=1)
    border = mask & ~core & jnp.any(core_neighbour, axis=1)
    group = jnp.where(core, root, jnp.where(border, root[nearest], P))
    return _canonical(group, P)


def _kmeans(x: jax.Array, mask: jax.Array, num_clusters: int, key, iterations: int):
    """k-means++ seeding then ``iterations`` Lloyd steps; canonical labels and count."""
    P = x.shape[0]
    w = mask.astype(x.dtype)
    uniform = w / jnp.maximum(jnp.sum(w), 1)
    sq = jnp.sum(x * x, axis=-1)

    def sqdist_to(c):
        return jnp.where(mask, jnp.maximum(sq - 2 * jnp.matmul(x, c, precision=_HIGHEST) + c @ c, 0), 0)

    key, first_key = jax.random.split(key)
    first = x[jax.random.choice(first_key, P, p=uniform)]
    centroids = jnp.zeros((num_clusters, x.shape[1]), x.dtype).at[0].set(first)

    def seed(j, state):  # D² sampling; all points covered already: uniform over valid points
        centroids, closest, key = state
        key, sub = jax.random.split(key)
        total = jnp.sum(closest)
        p = jnp.where(total > 0, closest / jnp.where(total > 0, total, 1), uniform)
        c = x[jax.random.choice(sub, P, p=p)]
        return centroids.at[j].set(c), jnp.minimum(closest, sqdist_to(c)), key

    centroids, _, _ = jax.lax.fori_loop(1, num_clusters, seed, (centroids, sqdist_to(first), key))

    def assign(centroids):
        d2 = sq[:, None] - 2 * jnp.matmul(x, centroids.T, precision=_HIGHEST) + jnp.sum(centroids**2, -1)[None]
        return jnp.argmin(d2, axis=1)

    def lloyd(_, centroids):
        member = (assign(centroids)[:, None] == jnp.arange(num_clusters)[None]) & mask[:, None]
        count = jnp.sum(member, axis=0)
        sums = jnp.matmul(member.T.astype(x.dtype), x, precision=_HIGHEST)
        return jnp.where(count[:, None] > 0, sums / jnp.maximum(count, 1)[:, None].astype(x.dtype), centroids)

    centroids = jax.lax.fori_loop(0, iterations, lloyd, centroids)
    return _canonical(jnp.where(mask, assign(centroids), num_clusters), num_clusters)


# ----------------------------------------------------------------------------- public kernels


@jax.jit
def token_attention(emb, mask) -> jax.Array:
    """FedDTPT's token attention weights (FedDTPT's server, step 2).

    ``score[c, l] = Σ_{c' ≠ c} Σ_{l' valid} cos(emb[c, l], emb[c', l'])``, then
    ``weights[c] = softmax(score[c])`` over the valid tokens of prompt ``c``. Computed in
    ``O(C·L·d)`` as ``unit[c, l] · (S - S_c)`` with ``S_c`` the sum of client ``c``'s unit
    embeddings. A zero embedding has cosine 0 with everything; with one client every score
    is 0 and the weights are uniform.

    Args:
        emb: ``[C, L, d]`` token embeddings of every client's prompt.
        mask: ``[C, L]`` bool, True on real (non-padded) tokens.

    Returns:
        ``[C, L]`` weights: each client's valid entries sum to 1, padded entries are 0 (a
        client with no valid token has all zeros).
    """
    emb = _float("emb", emb)
    if emb.ndim != 3:
        raise ValueError(f"emb must have shape [C, L, d], got {tuple(emb.shape)}")
    mask = jnp.asarray(mask).astype(bool)
    if mask.shape != emb.shape[:2]:
        raise ValueError(f"mask must have shape {tuple(emb.shape[:2])}, got {tuple(mask.shape)}")
    unit = jnp.where(mask[..., None], _unit(jnp.where(mask[..., None], emb, 0)), 0)
    per_client = jnp.sum(unit, axis=1)  # [C, d]
    others = jnp.sum(per_client, axis=0, keepdims=True) - per_client
    score = jnp.einsum("cld,cd->cl", unit, others, precision=_HIGHEST)
    score = jnp.where(mask, score, -jnp.inf)
    top = jnp.max(score, axis=1, keepdims=True)
    e = jnp.where(mask, jnp.exp(score - jnp.where(jnp.isfinite(top), top, 0)), 0)
    total = jnp.sum(e, axis=1, keepdims=True)
    return e / jnp.where(total > 0, total, 1)


@jax.jit
def pairwise_distances(emb_flat, mask_flat) -> jax.Array:
    """Euclidean distances between all points (no normalisation), ``[P, P]``.

    Args:
        emb_flat: ``[P, d]`` points.
        mask_flat: ``[P]`` bool, True on valid points.

    Returns:
        ``[P, P]`` distances, exactly symmetric with a zero diagonal; entries in a padded
        row or column are ``+inf``.
    """
    x, mask = _points(emb_flat, mask_flat)
    return jnp.where(mask[:, None] & mask[None, :], _distances(x, mask), jnp.inf)


@jax.jit
def k_distances(emb_flat, mask_flat, k) -> jax.Array:
    """The sorted k-distance curve used to pick DBSCAN's ε.

    The k-distance of a valid point is the Euclidean distance (no normalisation) to its
    k-th nearest *other* valid point (``k = 1``: nearest neighbour). ``k`` is clipped to
    ``[1, n - 1]`` for ``n`` valid points; a lone valid point has k-distance 0.

    Args:
        emb_flat: ``[P, d]`` points.
        mask_flat: ``[P]`` bool, True on valid points.
        k: int (may be traced).

    Returns:
        ``[P]``: the valid points' k-distances in ascending order, then ``+inf`` padding.
    """
    x, mask = _points(emb_flat, mask_flat)
    return _k_distance_curve(_distances(x, mask), mask, k)


@jax.jit
def knee_epsilon(emb_flat, mask_flat, k) -> jax.Array:
    """DBSCAN's ε by knee detection on the sorted k-distance curve (FedDTPT's server, step 3).

    Kneedle (Satopää et al. 2011) for a convex increasing curve: with the ``n`` sorted
    k-distances ``y_0 <= ... <= y_{n-1}`` (:func:`k_distances`) and ``x_i = i / (n - 1)``,
    ``ŷ_i = (y_i - y_0) / (y_{n-1} - y_0)`` (0 when the curve is flat), the knee is the
    point furthest below the chord from the first to the last point, ``argmax_i x_i - ŷ_i``
    (first on ties), and ε = ``y_knee``. If no point lies strictly below the chord (a linear
    or concave curve has no knee) ε is the median k-distance. ε = 0 without valid points.

    Args:
        emb_flat: ``[P, d]`` points (Euclidean distances, no normalisation here).
        mask_flat: ``[P]`` bool, True on valid points.
        k: int, the neighbour rank; use ``min_samples - 1`` so that a point is a DBSCAN
            core point exactly when its k-distance is ``<= ε``.

    Returns:
        Scalar ε.
    """
    x, mask = _points(emb_flat, mask_flat)
    return _knee(_k_distance_curve(_distances(x, mask), mask, k), jnp.sum(mask))


@jax.jit
def dbscan(emb_flat, mask_flat, eps, min_samples) -> jax.Array:
    """DBSCAN (Ester et al. 1996) with sklearn's semantics, vectorised (FedDTPT's server, step 4).

    Euclidean metric on the given points (no normalisation). A point's neighbourhood is
    every valid point at distance ``<= eps``, itself included; core points have at least
    ``min_samples`` neighbours. Clusters are the connected components of the core points'
    neighbourhood graph (label propagation with pointer jumping in a ``lax.while_loop``);
    a non-core point with a core neighbour (border point) joins the cluster of its nearest
    core neighbour (sklearn assigns it to whichever cluster reaches it first, so the two
    may differ on border points only); every other point is noise.

    Args:
        emb_flat: ``[P, d]`` points.
        mask_flat: ``[P]`` bool, True on valid points.
        eps: scalar neighbourhood radius (may be traced).
        min_samples: int, neighbours (self included) needed to be a core point.

    Returns:
        ``[P]`` int32 labels: clusters numbered 0, 1, ... in order of their smallest point
        index; -1 for noise and padded points.
    """
    x, mask = _points(emb_flat, mask_flat)
    return _dbscan(_distances(x, mask), mask, eps, min_samples)[0]


@functools.partial(jax.jit, static_argnames=("num_clusters", "iterations"))
def kmeans(emb_flat, mask_flat, key, *, num_clusters: int, iterations: int = 10) -> jax.Array:
    """k-means with k-means++ seeding and a fixed number of Lloyd steps (FedDTPT's ablation).

    Euclidean on the given points. A cluster that empties keeps its old centroid.

    Args:
        emb_flat: ``[P, d]`` points.
        mask_flat: ``[P]`` bool, True on valid points (padded points never move a centroid).
        key: ``jax.random`` key for the seeding.
        num_clusters: static k.
        iterations: static number of Lloyd iterations.

    Returns:
        ``[P]`` int32 labels, numbered 0.. in order of smallest point index (empty clusters
        dropped); -1 on padded points.
    """
    if num_clusters < 1:
        raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
    x, mask = _points(emb_flat, mask_flat)
    return _kmeans(x, mask, num_clusters, key, iterations)[0]


# ----------------------------------------------------------------------------- aggregation


def _representatives(labels: jax.Array, weights: jax.Array, valid: jax.Array) -> jax.Array:
    """``[P]`` bool: the highest-weight member of every cluster (ties: smallest index)."""
    P = labels.shape[0]
    idx = jnp.arange(P)
    segment = jnp.where(valid & (labels >= 0), labels, P)
    best = jax.ops.segment_max(weights, segment, num_segments=P + 1)
    is_best = (segment < P) & (weights == best[segment])
    winner = jax.ops.segment_min(jnp.where(is_best, idx, P), segment, num_segments=P + 1)
    return (segment < P) & (idx == winner[segment])


def _select(candidate, clustered, weights, C: int, L: int, max_length: int, limit):
    """Keep at most ``min(limit, max_length)`` candidates (clustered first, then higher
    weight, then smaller flat index) and order them by (position, client).

    Returns the flat indices ``[max_length]`` and their mask (a prefix)."""
    P = C * L
    idx = jnp.arange(P)
    ranked = jnp.lexsort((idx, -weights, (~clustered).astype(jnp.int32), (~candidate).astype(jnp.int32)))
    if max_length > P:
        ranked = jnp.concatenate([ranked, jnp.zeros((max_length - P,), ranked.dtype)])
        ok = jnp.arange(max_length) < P
    else:
        ranked, ok = ranked[:max_length], jnp.ones((max_length,), bool)
    ok = ok & candidate[ranked] & (jnp.arange(max_length) < limit)
    position, client = ranked % L, ranked // L
    order = jnp.argsort(jnp.where(ok, position * C + client, P + jnp.arange(max_length)))
    return ranked[order], ok[order]


@functools.partial(
    jax.jit,
    static_argnames=("method", "max_length", "keep_noise", "normalize", "num_clusters", "kmeans_iterations"),
)
def aggregate(
    tokens,
    mask,
    emb,
    vocab_emb=None,
    *,
    method: str = "cluster",
    max_length: int | None = None,
    min_samples=2,
    knee_k=None,
    eps=None,
    keep_noise: bool = True,
    normalize: bool = True,
    num_clusters: int = 8,
    kmeans_iterations: int = 10,
    key=None,
    pad_id=0,
) -> GlobalPrompt:
    """FedDTPT's server: merge the clients' discrete prompts into one global prompt (Wu et al., 2024).

    Methods (the paper's method and its three ablations):

    * ``"cluster"`` (FedDTPT): :func:`token_attention` weights; DBSCAN over all valid token
      embeddings with ε from :func:`knee_epsilon` (``k = knee_k``, default
      ``min_samples - 1``) unless ``eps`` is given; the highest-weight token of each
      cluster; noise tokens are singleton clusters if ``keep_noise`` (ranked after real
      clusters when the prompt is over ``max_length``).
    * ``"kmeans"``: the same with :func:`kmeans` (``num_clusters``, ``key``) instead of DBSCAN.
    * ``"no-cluster"``: the ``round(mean client prompt length)`` highest-weight tokens.
    * ``"fedavg"``: at every position, average the embeddings of the clients whose prompt
      has that position, and map the average to the nearest row (Euclidean) of
      ``vocab_emb``; positions no client has are skipped.

    Chosen tokens are ordered by original position (column ``l``), ties by client index.
    Over ``max_length`` the highest-ranked ones are kept (clusters before noise, higher
    weight, smaller flat index). Padded client entries are never chosen.

    Args:
        tokens: ``[C, L]`` int token ids of every client's prompt.
        mask: ``[C, L]`` bool, True on real tokens.
        emb: ``[C, L, d]`` their embeddings (the caller's embedding layer).
        vocab_emb: ``[V, d]`` vocabulary embedding table, required by ``"fedavg"``; row
            ``v`` embeds token id ``v``.
        method: static, one of :data:`METHODS`.
        max_length: static length of the padded output (default ``L``).
        min_samples: DBSCAN's ``min_samples`` (self included; default 2: a token and one
            similar token form a cluster).
        knee_k: k of the k-distance curve (default ``min_samples - 1``).
        eps: DBSCAN ε; ``None`` uses the knee.
        keep_noise: static; keep DBSCAN noise tokens as singleton clusters.
        normalize: static; L2-normalise embeddings before DBSCAN/k-means (cosine geometry).
        num_clusters: static k for ``"kmeans"``.
        kmeans_iterations: static number of Lloyd steps for ``"kmeans"``.
        key: ``jax.random`` key, required by ``"kmeans"``.
        pad_id: token id written on the output's padded entries.

    Returns:
        A :class:`GlobalPrompt` (tokens, mask, positions, clients and diagnostics).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be an integer array [C, L], got {tokens.dtype}{tuple(tokens.shape)}")
    C, L = tokens.shape
    emb = _float("emb", emb)
    if emb.ndim != 3 or emb.shape[:2] != (C, L):
        raise ValueError(f"emb must have shape ({C}, {L}, d), got {tuple(emb.shape)}")
    mask = jnp.asarray(mask).astype(bool)
    if mask.shape != (C, L):
        raise ValueError(f"mask must have shape ({C}, {L}), got {tuple(mask.shape)}")
    max_length = L if max_length is None else int(max_length)
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    P, d = C * L, emb.shape[2]
    emb = jnp.where(mask[..., None], emb, 0)
    weights = token_attention(emb, mask)
    no_labels = jnp.full((C, L), -1, jnp.int32)
    nan = jnp.asarray(jnp.nan, emb.dtype)
    zero = jnp.asarray(0, jnp.int32)

    if method == "fedavg":
        if vocab_emb is None:
            raise ValueError('method="fedavg" needs vocab_emb, the [V, d] embedding table')
        vocab = _float("vocab_emb", vocab_emb)
        if vocab.ndim != 2 or vocab.shape[1] != d:
            raise ValueError(f"vocab_emb must have shape [V, {d}], got {tuple(vocab.shape)}")
        count = jnp.sum(mask, axis=0)  # [L]
        average = jnp.sum(emb, axis=0) / jnp.maximum(count, 1)[:, None].astype(emb.dtype)
        d2 = jnp.sum(vocab * vocab, -1)[None, :] - 2 * jnp.matmul(average, vocab.T, precision=_HIGHEST)
        nearest = jnp.argmin(d2, axis=1).astype(tokens.dtype)
        order = jnp.argsort(count == 0)  # positions some client has, in order (stable)
        if max_length > L:
            order = jnp.concatenate([order, jnp.zeros((max_length - L,), order.dtype)])
            ok = jnp.arange(max_length) < L
        else:
            order, ok = order[:max_length], jnp.ones((max_length,), bool)
        ok = ok & (count[order] > 0)
        return GlobalPrompt(
            tokens=jnp.where(ok, nearest[order], jnp.asarray(pad_id, tokens.dtype)),
            mask=ok,
            positions=jnp.where(ok, order, -1).astype(jnp.int32),
            clients=jnp.full((max_length,), -1, jnp.int32),
            weights=weights,
            labels=no_labels,
            eps=nan,
            num_clusters=zero,
        )

    valid = mask.reshape(P)
    flat_w = weights.reshape(P)
    points = emb.reshape(P, d)
    if normalize:
        points = _unit(points)
    labels, n_clusters, eps_used = no_labels.reshape(P), zero, nan

    if method == "no-cluster":
        lengths = jnp.sum(mask, axis=1)
        clients_with_tokens = jnp.maximum(jnp.sum(lengths > 0), 1)
        limit = jnp.round(jnp.sum(lengths) / clients_with_tokens).astype(jnp.int32)
        candidate, clustered = valid, valid
    else:
        if method == "cluster":
            dist = _distances(points, valid)
            if eps is None:
                k = (min_samples - 1) if knee_k is None else knee_k
                eps_used = _knee(_k_distance_curve(dist, valid, k), jnp.sum(valid))
            else:
                eps_used = jnp.asarray(eps, emb.dtype)
            labels, n_clusters = _dbscan(dist, valid, eps_used, min_samples)
        else:  # kmeans
            if key is None:
                raise ValueError('method="kmeans" needs a jax.random key')
            if num_clusters < 1:
                raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
            labels, n_clusters = _kmeans(points, valid, num_clusters, key, kmeans_iterations)
        clustered = _representatives(labels, flat_w, valid)
        noise = valid & (labels < 0)
        candidate = clustered | noise if keep_noise else clustered
        limit = max_length

    chosen, ok = _select(candidate, clustered, flat_w, C, L, max_length, limit)
    flat_tokens = tokens.reshape(P)
    return GlobalPrompt(
        tokens=jnp.where(ok, flat_tokens[chosen], jnp.asarray(pad_id, tokens.dtype)),
        mask=ok,
        positions=jnp.where(ok, chosen % L, -1).astype(jnp.int32),
        clients=jnp.where(ok, chosen // L, -1).astype(jnp.int32),
        weights=weights,
        labels=labels.reshape(C, L),
        eps=eps_used,
        num_clusters=n_clusters,
    )
