"""Run a named method on a planted task: what ``asyndbt simulate`` and the benchmarks call."""

from __future__ import annotations

import dataclasses
import functools

import jax

from .engine import CENTRALISED, Data, method_config
from .oracle import PlantedTask, make_planted_task, oracle_feedback
from .simulator import DelayModel, SimulationResult, simulate


def pooled(task: PlantedTask) -> Data:
    """All workers' data on one machine (the centralised baselines): leaves ``[1, R·B]``."""
    flat = functools.partial(jax.tree.map, lambda x: x.reshape((1, -1)))
    return Data(flat(task.train), flat(task.validation))


def run_planted(
    method: str,
    task: PlantedTask,
    delay: DelayModel,
    *,
    iterations: int,
    num_active: int,
    max_staleness: int,
    seed: int = 0,
    history_path: str | None = None,
    progress: bool = True,
    target_validation_accuracy: float | None = None,
    eval_every: int = 10,
    **overrides,
) -> tuple[SimulationResult, object]:
    """Simulate ``method`` on ``task``; centralised methods pool the data on one machine
    whose delay is the worker delay times R (it does every worker's queries)."""
    R = task.train.label.shape[0]
    M, N, _ = task.oracle.word_utility.shape
    U, V, _ = task.oracle.demo_utility.shape
    central = method in CENTRALISED
    if central and overrides.get("num_malicious", 0):
        raise ValueError(f"{method} runs on one machine: there are no workers to corrupt (num_malicious must be 0)")
    shapes = dict(num_fragment_words=M, vocab_size=N, num_classes=U, num_candidates=V)
    workers = 1 if central else R
    config = method_config(
        method,
        num_workers=workers,
        num_active=1 if central else num_active,
        max_staleness=max_staleness,
        **shapes,
        **overrides,
    )
    data = pooled(task) if central else Data(task.train, task.validation)
    if central:
        delay = dataclasses.replace(delay, scale=delay.scale * R)
    result = simulate(
        config,
        functools.partial(oracle_feedback, task.oracle),
        data,
        task.test,
        delay,
        iterations=iterations,
        seed=seed,
        history_path=history_path,
        progress=progress,
        target_validation_accuracy=target_validation_accuracy,
        eval_every=eval_every,
    )
    return result, config


__all__ = ["make_planted_task", "pooled", "run_planted"]
