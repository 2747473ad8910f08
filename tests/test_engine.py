import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asyndbt_jax.engine import Data, init_state, method_config, server_step
from asyndbt_jax.oracle import make_planted_task, oracle_feedback

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
