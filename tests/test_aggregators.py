import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyndbt_jax import _select
from asyndbt_jax import aggregators as agg

R = 9


def tree(seed=0, R=R):
    rng = np.random.default_rng(seed)
    return {"a": rng.normal(size=(R, 3, 4)).astype(np.float32), "b": rng.normal(size=(R, 5)).astype(np.float32)}


def flat(t):
    return np.concatenate([np.reshape(t["a"], (t["a"].shape[0], -1)), np.reshape(t["b"], (t["b"].shape[0], -1))], 1)


def unflat_one(v):
    return {"a": v[:12].reshape(3, 4), "b": v[12:]}


def close(x, y, tol=1e-5):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol), x, y)


# NumPy references (participants only) ----------------------------------------------------


def np_trimmed(x, frac):
    n = x.shape[0]
    k = int(np.floor(frac * n))
    s = np.sort(x, axis=0)
    return s[k : n - k].mean(0)


def np_weiszfeld(x, iters=2000):
    y = x.mean(0)
    for _ in range(iters):
        d = np.maximum(np.linalg.norm(x - y, axis=1), 1e-12)
        y = (x / d[:, None]).sum(0) / (1 / d).sum()
    return y


def np_krum_scores(x, f):
    n = x.shape[0]
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    m = max(n - f - 2, 1)
    return np.array([np.sort(np.delete(d[i], i))[:m].sum() for i in range(n)])


MASK = np.array([1, 0, 1, 1, 1, 0, 1, 1, 1], bool)


@pytest.mark.parametrize("mask", [None, MASK])
def test_coordinatewise_rules_match_numpy_on_participants(mask):
    t = tree()
    keep = np.ones(R, bool) if mask is None else mask
    sub = jax.tree.map(lambda x: x[keep], t)
    close(agg.mean(t, mask), jax.tree.map(lambda x: x.mean(0), sub))
    close(agg.coordinate_median(t, mask), jax.tree.map(lambda x: np.median(x, 0), sub))
    for frac in (0.0, 0.2, 0.34, 0.49):
        close(agg.trimmed_mean(t, mask, trim_fraction=frac), jax.tree.map(lambda x: np_trimmed(x, frac), sub))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 9), st.integers(0, 2**31 - 1), st.sampled_from([0.0, 0.1, 0.25, 0.45]))
def test_selection_rules_are_exact_with_ties_signed_zeros_and_infinities(n, D, seed, frac):
    """The median and trimmed mean select by bisection on the values' bits: exact against
    np.median / a sort, also with heavy ties, -0.0 / 0.0, huge values and ±inf."""
    rng = np.random.default_rng(seed)
    pool = np.array([-np.inf, -3e38, -2.5, -1.0, -0.0, 0.0, 1.0, 2.5, 3e38, np.inf], np.float32)
    x = np.where(rng.random((n, D)) < 0.5, rng.choice(pool, (n, D)), rng.normal(size=(n, D))).astype(np.float32)
    mask = rng.random(n) < 0.8
    mask[0] = True
    sub = x[mask]
    with np.errstate(invalid="ignore", over="ignore"):
        s = np.sort(sub, 0)
        lo, hi = s[(sub.shape[0] - 1) // 2], s[sub.shape[0] // 2]
        np.testing.assert_array_equal(np.asarray(agg.coordinate_median(x, mask)), np.where(lo == hi, lo, 0.5 * lo + 0.5 * hi))
        k = int(np.floor(frac * sub.shape[0]))
        kept = np.sort(sub, 0)[k : sub.shape[0] - k]
        if np.all(np.isfinite(kept)) and np.abs(kept).max(initial=0) < 1e30:
            np.testing.assert_allclose(np.asarray(agg.trimmed_mean(x, mask, trim_fraction=frac)), kept.mean(0), rtol=1e-5, atol=1e-5)


def test_selection_blocked_and_flat_paths_agree_and_keep_dtypes():
    rng = np.random.default_rng(0)
    keys = jnp.asarray(rng.integers(0, 50, (37, 1000)), jnp.uint32)  # heavy ties, several column blocks
    ranks = jnp.array([0, 18, 36])
    want = np.sort(np.asarray(keys), 0)[np.asarray(ranks)]
    np.testing.assert_array_equal(np.asarray(_select._select_keys(keys, ranks)), want)
    np.testing.assert_array_equal(np.asarray(_select._select_keys_blocked(keys, ranks)), want)
    x = rng.normal(size=(7, 3)).astype(np.float32)
    got = agg.coordinate_median(jnp.asarray(x, jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), np.median(np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32), 0), rtol=1e-2)


