"""The jitted AsynDBT iteration equals the NumPy per-worker-loop reference (benchmarks/numpy_step.py)."""

import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asyndbt_jax import cuts as cutlib
from asyndbt_jax.engine import Data, server_step
from asyndbt_jax.oracle import oracle_feedback

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import numpy_step  # noqa: E402

R = 5


def prepared(seed):
    return numpy_step.make_case(R, M=4, N=6, U=2, V=5, I=4, num_validation=6, capacity=3, seed=seed)


@pytest.mark.parametrize("seed", [0, 5])
def test_two_iterations_match_numpy_loop(seed):
    """An ordinary iteration, then one that refreshes the polyhedron (K primal-dual rounds on
    the training batches, the value-function cut with its coefficients on q), each equal to
    the worker-by-worker NumPy reference."""
    task, config, state = prepared(seed)
    config = config._replace(epsilon=1e-4)  # a gap the refresh's cut exceeds
    state = state._replace(server=state.server._replace(iteration=jnp.asarray(config.refresh_every - 1, jnp.int32)))
    feedback = functools.partial(oracle_feedback, task.oracle)
    data = Data(task.train, task.validation)
    ref = numpy_step.from_engine(state)
    key = state.key
    step = jax.jit(server_step, static_argnums=(0, 1))
    cuts_before = int(state.server.cuts.active.sum())
    for arrived in ([True, False, True, True, False], [False, True, True, False, True]):
        state, metrics = step(config, feedback, state, jnp.asarray(arrived), data)
        ref, key, _ = numpy_step.numpy_server_step(config, task.oracle, ref, np.array(arrived), task.validation, key, task.train)
    assert bool(metrics.refreshed)
    assert int(state.server.cuts.active.sum()) > cuts_before  # the refresh added a cut (its gap exceeded ε)
    np.testing.assert_allclose(state.server.consensus, ref.z, atol=1e-5)
    np.testing.assert_allclose(state.server.duals, ref.rho, atol=1e-5)
    np.testing.assert_allclose(state.server.cuts.duals, ref.cut_lambda, atol=1e-5)
    np.testing.assert_array_equal(state.server.cuts.active, ref.cut_active)
    np.testing.assert_allclose(state.server.cuts.offset, ref.cut_c, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.stack(state.server.cuts.demo_coef, axis=1), ref.cut_e, atol=1e-4)
    np.testing.assert_allclose(np.stack(state.server.cuts.worker_coef, axis=2), ref.cut_a, atol=1e-4)
    np.testing.assert_allclose(state.server.demo_terms, ref.demo_terms, atol=1e-4)
    np.testing.assert_allclose(state.workers.selection.fragment_probs, ref.p, atol=1e-5)
    np.testing.assert_allclose(state.workers.selection.demo_probs, ref.q, atol=1e-5)
    np.testing.assert_array_equal(state.server.staleness, ref.staleness)


def test_no_array_of_the_step_reaches_2_31_elements_at_100k_workers():
    """Past 2^31 elements XLA's GPU emitter indexes a whole fusion in 64-bit integers, which
    is what a stacked [R, M, C, N] cut buffer did at 100k workers (3·10^9 elements). Traced
    with abstract shapes only: nothing is allocated."""
    R0, R_big = 11, 100_000
    task, config, state = numpy_step.make_case(R0)
    grow = lambda x: jax.ShapeDtypeStruct(((R_big,) + x.shape[1:]) if x.ndim and x.shape[0] == R0 else x.shape, x.dtype)  # noqa: E731
    state, data = jax.tree.map(grow, state), jax.tree.map(grow, Data(task.train, task.validation))
    config = config._replace(num_workers=R_big)
    feedback = functools.partial(oracle_feedback, task.oracle)
    closed = jax.make_jaxpr(server_step, static_argnums=(0, 1))(config, feedback, state, jax.ShapeDtypeStruct((R_big,), bool), data)

    def sizes(jaxpr):
        for eqn in jaxpr.eqns:
            yield from (int(np.prod(v.aval.shape)) for v in eqn.outvars if hasattr(v.aval, "shape"))
            for param in eqn.params.values():
                for sub in param if isinstance(param, (list, tuple)) else [param]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        yield from sizes(inner)

    largest = max(max(sizes(closed.jaxpr)), max(int(np.prod(x.shape)) for x in jax.tree.leaves(state)))
    assert largest == R_big * 75 * 100  # the [R, M, N] fragment tensors, one cut slot each
    assert largest < 2**31


def test_the_gathered_step_equals_the_dense_step():
    """With S = 8 of R = 64 the step works on the arrived workers gathered S at a time (its
    feedback sees batches of S, never R) and ends where the dense step over all R masked
    workers does: an iteration with S arrivals, one with 20 (three chunks) and a refresh."""
    R_, S = 64, 8
    task, config, state = numpy_step.make_case(R_, M=4, N=6, U=2, V=5, I=4, num_validation=6, capacity=3)
    gathered, dense = config._replace(num_active=S), config._replace(num_active=R_)
    shapes = []

    def feedback(sampled, queries, active=None):
        shapes.append(sampled.demos.shape[0])
        return oracle_feedback(task.oracle, sampled, queries)

    data = Data(task.train, task.validation)
    rng = np.random.default_rng(0)
    masks = [np.isin(np.arange(R_), rng.choice(R_, n, replace=False)) for n in (S, 20, S)]
    a = b = state
    for i, arrived in enumerate(masks):
        refresh = jnp.asarray(i == 2)
        if i == 1:  # an arrived worker sends NaN: both reject it and keep its last copy and cut terms
            bad = int(np.flatnonzero(arrived)[3])
            poison = lambda s: s._replace(workers=s.workers._replace(selection=s.workers.selection._replace(  # noqa: E731
                fragment_probs=s.workers.selection.fragment_probs.at[bad].set(jnp.nan))))
            a, b = poison(a), poison(b)
        a, ma = jax.jit(server_step, static_argnums=(0, 1))(gathered, feedback, a, jnp.asarray(arrived), data, refresh)
        b, mb = jax.jit(server_step, static_argnums=(0, 1))(dense, feedback, b, jnp.asarray(arrived), data, refresh)
        assert float(ma.mean_loss) == pytest.approx(float(mb.mean_loss), abs=1e-5, nan_ok=True)
        assert int(ma.queries) == int(mb.queries) and int(ma.num_rejected) == int(mb.num_rejected) == (i == 1)
        if i == 1:
            assert np.isfinite(np.asarray(a.server.received[bad])).all()
    assert bool(ma.refreshed)
    # the kept cut terms are those of every worker's latest copy
    np.testing.assert_allclose(a.server.fragment_terms, cutlib.worker_terms(a.server.cuts, a.server.received), atol=1e-5)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jnp.issubdtype(x.dtype, jnp.floating):
            np.testing.assert_allclose(x, y, atol=1e-5)
    assert set(shapes) == {S, R_}  # the gathered replies score S workers; the dense ones and the refresh all R
    shapes.clear()
    fresh = lambda *args: feedback(*args)  # noqa: E731  (a new static argument: traced anew)
    jax.make_jaxpr(server_step, static_argnums=(0, 1))(gathered, fresh, a, jnp.asarray(masks[0]), data, False)
    # the reply's feedback call scores S workers; the R-sized calls are the refresh's (a branch not taken here)
    assert shapes[-1] == S and shapes[:-1] == [R_] * (len(shapes) - 1)
