"""Hyper-parameters are data: the compiled step takes learning rates, ψ, μ, ε … as traced values,
so changing them reuses the compilation, uses the new values, and matches the step compiled
with the values baked in."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asyndbt_jax.engine import (TRACED_HYPERPARAMETERS, Data, init_state, jit_config, method_config, server_step,
                                split_config)
from asyndbt_jax.oracle import make_planted_task, oracle_feedback

R = 4
SHAPES = dict(num_fragment_words=6, vocab_size=12, num_classes=2, num_candidates=5)


@pytest.fixture(scope="module")
def case():
    task = make_planted_task(jax.random.key(0), num_workers=R, **SHAPES, num_test=200)
    config = method_config("asyndbt", num_workers=R, num_active=2, max_staleness=4, num_samples=6, lr_fragment=0.05,
                           lr_demos=0.05, lower_rounds=2, **SHAPES)
    return functools.partial(oracle_feedback, task.oracle), Data(task.train, task.validation), config


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]


@pytest.mark.parametrize("refresh", [True, False])
def test_traced_step_equals_the_step_with_the_values_baked_in(case, refresh):
    feedback, data, config = case
    config = config._replace(psi=0.01, mu=0.5, epsilon=1e-4)  # a refresh that adds cuts
    state = init_state(config, jax.random.key(1))
    arrived = jnp.array([True, False, True, False])
    traced, _ = jit_config(server_step, static_argnums=(0, 1))(config, feedback, state, arrived, data, refresh)
    baked, _ = jax.jit(server_step, static_argnums=(0, 1))(config, feedback, state, arrived, data, refresh)
    for a, b in zip(_leaves(traced), _leaves(baked)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_changing_hyperparameters_reuses_the_compilation_and_the_new_values(case):
    feedback, data, config = case
    step = jit_config(server_step, static_argnums=(0, 1))
    state = init_state(config, jax.random.key(1))
    arrived = jnp.array([True, True, False, False])
    first, _ = step(config, feedback, state, arrived, data, False)
    compiled = step.compiled._cache_size()
    changed = config._replace(lr_fragment=0.5, lr_demos=0.01, psi=0.1, mu=2.0, max_norm=1.0, epsilon=0.3)
    second, _ = step(changed, feedback, state, arrived, data, False)
    assert step.compiled._cache_size() == compiled  # no recompilation
    # ... and the new values act: a larger fragment step moves p further from where both started
    start = np.asarray(state.workers.selection.fragment_probs[:2])
    moved = [np.abs(np.asarray(s.workers.selection.fragment_probs[:2]) - start).sum() for s in (first, second)]
    assert moved[1] > 2 * moved[0]
    # a shape change is static: it compiles anew
    bigger = config._replace(num_samples=8)
    step(bigger, feedback, init_state(bigger, jax.random.key(1)), arrived, data, False)
    assert step.compiled._cache_size() == compiled + 1


def test_split_config_resolves_the_derived_defaults(case):
    _, _, config = case
    static, hyper = split_config(config)
    assert set(hyper) == set(TRACED_HYPERPARAMETERS)
    assert all(getattr(static, name) is None for name in TRACED_HYPERPARAMETERS)
    assert float(hyper["lr_consensus"]) == pytest.approx(config.eta_consensus())  # η_z = 1/(Rμ)
    assert float(hyper["epsilon"]) == pytest.approx(config.eps())  # 0.01 nats per worker
    assert static._replace(**{k: float(v) for k, v in hyper.items()}).eps() == pytest.approx(config.eps())
    hash(static)  # the static part keys the compilation cache