def test_weighted_mean_and_zero_weight_equals_masking():
    t = tree()
    w = np.arange(1, R + 1, dtype=np.float32)
    close(agg.mean(t, weights=w), jax.tree.map(lambda x: np.tensordot(w, x, 1) / w.sum(), t))
    w0 = np.where(MASK, 1.0, 0.0)
    close(agg.mean(t, weights=w0), agg.mean(t, MASK))


@pytest.mark.parametrize("mask", [None, MASK])
def test_geometric_median_matches_numpy_weiszfeld(mask):
    t = tree(1)
    keep = np.ones(R, bool) if mask is None else mask
    ref = np_weiszfeld(flat(t)[keep].astype(np.float64))
    got, info = agg.geometric_median(t, mask, max_iterations=500, tol=1e-7)
    close(got, unflat_one(ref), tol=1e-4)
    assert bool(info.converged) and int(info.iterations) < 500
    _, info = agg.geometric_median(t, mask, max_iterations=2, tol=0.0)
    assert int(info.iterations) == 2 and not bool(info.converged)


@pytest.mark.parametrize("mask", [None, MASK])
def test_krum_and_multi_krum_match_numpy(mask):
    t = tree(2)
    keep = np.ones(R, bool) if mask is None else mask
    x = flat(t)[keep]
    scores = np_krum_scores(x.astype(np.float64), 2)
    got = np.asarray(agg.krum_scores(t, mask, num_byzantine=2))
    np.testing.assert_allclose(got[keep], scores, rtol=1e-4)
    assert np.all(np.isinf(got[~keep]))
    close(agg.krum(t, mask, num_byzantine=2), unflat_one(x[np.argmin(scores)]))
    best = np.argsort(scores)[: keep.sum() - 2]
    close(agg.multi_krum(t, mask, num_byzantine=2), unflat_one(x[best].mean(0)))


def test_krum_scores_count_ties_at_the_cut_distance():
    # Integer-valued updates with repeated rows: many distances tie exactly with the m-th
    # smallest, and the score must count the tied value as often as the slots it fills.
    rng = np.random.default_rng(7)
    base = rng.integers(-2, 3, size=(4, 5)).astype(np.float32)
    x = base[rng.integers(0, 4, size=11)]
    for f in (0, 2, 4):
        got = np.asarray(agg.krum_scores(jnp.asarray(x), num_byzantine=f))
        np.testing.assert_allclose(got, np_krum_scores(x.astype(np.float64), f), rtol=1e-6)


def test_centered_clipping_matches_numpy_and_large_radius_is_mean():
    t = tree(3)
    x = flat(t).astype(np.float64)
    v = np.median(x, 0)
    for _ in range(3):
        diff = x - v
        n = np.linalg.norm(diff, axis=1)
        v = v + (diff * np.minimum(1, 0.5 / n)[:, None]).mean(0)
    close(agg.centered_clipping(t, radius=0.5), unflat_one(v), tol=1e-4)
    close(agg.centered_clipping(t, radius=1e6, num_iterations=1), agg.mean(t))


def test_centered_clipping_adaptive_radius_is_the_median_distance():
    t = tree(3)
    x = flat(t).astype(np.float64)[MASK]
    v = np.median(x, 0)
    for _ in range(3):
        diff = x - v
        n = np.linalg.norm(diff, axis=1)
        v = v + (diff * np.minimum(1, np.median(n) / n)[:, None]).mean(0)
    close(agg.centered_clipping(t, MASK), unflat_one(v), tol=1e-4)
    # far attackers move it no more than the radius the honest distances set
    x = {"w": np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)}
    far = {"w": x["w"].copy()}
    far["w"][7:] = 1e6
    honest = np.median(x["w"][:7], 0)
    assert np.linalg.norm(np.asarray(agg.centered_clipping(far)["w"]) - honest) < 3 * np.linalg.norm(x["w"][:7] - honest, axis=1).max()


def test_geometric_median_starts_from_the_coordinate_median():
    t = tree(8)
    x = flat(t).astype(np.float64)[MASK]
    y = np.median(x, 0)
    d = np.linalg.norm(x - y, axis=1)
    one_step = (x / d[:, None]).sum(0) / (1 / d).sum()
    close(agg.geometric_median(t, MASK, max_iterations=1)[0], unflat_one(one_step), tol=1e-4)


def np_nnm(x, f):
    n = x.shape[0]
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    out = []
    for i in range(n):
        others = [j for j in np.argsort(d[i], kind="stable") if j != i]
        out.append(x[[i] + others[: n - f - 1]].mean(0))
    return np.array(out)


