import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asyndbt_jax import aggregators as agglib
from asyndbt_jax.cuts import cut_force
from asyndbt_jax.engine import Data, init_state, malicious_mask, method_config, server_step, value_cut_coefficients
from asyndbt_jax.oracle import make_planted_task, oracle_feedback
from asyndbt_jax.simplex import project_simplex

R = 4
SHAPES = dict(num_fragment_words=5, vocab_size=7, num_classes=2, num_candidates=6)


@pytest.fixture(scope="module")
def task():
    return make_planted_task(jax.random.key(0), num_workers=R, num_fragment_words=5, vocab_size=7, num_candidates=6)


def config(method="asyndbt", **kw):
    base = dict(num_workers=R, num_active=2, max_staleness=3, num_samples=4, refresh_every=2, **SHAPES)
    return method_config(method, **{**base, **kw})


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"num_active": 5}, "cannot exceed"),
        ({"num_active": 0}, "num_active"),
        ({"max_staleness": 0}, "max_staleness"),
        ({"lower_rounds": 0}, "lower_rounds"),
        ({"cut_capacity": 0}, "cut_capacity"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"lr_fragment": float("nan")}, "lr_fragment"),
        ({"lr_dual": float("inf")}, "lr_dual"),
        ({"num_samples": 1}, "num_samples"),
        ({"gap_norm": "l2"}, "gap_norm"),
        ({"aggregator": "median"}, "aggregator"),
        ({"attack": "label_flip"}, "attack"),
        ({"num_malicious": 5}, "num_malicious"),
        ({"aggregator": "krum", "num_malicious": 2}, "krum"),
        ({"aggregator": "sign_consensus", "num_malicious": 2}, "R/2"),
        ({"aggregator": "trimmed_mean", "trim_fraction": 0.2, "num_malicious": 1}, "raise trim_fraction"),
        ({"trim_fraction": 0.5}, "trim_fraction"),
        ({"clip_radius": 0.0}, "clip_radius"),
        ({"aggregator": "coordinate_median", "pre_aggregation": "bucketing"}, "pre_aggregation"),
        ({"aggregator": "mean", "pre_aggregation": "nnm"}, "robust rule"),
        ({"attack": "sign_flip", "num_malicious": 1, "attack_strength": -1.0}, "attack_strength"),
        ({"attack": "stale_replay", "num_malicious": 1, "attack_strength": 2.0}, "attack_strength"),
    ],
)
def test_bad_config_raises_before_compiling(kw, match):
    with pytest.raises(ValueError, match=match):
        config(**kw)


def test_unknown_method():
    with pytest.raises(ValueError, match="method"):
        method_config("adbo", num_workers=2, num_active=1, max_staleness=1, **SHAPES)


def test_nan_message_is_rejected_and_never_enters_z(task):
    cfg = config()
    fb = functools.partial(oracle_feedback, task.oracle)
    state = init_state(cfg, jax.random.key(0))
    poisoned = state.workers.selection.fragment_probs.at[1].set(jnp.nan)
    state = state._replace(workers=state.workers._replace(selection=state.workers.selection._replace(fragment_probs=poisoned)))
    new, metrics = jax.jit(server_step, static_argnums=(0, 1))(cfg, fb, state, jnp.ones(R, bool), Data(task.train, task.validation))
    assert int(metrics.num_rejected) == 1 and int(new.server.rejected) == 1
    assert bool(jnp.all(jnp.isfinite(new.server.consensus)))
    np.testing.assert_array_equal(new.server.received[1], state.server.received[1])


def test_methods_change_only_their_levels(task):
    fb = functools.partial(oracle_feedback, task.oracle)
    data = Data(task.train, task.validation)
    for method, frozen in [("bdpl", "demo_probs"), ("demos-only", "fragment_probs")]:
        cfg = config(method, lr_fragment=0.1, lr_demos=0.1)
        state = init_state(cfg, jax.random.key(0))
        new, _ = jax.jit(server_step, static_argnums=(0, 1))(cfg, fb, state, jnp.ones(R, bool), data)
        np.testing.assert_array_equal(getattr(new.workers.selection, frozen), getattr(state.workers.selection, frozen))
        moved = "fragment_probs" if frozen == "demo_probs" else "demo_probs"
        assert not np.array_equal(getattr(new.workers.selection, moved), getattr(state.workers.selection, moved))


def _one_step(task, cfg, state=None):
    fb = functools.partial(oracle_feedback, task.oracle)
    if state is None:
        state = init_state(cfg, jax.random.key(0))
    else:  # the malicious workers of ``cfg`` (the state may come from an attack-free config)
        state = state._replace(malicious=jnp.asarray(malicious_mask(cfg)))
    return jax.jit(server_step, static_argnums=(0, 1))(cfg, fb, state, jnp.ones(R, bool), Data(task.train, task.validation))


