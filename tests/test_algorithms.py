"""The optimizer objects: init/step/decode inside a user's own jax.jit, equal to the engine's step,
hyper-parameters as data, clear errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import asyndbt_jax as adbt
from asyndbt_jax.engine import init_state, method_config, server_step
from asyndbt_jax.oracle import make_planted_task, oracle_feedback

R = 4
SHAPES = dict(num_fragment_words=6, vocab_size=12, num_classes=2, num_candidates=5)


@pytest.fixture(scope="module")
def task():
    return make_planted_task(jax.random.key(0), num_workers=R, **SHAPES, num_test=200)


def test_step_under_a_users_jit_equals_the_engine_step(task):
    feedback = functools.partial(oracle_feedback, task.oracle)
    batch = adbt.Data(task.train, task.validation)
    opt = adbt.asyndbt(num_workers=R, num_active=2, num_samples=6, lr_fragment=0.05, lr_demos=0.05, **SHAPES)
    config = method_config("asyndbt", num_workers=R, num_active=2, max_staleness=1, num_samples=6, lr_fragment=0.05,
                           lr_demos=0.05, **SHAPES)
    step = jax.jit(opt.step, static_argnums=3)
    ours, theirs = opt.init(jax.random.key(1)), init_state(config, jax.random.key(1))
    for t in range(12):  # iteration 0 and 10 refresh the lower level
        arrived = jnp.arange(R) % 2 == t % 2
        ours, m = step(ours, arrived, batch, feedback)
        theirs, _ = jax.jit(server_step, static_argnums=(0, 1))(config, feedback, theirs, arrived, batch)
    assert int(m.num_arrived) == 2
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert opt.decode(ours).demos.shape == (R, 2) and opt.decode(ours).fragment_words.shape == (R, 6)


def test_hyperparameters_are_data_and_the_algorithm_is_hashable(task):
    feedback = functools.partial(oracle_feedback, task.oracle)
    batch = adbt.Data(task.train, task.validation)
    opt = adbt.sync(num_workers=R, num_samples=4, **SHAPES)
    assert hash(opt) == hash(adbt.sync(num_workers=R, num_samples=4, **SHAPES))  # usable as a static argument
    step = jax.jit(opt.step, static_argnums=3)
    hp = opt.hyperparams()
    assert set(hp) == set(adbt.engine.TRACED_HYPERPARAMETERS) and hp["lr_fragment"] == pytest.approx(1e-4)
    state = opt.init(jax.random.key(0))
    arrived = jnp.ones(R, bool)
    slow, _ = step(state, arrived, batch, feedback, hp)
    fast, _ = step(state, arrived, batch, feedback, {**hp, "lr_fragment": 0.3})
    assert step._cache_size() == 1
    start = np.asarray(state.workers.selection.fragment_probs)
    assert (np.abs(np.asarray(fast.workers.selection.fragment_probs) - start).sum()
            > 10 * np.abs(np.asarray(slow.workers.selection.fragment_probs) - start).sum())
    with pytest.raises(ValueError, match=r"unknown hyper-parameters \['learning_rate'\]"):
        opt.step(state, arrived, batch, feedback, {"learning_rate": 0.1})


def test_every_method_has_a_factory_and_joint_sees_both_batches(task):
    for factory, method in [(adbt.asyndbt, "asyndbt"), (adbt.sync, "sync"), (adbt.cendbt, "cendbt"),
                            (adbt.bdpl, "bdpl"), (adbt.demos_only, "demos-only"), (adbt.fedone, "fedone"),
                            (adbt.joint, "joint")]:
        opt = factory(num_workers=R, **SHAPES)
        assert opt.method == method and opt.config == method_config(method, num_workers=R, num_active=R,
                                                                      max_staleness=1, **SHAPES)
    seen = []

    def counting(prompts, queries, active=None):  # records the query batch each estimate sees
        seen.append(jax.tree.leaves(queries)[0].shape)
        return oracle_feedback(task.oracle, prompts, queries)

    opt = adbt.joint(num_workers=R, num_samples=4, **SHAPES)
    opt.step(opt.init(jax.random.key(0)), jnp.ones(R, bool), adbt.Data(task.train, task.validation), counting)
    B = jax.tree.leaves(task.train)[0].shape[1] + jax.tree.leaves(task.validation)[0].shape[1]
    assert (R, B) in seen  # one estimate on the training and validation queries together


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(ValueError, match="num_active"):
        adbt.asyndbt(num_workers=4, num_active=5, **SHAPES)
    with pytest.raises(TypeError):
        adbt.asyndbt(num_workers=4)  # the shapes are required