@pytest.mark.parametrize("mask", [None, MASK])
def test_nearest_neighbor_mixing_matches_numpy(mask):
    t = tree(9)
    m = np.ones(R, bool) if mask is None else mask
    got = agg.nearest_neighbor_mixing(t, mask, num_byzantine=2)
    ref = np_nnm(flat(t).astype(np.float64)[m], 2)
    np.testing.assert_allclose(flat(got)[m], ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(flat(got)[~m], flat(t)[~m])  # masked-out rows untouched
    # f = 0: every participant becomes the participants' mean
    mixed = flat(agg.nearest_neighbor_mixing(t, mask, num_byzantine=0))[m]
    np.testing.assert_allclose(mixed, np.broadcast_to(flat(t)[m].mean(0), mixed.shape), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_bucketing_partitions_the_participants(size):
    t = tree(10)
    n = int(MASK.sum())
    means, bmask = agg.bucketing(t, MASK, key=jax.random.key(3), bucket_size=size)
    buckets = -(-n // size)
    np.testing.assert_array_equal(np.asarray(bmask), np.arange(R) < buckets)
    counts = [size] * (n // size) + ([n % size] if n % size else [])
    # the bucket means, weighted by their sizes, add up to the participants' sum
    total = (flat(means)[:buckets] * np.array(counts)[:, None]).sum(0)
    np.testing.assert_allclose(total, flat(t)[MASK].sum(0), rtol=1e-4, atol=1e-4)
    if size == 1:  # a permutation of the participants
        got = np.sort(flat(means)[:buckets], axis=0)
        np.testing.assert_allclose(got, np.sort(flat(t)[MASK], axis=0), rtol=1e-6)
    other, _ = agg.bucketing(t, MASK, key=jax.random.key(4), bucket_size=size)
    if 1 < size < n:  # a fresh key, a fresh partition
        assert not np.allclose(flat(other)[:buckets], flat(means)[:buckets])


def test_pre_aggregation_composes_with_every_rule_through_optax():
    t = tree(11)
    params = jax.tree.map(lambda x: x[0], t)
    for rule in ("mean", "coordinate_median", "trimmed_mean", "geometric_median", "krum", "multi_krum", "centered_clipping"):
        nnm = agg.as_aggregator(rule, pre_aggregation="nnm", num_byzantine=2)
        out, _ = nnm.update(t, nnm.init(params), mask=MASK)
        pre = agg.nearest_neighbor_mixing(t, MASK, num_byzantine=2)
        ref, _ = agg.as_aggregator(rule, num_byzantine=2).update(pre, None, mask=MASK)
        close(out, ref, tol=1e-4)
        b = agg.as_aggregator(rule, pre_aggregation="bucketing", bucket_size=2, num_byzantine=1)
        state = b.init(params)
        first, state2 = b.update(t, state, mask=MASK)
        means, bmask = agg.bucketing(t, MASK, key=jax.random.split(state)[1], bucket_size=2)
        ref, _ = agg.as_aggregator(rule, num_byzantine=1).update(means, None, mask=bmask)
        close(first, ref, tol=1e-4)
        assert not np.array_equal(jax.random.key_data(state2), jax.random.key_data(state))
    # under jit, with the state threaded
    b = agg.as_aggregator("coordinate_median", pre_aggregation="bucketing", bucket_size=3)
    step = jax.jit(lambda u, s: b.update(u, s, mask=MASK))
    out, _ = step(t, b.init(params))
    close(out, b.update(t, b.init(params), mask=MASK)[0])


def test_sign_consensus_is_the_psi_sign_step_and_bounded():
    t = tree(4)
    center = jax.tree.map(lambda x: np.zeros(x.shape[1:], np.float32), t)
    psi, eta = 0.01, 2.0
    got = agg.sign_consensus(t, center, MASK, psi=psi, step_size=eta)
    ref = jax.tree.map(lambda x, c: c - eta * psi * np.sign(c[None] - x[MASK]).sum(0), t, center)
    close(got, ref)
    # a single worker, whatever it sends, moves each coordinate by at most η·ψ
    huge = jax.tree.map(lambda x: x.at[0].set(1e9), jax.tree.map(jnp.asarray, t))
    d = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(), agg.sign_consensus(huge, center, psi=psi, step_size=eta), agg.sign_consensus(t, center, psi=psi, step_size=eta))
    assert max(jax.tree.leaves(d)) <= 2 * eta * psi + 1e-7


@settings(max_examples=25, deadline=None)
@given(st.integers(3, 12), st.integers(0, 2**31 - 1), st.floats(1e3, 1e9))
def test_masked_out_workers_never_influence_any_rule(n, seed, junk):
    rng = np.random.default_rng(seed)
    x = {"w": rng.normal(size=(n, 6)).astype(np.float32)}
    mask = rng.random(n) < 0.7
    mask[: 3] = True
    poisoned = {"w": np.where(mask[:, None], x["w"], junk).astype(np.float32)}
    center = {"w": np.zeros(6, np.float32)}
    rules = [
        lambda u: agg.mean(u, mask),
        lambda u: agg.coordinate_median(u, mask),
        lambda u: agg.trimmed_mean(u, mask, trim_fraction=0.2),
        lambda u: agg.geometric_median(u, mask)[0],
        lambda u: agg.multi_krum(u, mask, num_byzantine=(n - 1) // 2 - 1 if n > 4 else 0),
        lambda u: agg.centered_clipping(u, mask),
        lambda u: agg.sign_consensus(u, center, mask),
    ]
    for rule in rules:
        close(rule(x), rule(poisoned), tol=1e-4)


def test_rules_jit_and_vmap():
    t = tree(5)
    f = jax.jit(lambda u, m: agg.trimmed_mean(u, m, trim_fraction=0.2))
    close(f(t, MASK), agg.trimmed_mean(t, MASK, trim_fraction=0.2))
    stacked = jax.tree.map(lambda x: np.stack([x, 2 * x]), t)
    out = jax.vmap(lambda u: agg.geometric_median(u)[0])(stacked)
    close(jax.tree.map(lambda x: x[1], out), jax.tree.map(lambda x: 2 * x, agg.geometric_median(t)[0]), tol=1e-4)
    k = jax.jit(lambda u, m: agg.multi_krum(u, m, num_byzantine=2))
    close(k(t, MASK), agg.multi_krum(t, MASK, num_byzantine=2))


def test_optax_aggregator_protocol():
    from optax.experimental import aggregating

    t = tree(6)
    a = agg.as_aggregator("trimmed_mean", trim_fraction=0.2)
    assert isinstance(a, aggregating.Aggregator)
    params = jax.tree.map(lambda x: x[0], t)
    state = a.init(params)
    out, _ = a.update(t, state, params, mask=MASK)
    close(out, agg.trimmed_mean(t, MASK, trim_fraction=0.2))
    chain = aggregating.process(optax.identity(), a, optax.sgd(1.0))
    upd, _ = chain.update(t, chain.init(params), params)
    close(upd, jax.tree.map(lambda x: -x, agg.trimmed_mean(t, trim_fraction=0.2)))


def test_bad_input():
    t = tree()
    with pytest.raises(ValueError, match="trim_fraction"):
        agg.trimmed_mean(t, trim_fraction=0.5)
    with pytest.raises(ValueError, match="trim_fraction"):
        agg.trimmed_mean(t, trim_fraction=-0.1)
    with pytest.raises(ValueError, match="num_byzantine"):
        agg.krum(t, num_byzantine=5)
    with pytest.raises(ValueError, match="every worker"):
        agg.mean(t, np.zeros(R, bool))
    with pytest.raises(ValueError, match="leading worker axis"):
        agg.coordinate_median({"a": np.zeros((3, 2)), "b": np.zeros((4, 2))})
    with pytest.raises(ValueError, match="mask"):
        agg.mean(t, np.ones(R + 1, bool))
    with pytest.raises(ValueError, match="weights"):
        agg.mean(t, weights=-np.ones(R))
    with pytest.raises(ValueError, match="rule"):
        agg.as_aggregator("median-of-means")
    with pytest.raises(ValueError, match="bucket_size=8 exceeds the 7"):
        agg.bucketing(t, MASK, key=jax.random.key(0), bucket_size=8)
    with pytest.raises(ValueError, match="bucket_size"):
        agg.as_aggregator("mean", pre_aggregation="bucketing", bucket_size=0)
    with pytest.raises(ValueError, match="num_byzantine"):
        agg.nearest_neighbor_mixing(t, num_byzantine=R)
    with pytest.raises(ValueError, match="num_byzantine"):
        agg.as_aggregator("mean", pre_aggregation="nnm")
    with pytest.raises(ValueError, match="pre_aggregation"):
        agg.as_aggregator("mean", pre_aggregation="mixing")
    with pytest.raises(ValueError, match="key"):
        agg.pre_aggregate("bucketing", t)