def _advanced_state(task, cfg):
    """A state whose workers' p differ from z (one attack-free step)."""
    return _one_step(task, cfg._replace(attack="none", num_malicious=0))[0]


@pytest.fixture(scope="module")
def advanced(task):
    """One advanced state for every aggregator: the state's layout does not depend on the rule
    (compiling an attack-free step per rule would double the module's compile time)."""
    return _advanced_state(task, config(aggregator="mean"))


def test_message_attack_replaces_only_malicious_messages(task):
    clean = config(aggregator="mean")
    state = _advanced_state(task, clean)
    z = state.server.consensus
    p = state.workers.selection.fragment_probs
    attacked, _ = _one_step(task, clean._replace(attack="scaling", num_malicious=1), state)
    # worker R-1 is malicious: the server received z + 10 (p - z) from it, the truth from the others
    np.testing.assert_allclose(attacked.server.received[-1], z + 10.0 * (p[-1] - z), atol=1e-6)
    np.testing.assert_allclose(attacked.server.received[:-1], p[:-1], atol=1e-7)
    honest, _ = _one_step(task, clean, state)
    assert not np.allclose(attacked.server.consensus, honest.server.consensus)


@pytest.mark.parametrize(
    "aggregator, attack",
    [(a, "alie") for a in ["mean", "coordinate_median", "trimmed_mean", "geometric_median", "multi_krum", "centered_clipping"]]
    + [("trimmed_mean", a) for a in ["sign_flip", "ipm", "gaussian_noise", "stale_replay", "scaling"]],
)
def test_every_aggregator_and_attack_run_in_the_server_step(task, advanced, aggregator, attack):
    """The step's z is the rule applied to the messages the server received (attacked ones
    included): z ← proj_Δ(z + η_z(R · rule_v(ρ_v + μ(p_v − z)) − F)), computed here from the
    public aggregator."""
    cfg = config(aggregator=aggregator, attack=attack, num_malicious=1)
    new, _ = _one_step(task, cfg, advanced)
    z0, rho = advanced.server.consensus, advanced.server.duals
    options = {"trimmed_mean": {"trim_fraction": cfg.trim_fraction}, "multi_krum": {"num_byzantine": 1},
               "centered_clipping": {"radius": cfg.clip_radius}}.get(aggregator, {})
    pull = agglib.RULES[aggregator](rho + cfg.penalty() * (new.server.received - z0[None]), jnp.ones(R, bool), **options)
    force = cut_force(advanced.server.cuts).consensus
    expect = project_simplex(z0 + cfg.eta_consensus() * (R * pull - force))
    np.testing.assert_allclose(new.server.consensus, expect, atol=1e-5)
    z = np.asarray(new.server.consensus)
    assert np.all(z >= -1e-6) and np.allclose(z.sum(-1), 1.0, atol=1e-5)


def test_nearest_neighbor_mixing_runs_before_the_rule_in_the_server_step(task, advanced):
    """``pre_aggregation="nnm"``: the rule sees every worker's term mixed with its R − f nearest."""
    cfg = config(aggregator="coordinate_median", pre_aggregation="nnm", attack="sign_flip", num_malicious=1)
    new, _ = _one_step(task, cfg, advanced)
    z0, rho = advanced.server.consensus, advanced.server.duals
    terms = rho + cfg.penalty() * (new.server.received - z0[None])
    pull = agglib.coordinate_median(agglib.nearest_neighbor_mixing(terms, num_byzantine=1))
    expect = project_simplex(z0 + cfg.eta_consensus() * (R * pull - cut_force(advanced.server.cuts).consensus))
    np.testing.assert_allclose(new.server.consensus, expect, atol=1e-5)
    plain, _ = _one_step(task, cfg._replace(pre_aggregation="none"), advanced)
    assert not np.allclose(plain.server.consensus, new.server.consensus)


def test_attack_strength_sets_the_attacks_parameter(task):
    clean = config(aggregator="mean")
    state = _advanced_state(task, clean)
    z, p = state.server.consensus, state.workers.selection.fragment_probs
    attacked, _ = _one_step(task, clean._replace(attack="sign_flip", num_malicious=1, attack_strength=4.0), state)
    np.testing.assert_allclose(attacked.server.received[-1], z - 4.0 * (p[-1] - z), atol=1e-6)


