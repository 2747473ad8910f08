"""FedDTPT server aggregation (asyndbt_jax/feddtpt/server.py) against NumPy / sklearn references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from asyndbt_jax.feddtpt import (
    METHODS,
    aggregate,
    dbscan,
    k_distances,
    kmeans,
    knee_epsilon,
    pairwise_distances,
    token_attention,
)
from asyndbt_jax.feddtpt.server import _knee

SEEDS = st.integers(0, 2**31 - 1)


# ----------------------------------------------------------------------------- NumPy references


def np_token_attention(emb, mask):
    """Loop transcription of FedDTPT's attention: Σ cos to other clients' tokens, softmax per prompt."""
    emb = np.asarray(emb, np.float64)
    C, L, _ = emb.shape
    norm = np.linalg.norm(emb, axis=-1)

    def cos(a, b):
        return 0.0 if norm[a] == 0 or norm[b] == 0 else float(emb[a] @ emb[b] / (norm[a] * norm[b]))

    out = np.zeros((C, L))
    for c in range(C):
        valid = [l for l in range(L) if mask[c, l]]
        if not valid:
            continue
        score = np.array(
            [sum(cos((c, l), (o, m)) for o in range(C) if o != c for m in range(L) if mask[o, m]) for l in valid]
        )
        e = np.exp(score - score.max())
        out[c, valid] = e / e.sum()
    return out


def np_distances(x):
    x = np.asarray(x, np.float64)
    return np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))


def np_k_distance_curve(x, mask, k):
    xv = np.asarray(x, np.float64)[np.asarray(mask, bool)]
    n = len(xv)
    if n <= 1:
        return np.zeros(n)
    D = np_distances(xv)
    kk = min(max(k, 1), n - 1)
    return np.sort([np.sort(np.delete(D[i], i))[kk - 1] for i in range(n)])


def np_knee_candidates(curve, tol=1e-4):
    """Every ε the knee rule could return given float32 round-off (ties within ``tol``)."""
    n = len(curve)
    if n == 0:
        return [0.0]
    x = np.arange(n) / max(n - 1, 1)
    span = curve[-1] - curve[0]
    y = (curve - curve[0]) / span if span > 0 else np.zeros(n)
    diff = x - y
    best = diff.max()
    out = [curve[j] for j in range(n) if diff[j] >= best - tol and diff[j] > -tol]
    if best <= tol:
        out.append(np.median(curve))
    return out


def np_canonical_ok(labels):
    """Clusters numbered 0.. in order of their smallest point index."""
    seen = []
    for lab in labels:
        if lab >= 0 and lab not in seen:
            seen.append(lab)
    return seen == list(range(len(seen)))


def check_against_sklearn(x, mask, eps, min_samples, labels):
    x, mask, labels = np.asarray(x, np.float64), np.asarray(mask, bool), np.asarray(labels)
    assert np.all(labels[~mask] == -1)
    assert np_canonical_ok(labels)
    ours = labels[mask]
    if not mask.any():
        return
    xv = x[mask]
    sklearn_cluster = pytest.importorskip("sklearn.cluster")  # the reference only; not a dependency
    sk = sklearn_cluster.DBSCAN(eps=eps, min_samples=min_samples, metric="euclidean").fit(xv)
    theirs = sk.labels_
    core = np.zeros(len(xv), bool)
    core[sk.core_sample_indices_] = True
    # noise identical
    np.testing.assert_array_equal(ours == -1, theirs == -1)
    # same partition of the core points (a bijection between labels)
    pairs = set(zip(ours[core].tolist(), theirs[core].tolist()))
    assert len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs})
    assert len(set(ours[ours >= 0].tolist())) == len(set(theirs[theirs >= 0].tolist()))
    # border points lie in the cluster of some core neighbour
    D = np_distances(xv)
    for i in np.nonzero(~core & (ours >= 0))[0]:
        neighbour_clusters = set(ours[core & (D[i] <= eps)].tolist())
        assert ours[i] in neighbour_clusters


def blobs(rng, P, d, n_centres, spread, noise_fraction, scale=4.0):
    centres = rng.uniform(-scale, scale, size=(n_centres, d))
    which = rng.integers(0, n_centres, size=P)
    x = centres[which] + spread * rng.normal(size=(P, d))
    noisy = rng.random(P) < noise_fraction
    x[noisy] = rng.uniform(-scale - 1, scale + 1, size=(noisy.sum(), d))
    return x.astype(np.float32)


def far_from_eps(x, mask, eps, margin=1e-3):
    D = np_distances(np.asarray(x, np.float64)[mask])
    return not np.any(np.abs(D - eps) < margin)


# ----------------------------------------------------------------------------- token_attention


@given(seed=SEEDS, C=st.integers(1, 4), L=st.integers(1, 5), d=st.sampled_from([1, 3, 6]))
def test_token_attention_matches_numpy(seed, C, L, d):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(C, L, d)).astype(np.float32)
    emb[rng.random((C, L)) < 0.1] = 0.0  # zero embeddings: cosine 0 with everything
    mask = rng.random((C, L)) < 0.75
    got = np.asarray(token_attention(emb, mask))
    np.testing.assert_allclose(got, np_token_attention(emb, mask), rtol=1e-4, atol=1e-5)
    assert np.all(got[~mask] == 0)
    rows = mask.any(1)
    np.testing.assert_allclose(got.sum(1)[rows], 1.0, rtol=1e-5)


def test_token_attention_ignores_padded_values():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3, 4, 5)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], bool)
    poisoned = emb.copy()
    poisoned[~mask] = np.nan
    np.testing.assert_allclose(np.asarray(token_attention(poisoned, mask)), np.asarray(token_attention(emb, mask)))
    assert np.all(np.isfinite(np.asarray(token_attention(poisoned, mask))))


def test_token_attention_favours_tokens_shared_with_other_clients():
    e = np.eye(4, dtype=np.float32)
    # client 0: [shared, private]; client 1: [shared, other private]
    emb = np.stack([np.stack([e[0], e[1]]), np.stack([e[0], e[2]])])
    w = np.asarray(token_attention(emb, np.ones((2, 2), bool)))
    assert w[0, 0] > w[0, 1] and w[1, 0] > w[1, 1]
    np.testing.assert_allclose(w[0], [np.e / (np.e + 1), 1 / (np.e + 1)], rtol=1e-5)


# ----------------------------------------------------------------------------- knee_epsilon


@given(seed=SEEDS, k=st.integers(1, 4), n_centres=st.integers(1, 4), spread=st.floats(0.05, 1.0))
def test_k_distances_and_knee_match_numpy(seed, k, n_centres, spread):
    rng = np.random.default_rng(seed)
    P, d = 24, 3
    x = blobs(rng, P, d, n_centres, spread, noise_fraction=0.2)
    mask = rng.random(P) < 0.85
    ref = np_k_distance_curve(x, mask, k)
    n = int(mask.sum())
    curve = np.asarray(k_distances(x, mask, k))
    np.testing.assert_allclose(curve[:n], ref, rtol=1e-4, atol=2e-4)
    assert np.all(np.isinf(curve[n:]))
    eps = float(knee_epsilon(x, mask, k))
    assert any(np.isclose(eps, c, rtol=1e-4, atol=2e-4) for c in np_knee_candidates(ref)), (eps, ref)


def test_knee_separates_a_tight_cluster_from_outliers():
    rng = np.random.default_rng(1)
    tight = rng.normal(scale=0.01, size=(12, 2))
    outliers = np.array([[1.0, 0], [0, 3.0], [-6.0, 0]])
    x = np.concatenate([tight, outliers]).astype(np.float32)
    mask = np.ones(len(x), bool)
    eps = float(knee_epsilon(x, mask, 1))
    nn = np_k_distance_curve(x, mask, 1)
    assert np.isclose(eps, nn[11], rtol=1e-4)  # the largest 1-NN distance inside the cluster
    labels = np.asarray(dbscan(x, mask, eps, 2))
    np.testing.assert_array_equal(labels, [0] * 12 + [-1] * 3)


def test_knee_edge_cases():
    x = np.zeros((4, 2), np.float32)
    assert float(knee_epsilon(x, np.zeros(4, bool), 1)) == 0.0
    assert float(knee_epsilon(x, np.array([0, 1, 0, 0], bool), 1)) == 0.0
    # a flat curve: its value; a convex one: the last point before the jump
    line = np.array([[0.0], [4.0], [8.0], [12.0]], np.float32)  # 1-NN distances 4, 4, 4, 4
    assert np.isclose(float(knee_epsilon(line, np.ones(4, bool), 1)), 4.0)
    assert np.isclose(float(_knee(jnp.array([1.0, 1.0, 1.1, 1.2, 9.0, jnp.inf]), 5)), 1.2)
    # a concave curve has no point below its chord, hence no knee: the median
    assert np.isclose(float(_knee(jnp.array([1.0, 5.0, 6.0, 6.5, jnp.inf]), 4)), 5.5)
    assert np.isclose(float(_knee(jnp.array([1.0, 5.0, 6.0, jnp.inf]), 3)), 5.0)


def test_pairwise_distances_match_numpy():
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(10, 7)) + 50).astype(np.float32)  # far from the origin: centring matters
    mask = rng.random(10) < 0.8
    got = np.asarray(pairwise_distances(x, mask))
    ref = np_distances(x)
    both = mask[:, None] & mask[None]
    np.testing.assert_allclose(got[both], ref[both], rtol=1e-4, atol=1e-4)
    assert np.all(np.isinf(got[~both]))
    np.testing.assert_array_equal(got, got.T)


# ----------------------------------------------------------------------------- dbscan


def test_dbscan_matches_sklearn_on_hand_built_clusters():
    rng = np.random.default_rng(3)
    a = rng.normal(scale=0.1, size=(8, 2)) + [0, 0]
    b = rng.normal(scale=0.1, size=(6, 2)) + [3, 0]
    c = rng.normal(scale=0.1, size=(5, 2)) + [0, 3]
    noise = np.array([[6.0, 6.0], [-4.0, 2.0], [2.0, -5.0]])
    border = np.array([[0.0, 0.75]])  # within 0.45 of a's edge, not dense itself
    x = np.concatenate([noise[:1], a, b, border, c, noise[1:]]).astype(np.float32)
    perm = rng.permutation(len(x))
    x = x[perm]
    mask = np.ones(len(x), bool)
    for eps, min_samples in [(0.5, 4), (0.5, 2), (0.35, 3), (1.0, 5), (5.0, 3)]:
        assert far_from_eps(x, mask, eps)
        labels = np.asarray(dbscan(x, mask, eps, min_samples))
        check_against_sklearn(x, mask, eps, min_samples, labels)
    labels = np.asarray(dbscan(x, mask, 0.5, 4))
    assert labels.max() + 1 == 3 and np.sum(labels == -1) == 3


@given(
    seed=SEEDS,
    n_centres=st.integers(1, 4),
    spread=st.floats(0.05, 0.6),
    eps=st.floats(0.1, 1.5),
    min_samples=st.integers(1, 6),
    noise_fraction=st.floats(0.0, 0.4),
)
def test_dbscan_matches_sklearn_on_random_blobs(seed, n_centres, spread, eps, min_samples, noise_fraction):
    rng = np.random.default_rng(seed)
    P = 40
    x = blobs(rng, P, 2, n_centres, spread, noise_fraction)
    mask = rng.random(P) < 0.85
    assume(far_from_eps(x, mask, eps))
    labels = np.asarray(dbscan(x, mask, eps, min_samples))
    check_against_sklearn(x, mask, eps, min_samples, labels)


def test_dbscan_border_point_reachable_from_two_clusters_joins_the_nearest_core():
    line = np.array([0.0, 0.05, 0.1, 0.15, 0.2, 0.62, 1.0, 1.1, 1.2, 1.3, 1.4], np.float32)
    x = np.stack([line, np.zeros_like(line)], 1)
    mask = np.ones(len(x), bool)
    labels = np.asarray(dbscan(x, mask, 0.45, 4))
    np.testing.assert_array_equal(labels, [0] * 5 + [1] * 6)  # 0.62 is 0.38 from 1.0, 0.42 from 0.2
    check_against_sklearn(x, mask, 0.45, 4, labels)


def test_dbscan_ignores_padded_points():
    x = np.array([[0, 0], [0.1, 0], [5, 5], [0.05, 0.05], [5.1, 5]], np.float32)
    mask = np.array([1, 1, 0, 1, 0], bool)
    np.testing.assert_array_equal(np.asarray(dbscan(x, mask, 0.3, 2)), [0, 0, -1, 0, -1])
    poisoned = x.copy()
    poisoned[~mask] = np.nan
    np.testing.assert_array_equal(np.asarray(dbscan(poisoned, mask, 0.3, 2)), [0, 0, -1, 0, -1])


def test_dbscan_long_chain_converges():
    x = np.stack([np.arange(60, dtype=np.float32), np.zeros(60, np.float32)], 1)
    labels = np.asarray(dbscan(x[::-1].copy(), np.ones(60, bool), 1.01, 3))
    np.testing.assert_array_equal(labels, np.zeros(60))


# ----------------------------------------------------------------------------- kmeans


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(4)
    truth = np.repeat(np.arange(4), 6)
    centres = 10 * np.eye(4, 3)
    x = (centres[truth] + 0.1 * rng.normal(size=(24, 3))).astype(np.float32)
    perm = rng.permutation(24)
    x, truth = x[perm], truth[perm]
    mask = np.ones(24, bool)
    mask[[2, 7]] = False
    labels = np.asarray(kmeans(x, mask, jax.random.key(0), num_clusters=4))
    assert np.all(labels[~mask] == -1) and np_canonical_ok(labels)
    pairs = set(zip(labels[mask].tolist(), truth[mask].tolist()))
    assert len(pairs) == 4 and len({a for a, _ in pairs}) == 4


# ----------------------------------------------------------------------------- aggregate

PAD_TOKEN = 999
CONCEPT = {10: 0, 11: 0, 12: 0, 20: 1, 21: 1, 22: 1, 30: 2, 31: 2, 32: 2, 40: 3, 41: 3, 50: 5}


def hand_built():
    """Three clients whose tokens are noisy copies of 4 shared concepts, plus one unique token."""
    rng = np.random.default_rng(5)
    tokens = np.array(
        [
            [10, 20, 30, PAD_TOKEN, PAD_TOKEN],
            [21, 11, 31, 40, PAD_TOKEN],
            [12, 22, 41, 32, 50],
        ]
    )
    mask = tokens != PAD_TOKEN
    basis = np.eye(8)
    emb = np.zeros((3, 5, 8))
    for (c, l), t in np.ndenumerate(tokens):
        if t != PAD_TOKEN:
            emb[c, l] = basis[CONCEPT[t]] + 0.05 * rng.normal(size=8)
    # padding looks like a perfect copy of concept 0 (it would win its cluster if counted)
    emb[~mask] = 3 * basis[0]
    return tokens, mask, emb.astype(np.float32)


def expected_cluster_prompt(tokens, mask, emb, keep_noise=True):
    w = np_token_attention(emb, mask)
    chosen = []
    for concept in sorted(set(CONCEPT.values())):
        members = [(c, l) for (c, l), t in np.ndenumerate(tokens) if mask[c, l] and CONCEPT[t] == concept]
        if concept == 5 and not keep_noise:
            continue
        chosen.append(max(members, key=lambda cl: w[cl]))
    chosen.sort(key=lambda cl: (cl[1], cl[0]))
    return [int(tokens[cl]) for cl in chosen], chosen


def prompt(out):
    m = np.asarray(out.mask)
    return np.asarray(out.tokens)[m].tolist()


def test_aggregate_cluster_on_hand_built_prompts():
    tokens, mask, emb = hand_built()
    out = aggregate(tokens, mask, emb)
    want, where = expected_cluster_prompt(tokens, mask, emb)
    assert prompt(out) == want
    assert int(out.num_clusters) == 4
    labels = np.asarray(out.labels)
    assert np.all(labels[~mask] == -1) and labels[2, 4] == -1  # unique token 50 is noise
    for concept in range(4):  # one DBSCAN cluster per concept
        assert len({labels[cl] for cl, t in np.ndenumerate(tokens) if mask[cl] and CONCEPT[t] == concept}) == 1
    np.testing.assert_array_equal(np.asarray(out.positions)[: len(want)], [l for _, l in where])
    np.testing.assert_array_equal(np.asarray(out.clients)[: len(want)], [c for c, _ in where])
    np.testing.assert_allclose(np.asarray(out.weights), np_token_attention(emb, mask), rtol=1e-4, atol=1e-6)
    # noise dropped, or ranked after the clusters when the prompt is too long
    assert (
        prompt(aggregate(tokens, mask, emb, keep_noise=False)) == expected_cluster_prompt(tokens, mask, emb, False)[0]
    )
    assert 50 not in prompt(aggregate(tokens, mask, emb, max_length=4))
    assert len(prompt(aggregate(tokens, mask, emb, max_length=4))) == 4


def test_aggregate_kmeans_with_one_cluster_per_concept_agrees_with_dbscan():
    tokens, mask, emb = hand_built()
    out = aggregate(tokens, mask, emb, method="kmeans", num_clusters=5, key=jax.random.key(0))
    assert int(out.num_clusters) == 5
    assert prompt(out) == expected_cluster_prompt(tokens, mask, emb)[0]


def test_aggregate_no_cluster_keeps_the_top_weighted_tokens():
    tokens, mask, emb = hand_built()
    out = aggregate(tokens, mask, emb, method="no-cluster")
    w = np_token_attention(emb, mask)
    n = int(np.round(mask.sum() / 3))  # mean prompt length: (3 + 4 + 5) / 3 = 4
    top = sorted(np.argsort(-w.ravel(), kind="stable")[:n], key=lambda i: (i % 5, i // 5))
    assert prompt(out) == [int(tokens.ravel()[i]) for i in top]


def test_aggregate_fedavg_maps_position_averages_to_nearest_tokens():
    rng = np.random.default_rng(6)
    V, d = 12, 6
    vocab = rng.normal(size=(V, d)).astype(np.float32)
    tokens = np.array([[1, 2, 3, 0], [1, 2, 4, 5], [1, 7, 3, 0]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]], bool)
    emb = vocab[tokens]
    emb[~mask] = 100.0  # padding must not enter the averages
    out = aggregate(tokens, mask, emb, vocab, method="fedavg")
    avg = np.stack([emb[mask[:, l], l].mean(0) for l in range(4)])
    ref = np.argmin(((avg[:, None] - vocab[None]) ** 2).sum(-1), 1)
    assert prompt(out) == ref.tolist()
    assert prompt(out)[0] == 1 and prompt(out)[3] == 5  # unanimous / single-client positions
    np.testing.assert_array_equal(np.asarray(out.positions), [0, 1, 2, 3])


def test_aggregate_fedavg_skips_positions_no_client_has():
    vocab = np.eye(4, dtype=np.float32)
    tokens = np.array([[1, 0, 2], [1, 0, 3]])
    mask = np.array([[1, 0, 1], [1, 0, 1]], bool)
    out = aggregate(tokens, mask, vocab[tokens], vocab, method="fedavg", max_length=4, pad_id=-1)
    np.testing.assert_array_equal(np.asarray(out.mask), [1, 1, 0, 0])
    np.testing.assert_array_equal(np.asarray(out.positions), [0, 2, -1, -1])
    assert np.asarray(out.tokens)[2:].tolist() == [-1, -1]


@pytest.mark.parametrize("method", METHODS)
@given(seed=SEEDS)
def test_aggregate_returns_a_valid_prompt(method, seed):
    rng = np.random.default_rng(seed)
    C, L, d, V, max_length = 4, 6, 5, 30, 6
    vocab = rng.normal(size=(V, d)).astype(np.float32)
    tokens = rng.integers(0, V, size=(C, L))
    emb = vocab[tokens] + 0.3 * rng.normal(size=(C, L, d)).astype(np.float32)
    mask = rng.random((C, L)) < 0.7
    mask[:, 0] = True
    tokens[~mask] = PAD_TOKEN
    emb[~mask] = emb[0, 0]  # padding duplicates a real token
    out = aggregate(
        tokens, mask, emb, vocab, method=method, max_length=max_length, num_clusters=5, key=jax.random.key(seed)
    )
    m, toks = np.asarray(out.mask), np.asarray(out.tokens)
    pos, cli = np.asarray(out.positions), np.asarray(out.clients)
    n = int(m.sum())
    assert 1 <= n <= max_length and np.all(m[:n]) and not np.any(m[n:])
    assert PAD_TOKEN not in toks[m]
    assert np.all(pos[~m] == -1) and np.all(cli[~m] == -1)
    w = np_token_attention(emb, mask)
    if method == "fedavg":
        assert np.all(np.diff(pos[m]) > 0)
        return
    assert np.all(mask[cli[m], pos[m]])  # only real client tokens
    np.testing.assert_array_equal(toks[m], tokens[cli[m], pos[m]])
    keys = pos[m] * C + cli[m]
    assert np.all(np.diff(keys) > 0)  # original order, no token twice
    labels = np.asarray(out.labels)
    if method == "no-cluster":
        assert n == min(max_length, round(mask.sum() / C))
        others = np.ones((C, L), bool)
        others[cli[m], pos[m]] = False
        assert w[cli[m], pos[m]].min() >= w[mask & others].max(initial=0) - 1e-6
        return
    chosen_labels = labels[cli[m], pos[m]]
    clustered = chosen_labels[chosen_labels >= 0]
    assert len(set(clustered.tolist())) == len(clustered)  # one token per cluster
    for lab, c, l in zip(chosen_labels, cli[m], pos[m]):
        if lab >= 0:  # the representative is the highest-weight member
            assert w[c, l] >= w[labels == lab].max() - 1e-6
    k = int(out.num_clusters)
    if method == "kmeans":
        assert n == min(k, max_length) and k <= 5 and np.all(labels[mask] >= 0)
    else:
        assert n == min(max_length, k + int(np.sum(mask & (labels == -1))))


@given(seed=SEEDS, eps=st.floats(0.2, 1.2), min_samples=st.integers(1, 4))
def test_aggregate_cluster_labels_are_sklearn_dbscan_on_unit_embeddings(seed, eps, min_samples):
    rng = np.random.default_rng(seed)
    C, L, d = 4, 6, 5
    centres = rng.normal(size=(5, d))
    tokens = rng.integers(0, 5, size=(C, L))
    emb = (centres[tokens] + 0.3 * rng.normal(size=(C, L, d))).astype(np.float32)
    mask = rng.random((C, L)) < 0.7
    points, flat_mask = _unit(emb).reshape(-1, d), mask.ravel()
    assume(far_from_eps(points, flat_mask, eps))
    out = aggregate(tokens, mask, emb, eps=eps, min_samples=min_samples)
    assert np.isclose(float(out.eps), eps)
    labels = np.asarray(out.labels).ravel()
    check_against_sklearn(points, flat_mask, eps, min_samples, labels)
    assert int(out.num_clusters) == labels.max() + 1


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_aggregate_under_jit_and_vmap():
    tokens, mask, emb = hand_built()
    eager = aggregate(tokens, mask, emb)
    jitted = jax.jit(lambda t, m, e: aggregate(t, m, e, method="cluster"))(tokens, mask, emb)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), eager, jitted)
    rng = np.random.default_rng(7)
    batch_emb = np.stack([emb, emb + 0.01 * rng.normal(size=emb.shape).astype(np.float32)])
    batched = jax.vmap(lambda e: aggregate(tokens, mask, e))(batch_emb)
    for b in range(2):
        single = aggregate(tokens, mask, batch_emb[b])
        np.testing.assert_array_equal(np.asarray(batched.tokens[b]), np.asarray(single.tokens))
        np.testing.assert_array_equal(np.asarray(batched.labels[b]), np.asarray(single.labels))


def test_aggregate_rejects_bad_arguments():
    tokens, mask, emb = hand_built()
    with pytest.raises(ValueError, match="method"):
        aggregate(tokens, mask, emb, method="median")
    with pytest.raises(ValueError, match="vocab_emb"):
        aggregate(tokens, mask, emb, method="fedavg")
    with pytest.raises(ValueError, match="key"):
        aggregate(tokens, mask, emb, method="kmeans")
    with pytest.raises(ValueError, match="emb"):
        aggregate(tokens, mask, emb[:, :3])
    with pytest.raises(ValueError, match="mask"):
        aggregate(tokens, mask[:, :3], emb)


def test_identical_uploads_merge_into_one_copy_of_each_word():
    """Identical words are at distance exactly 0 (not Gram-form round-off), so when every
    client uploads the same prompt the knee ε (0) still clusters them: no word repeats."""
    rng = np.random.default_rng(0)
    vocab = rng.normal(size=(7, 384)).astype(np.float32)
    tokens = np.tile(np.arange(7), (4, 1))
    mask = np.ones_like(tokens, bool)
    out = aggregate(jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(vocab[tokens]), method="cluster")
    chosen = np.asarray(out.tokens)[np.asarray(out.mask)]
    assert chosen.tolist() == list(range(7)) and float(out.eps) == 0.0
    d = np.asarray(pairwise_distances(jnp.asarray(vocab[tokens].reshape(-1, 384)), jnp.ones(28, bool)))
    assert (d[np.equal.outer(tokens.ravel(), tokens.ravel())] == 0).all()
