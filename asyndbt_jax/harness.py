"""Run a named method on a planted task: what ``asyndbt simulate`` and the benchmarks call."""

from __future__ import annotations

import dataclasses
import functools
import inspect

import jax

from .engine import CENTRALISED, Data, method_config, method_data
from .oracle import PlantedTask, make_planted_task, oracle_feedback
from .simulator import DelayModel, SimulationResult, simulate


def pooled(data: Data) -> Data:
    """All workers' data on one machine (the centralised baselines): leaves ``[1, R·B]``."""
    flat = functools.partial(jax.tree.map, lambda x: x.reshape((1, -1)))
    return Data(flat(data.train), flat(data.validation))


_SIMULATE_ARGS = frozenset(inspect.signature(simulate).parameters) - {"config", "feedback_fn", "data", "test_queries", "delay"}


def run_method(
    method: str,
    feedback_fn,
    data: Data,
    test_queries,
    delay: DelayModel,
    *,
    shapes: dict,
    num_active: int,
    max_staleness: int,
    **kwargs,
) -> tuple[SimulationResult, object]:
    """Simulate ``method`` on per-worker ``data`` with any feedback (the planted oracle, an
    LLM). Centralised methods pool the data on one machine whose delay is the worker delay
    times R (it does every worker's queries). ``shapes``: ``num_fragment_words``,
    ``vocab_size``, ``num_classes``, ``num_candidates``. Keyword arguments that
    :func:`~asyndbt_jax.simulator.simulate` takes (``iterations``, ``seed``, ``checkpoint`` …)
    go to it; the rest override the method's :class:`~asyndbt_jax.engine.AsynDBTConfig`."""
    simulate_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _SIMULATE_ARGS}
    R = jax.tree.leaves(data.train)[0].shape[0]
    central = method in CENTRALISED
    if central and kwargs.get("num_malicious", 0):
        raise ValueError(f"{method} runs on one machine: there are no workers to corrupt (num_malicious must be 0)")
    config = method_config(
        method,
        num_workers=1 if central else R,
        num_active=1 if central else num_active,
        max_staleness=max_staleness,
        **shapes,
        **kwargs,
    )
    data = method_data(method, data)
    if central:
        data = pooled(data)
        delay = dataclasses.replace(delay, scale=delay.scale * R)
    result = simulate(config, feedback_fn, data, test_queries, delay, **simulate_kwargs)
    return result, config


def run_planted(method: str, task: PlantedTask, delay: DelayModel, **kwargs) -> tuple[SimulationResult, object]:
    """Simulate ``method`` on a planted task (see :func:`run_method` for the arguments)."""
    M, N, _ = task.oracle.word_utility.shape
    U, V, _ = task.oracle.demo_utility.shape
    shapes = dict(num_fragment_words=M, vocab_size=N, num_classes=U, num_candidates=V)
    return run_method(method, functools.partial(oracle_feedback, task.oracle), Data(task.train, task.validation),
                      task.test, delay, shapes=shapes, **kwargs)


__all__ = ["make_planted_task", "pooled", "run_method", "run_planted"]