def test_feedback_attack_changes_only_malicious_workers(task):
    cfg = config(attack="inverted_feedback", num_malicious=1)
    state = init_state(cfg, jax.random.key(0))
    honest, _ = _one_step(task, cfg._replace(attack="none", num_malicious=0), state)
    poisoned, _ = _one_step(task, cfg, init_state(cfg, jax.random.key(0)))
    q_h, q_p = honest.workers.selection.demo_probs, poisoned.workers.selection.demo_probs
    np.testing.assert_allclose(q_p[:-1], q_h[:-1], atol=1e-7)
    assert not np.allclose(q_p[-1], q_h[-1])


def test_data_attack_poisons_only_the_malicious_workers_pools(task):
    cfg = config(attack="poisoned_demos", num_malicious=1)
    honest, _ = _one_step(task, cfg._replace(attack="none", num_malicious=0))
    poisoned, _ = _one_step(task, cfg)
    q_h, q_p = honest.workers.selection.demo_probs, poisoned.workers.selection.demo_probs
    np.testing.assert_allclose(q_p[:-1], q_h[:-1], atol=1e-7)
    assert not np.allclose(q_p[-1], q_h[-1])


def test_mean_consensus_step_is_the_papers_step_without_psi(task):
    """``aggregator="mean"`` replaces the paper's sum over workers by R × the mean: the same step at ψ = 0."""
    from asyndbt_jax.engine import _primal_dual_hp, consensus_step
    from asyndbt_jax.lower_level import server_consensus_step

    rng = np.random.default_rng(0)
    p = jnp.asarray(rng.dirichlet(np.ones(7), size=(R, 5)), jnp.float32)
    z = jnp.asarray(rng.dirichlet(np.ones(7), size=5), jnp.float32)
    rho = jnp.asarray(0.01 * rng.normal(size=(R, 5, 7)), jnp.float32)
    force = jnp.asarray(0.01 * rng.normal(size=(5, 7)), jnp.float32)
    cfg = config(aggregator="mean", psi=0.0, lr_consensus=0.1)
    hp = _primal_dual_hp(cfg)
    ours = consensus_step(cfg)(z, p, rho, jnp.ones(R, bool), hp, force)
    np.testing.assert_allclose(ours, server_consensus_step(z, p, rho, jnp.ones(R, bool), hp, force), atol=1e-6)


def test_the_default_sign_consensus_bounds_what_one_worker_can_do_to_z():
    """Under the default ψ-sign rule (μ = 0, no duals) one worker, whatever it sends, moves the
    pre-projection z step by at most 2·η_z·ψ per coordinate, so z by at most that times
    √(M·N) in ℓ2 (the projection is non-expansive); the mean's step has no such bound."""
    from asyndbt_jax.engine import _primal_dual_hp, consensus_step

    rng = np.random.default_rng(1)
    p = jnp.asarray(rng.dirichlet(np.ones(7), size=(R, 5)), jnp.float32)
    z = jnp.asarray(rng.dirichlet(np.ones(7), size=5), jnp.float32)
    junk = p.at[0].set(jnp.asarray(1e4 * rng.normal(size=(5, 7)), jnp.float32))
    sign = config()
    assert sign.aggregator == "sign_consensus" and sign.penalty() == 0.0 and sign.dual_rate() == 0.0
    eta = sign.eta_consensus()
    assert eta == pytest.approx(1.0 / (R * sign.vocab_size * sign.psi))
    rho = jnp.zeros((R, 5, 7))
    step = lambda cfg, msgs: consensus_step(cfg)(z, msgs, rho, jnp.ones(R, bool), _primal_dual_hp(cfg), 0.0)  # noqa: E731
    bound = 2 * eta * sign.psi * np.sqrt(5 * 7)
    assert np.linalg.norm(np.asarray(step(sign, junk) - step(sign, p))) <= bound + 1e-6
    mean = config(aggregator="mean")
    assert np.linalg.norm(np.asarray(step(mean, junk) - step(mean, p))) > 2 * bound


def test_robust_worker_sum_bounds_one_outlier():
    """The cut gap and cut values combine per-worker terms: a plain sum for the mean, R × the
    coordinate median for the ψ-sign rule (where its sign terms settle), R × the robust rule
    otherwise, so one worker cannot inflate them."""
    from asyndbt_jax.engine import worker_sum

    terms = jnp.asarray([[1.0, 2.0], [1.2, 2.2], [0.8, 1.8], [1e6, -1e6]])
    np.testing.assert_allclose(worker_sum(config(aggregator="mean"))(terms), jnp.sum(terms, 0))
    np.testing.assert_allclose(worker_sum(config(aggregator="sign_consensus"))(terms), R * np.median(np.asarray(terms), 0), rtol=1e-6)
    for rule in ["coordinate_median", "trimmed_mean", "geometric_median", "multi_krum", "centered_clipping"]:
        out = np.asarray(worker_sum(config(aggregator=rule, num_malicious=1, trim_fraction=0.25))(terms))
        assert np.all(np.abs(out - R * np.array([1.0, 2.0])) <= R * 0.6), (rule, out)


