import jax
import jax.numpy as jnp
import numpy as np
import pytest
from statistics import NormalDist

from asyndbt_jax import aggregators as agg
from asyndbt_jax import attacks
from asyndbt_jax.feedback import Feedback

R = 10


def updates(seed=0):
    rng = np.random.default_rng(seed)
    return {"p": (1.0 + 0.1 * rng.normal(size=(R, 4, 3))).astype(np.float32), "q": rng.normal(size=(R, 2)).astype(np.float32)}


BAD = attacks.malicious_workers(R, 3)


def test_malicious_workers_identities():
    assert BAD.tolist() == [False] * 7 + [True] * 3
    picked = attacks.malicious_workers(R, 3, seed=1)
    assert picked.sum() == 3 and (picked == attacks.malicious_workers(R, 3, seed=1)).all()
    with pytest.raises(ValueError):
        attacks.malicious_workers(R, 11)


@pytest.mark.parametrize("name", [a for a in attacks.MESSAGE_ATTACKS])
def test_benign_rows_untouched_and_malicious_rows_changed(name):
    u = updates()
    out = attacks.apply(name, u, BAD, jax.random.key(0), replay=jax.tree.map(np.zeros_like, u))
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(u)):
        np.testing.assert_array_equal(np.asarray(a)[~BAD], b[~BAD])
        if name != "none":
            assert not np.allclose(np.asarray(a)[BAD], b[BAD])


def test_attack_formulas():
    u = updates()
    benign = jax.tree.map(lambda x: x[~BAD], u)
    mu = jax.tree.map(lambda x: x.mean(0), benign)
    sd = jax.tree.map(lambda x: x.std(0, ddof=1), benign)
    z = attacks.alie_z(R, 3)
    s = R // 2 + 1 - 3
    assert z == pytest.approx(NormalDist().inv_cdf((R - s) / R))
    out = attacks.alie(u, BAD)
    jax.tree.map(lambda o, m, d: np.testing.assert_allclose(np.asarray(o)[BAD], np.broadcast_to(m - z * d, o[BAD].shape), rtol=1e-5), out, mu, sd)
    out = attacks.ipm(u, BAD, epsilon=0.5)
    jax.tree.map(lambda o, m: np.testing.assert_allclose(np.asarray(o)[BAD], np.broadcast_to(-0.5 * m, o[BAD].shape), rtol=1e-5), out, mu)
    out = attacks.sign_flip(u, BAD, scale=2.0)
    jax.tree.map(lambda o, x: np.testing.assert_allclose(np.asarray(o)[BAD], -2 * x[BAD]), out, u)
    out = attacks.scaling(u, BAD, factor=10.0)
    jax.tree.map(lambda o, x: np.testing.assert_allclose(np.asarray(o)[BAD], 10 * x[BAD]), out, u)


def test_attacks_bite_the_mean_but_not_the_median():
    u = {"p": updates()["p"]}  # benign updates agree (mean 1, spread 0.1)
    clean = agg.mean(jax.tree.map(lambda x: x[~BAD], u))
    attacked = attacks.sign_flip(u, BAD, scale=20.0)
    err_mean = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), agg.mean(attacked), clean)))
    err_med = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), agg.coordinate_median(attacked), clean)))
    assert err_mean > 10 * err_med


def test_poison_feedback():
    rng = np.random.default_rng(0)
    losses = jnp.asarray(rng.random((R, 5, 4)), jnp.float32)
    fb = Feedback(losses, losses < 0.5)
    inv = attacks.poison_feedback(fb, BAD, jax.random.key(0), mode="invert")
    np.testing.assert_array_equal(np.asarray(inv.losses)[~BAD], np.asarray(losses)[~BAD])
    # inverted losses reverse every comparison between configurations
    a, b = np.asarray(inv.losses)[BAD], np.asarray(losses)[BAD]
    assert np.all(np.argsort(a.reshape(3, -1), 1) == np.argsort(b.reshape(3, -1), 1)[:, ::-1])
    rnd = attacks.poison_feedback(fb, BAD, jax.random.key(0), mode="random")
    r = np.asarray(rnd.losses)[BAD]
    assert r.min() >= b.min() - 1e-6 and r.max() <= b.max() + 1e-6 and not np.allclose(r, b)
    with pytest.raises(ValueError):
        attacks.poison_feedback(fb, BAD, jax.random.key(0), mode="flip")


def test_jit_and_bad_input():
    u = updates()
    f = jax.jit(lambda u, m: attacks.ipm(u, m))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), f(u, BAD), attacks.ipm(u, BAD))
    with pytest.raises(ValueError, match="malicious"):
        attacks.sign_flip(u, np.ones(R + 1, bool))
    with pytest.raises(ValueError, match="attack"):
        attacks.apply("label_flip", u, BAD, jax.random.key(0))
    with pytest.raises(ValueError, match="replay"):
        attacks.apply("stale_replay", u, BAD, jax.random.key(0))


def test_alie_under_jit_matches_the_concrete_mask():
    u = updates()
    eager = attacks.alie(u, BAD)
    jitted = jax.jit(attacks.alie)(u, jnp.asarray(BAD))
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(attacks.alie_z(R, 3)), NormalDist().inv_cdf((R - (R // 2 + 1 - 3)) / R), rtol=1e-5)


def test_poison_demonstrations_flags_only_malicious_pools_and_rejects_foreign_queries():
    from asyndbt_jax.oracle import make_planted_task

    task = make_planted_task(jax.random.key(0), num_workers=R, num_fragment_words=3, vocab_size=5, num_candidates=4, num_test=10)
    assert not bool(jnp.any(task.train.flipped_demos))
    out = attacks.poison_demonstrations(task.train, BAD)
    flags = np.asarray(out.flipped_demos)
    assert flags[BAD].all() and not flags[~BAD].any()
    np.testing.assert_array_equal(out.label, task.train.label)
    with pytest.raises(ValueError, match="flipped_demos"):
        attacks.poison_demonstrations({"label": jnp.zeros((R, 3))}, BAD)
    with pytest.raises(ValueError, match="shape"):
        attacks.poison_demonstrations(task.train, BAD[:-1])