def _refresh_state(task, cfg):
    """A state one step before a refresh, whose workers moved away from uniform."""
    state = _advanced_state(task, cfg)
    return state._replace(server=state.server._replace(iteration=jnp.asarray(cfg.refresh_every, jnp.int32)))


def test_a_refresh_adds_a_value_cut_exactly_when_the_gap_exceeds_epsilon(task, monkeypatch):
    """The cut's gap is the lower level's value-function gap; a cut is added iff h > ε."""
    import asyndbt_jax.engine as engine_module

    seen = []
    original = engine_module.value_cut_coefficients

    def spy(*args):
        out = original(*args)
        jax.debug.callback(lambda h: seen.append(float(np.sum(h))), out[1])
        return out

    monkeypatch.setattr(engine_module, "value_cut_coefficients", spy)
    for epsilon in (1e-4, 10.0):
        cfg = config(epsilon=epsilon, num_samples=16)
        start = _refresh_state(task, cfg)
        seen.clear()
        new, metrics = _one_step(task, cfg, start)
        assert bool(metrics.refreshed) and len(seen) == 1
        assert int(metrics.added_cuts) == int(seen[0] > epsilon)
        assert int(new.server.cuts.active.sum()) == int(start.server.cuts.active.sum()) + int(metrics.added_cuts)
        if epsilon == 10.0:
            assert int(new.server.cuts.active.sum()) == 0
        else:
            assert int(metrics.added_cuts) == 1


def test_the_cuts_move_both_levels(task):
    """An active value-function cut with a positive dual changes every replied worker's p and q
    (its force on q is the hypergradient λ e); with the dual at zero the step is the upper
    level's alone."""
    cfg = config(epsilon=1e-4, num_samples=32, num_active=R, lr_fragment=0.05, lr_demos=0.05)
    state, metrics = _one_step(task, cfg, _refresh_state(task, cfg))
    assert int(metrics.added_cuts) == 1
    with_force = state._replace(server=state.server._replace(cuts=state.server.cuts._replace(
        duals=jnp.where(state.server.cuts.active, 5.0, 0.0))))
    assert np.abs(np.asarray(cut_force(with_force.server.cuts).demos)).max() > 0  # the cuts have a coefficient on q
    no_force = state._replace(server=state.server._replace(cuts=state.server.cuts._replace(
        active=jnp.zeros_like(state.server.cuts.active), duals=jnp.zeros_like(state.server.cuts.duals))))
    a, _ = _one_step(task, cfg, with_force)
    b, _ = _one_step(task, cfg, no_force)
    for name in ("fragment_probs", "demo_probs"):
        moved = np.abs(np.asarray(getattr(a.workers.selection, name)) - np.asarray(getattr(b.workers.selection, name)))
        assert moved.reshape(R, -1).max(-1).min() > 1e-3, name  # every replied worker, both levels


def test_cendbt_depends_on_its_training_data_and_its_lower_level(task):
    """cenDBT with the training labels replaced by noise, or without its lower level, ends
    elsewhere than cenDBT itself: the lower level reads the training queries."""
    from asyndbt_jax.harness import pooled

    cfg = method_config("cendbt", num_workers=1, num_active=1, max_staleness=1, num_samples=32, refresh_every=2,
                        epsilon=1e-4, lower_lr=0.2, lr_fragment=0.05, lr_demos=0.05, **SHAPES)
    data = pooled(Data(task.train, task.validation))
    noisy_labels = jax.random.bernoulli(jax.random.key(7), 0.5, data.train.label.shape).astype(data.train.label.dtype)
    noisy = data._replace(train=data.train._replace(label=noisy_labels, clean_label=noisy_labels))
    fb = functools.partial(oracle_feedback, task.oracle)

    def run(cfg, data, steps=6):
        state = init_state(cfg, jax.random.key(0))
        step = jax.jit(server_step, static_argnums=(0, 1))
        added = 0
        for _ in range(steps):
            state, metrics = step(cfg, fb, state, jnp.ones(1, bool), data)
            added += int(metrics.added_cuts)
        return state.workers.selection, added

    base, added = run(cfg, data)
    assert added > 0
    for other, other_data in ((cfg, noisy), (cfg._replace(bilevel=False), data)):
        changed, _ = run(other, other_data)
        assert not np.allclose(changed.fragment_probs, base.fragment_probs, atol=1e-4)
