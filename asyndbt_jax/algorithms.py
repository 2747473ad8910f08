"""AsynDBT and the methods it is measured against as optimizers: ``init`` / ``step`` / ``decode``.

In the style of optax and FedJAX: a factory per method returns an :class:`Algorithm`, a
hashable value whose ``step`` is a pure function a user calls inside their own ``jax.jit``
with their own black-box loss::

    opt = asyndbt(num_workers=8, num_active=4, num_fragment_words=6, vocab_size=12,
                  num_classes=2, num_candidates=5)
    state = opt.init(jax.random.key(0))
    step = jax.jit(opt.step, static_argnums=3)            # the loss function is static
    state, metrics = step(state, arrived, batch, loss_fn)  # arrived: bool [R]
    prompts = opt.decode(state)

The loss function has the feedback interface (:mod:`asyndbt_jax.feedback`):
``loss_fn(configuration, queries, active=None) -> Feedback(losses [R, I, B], correct [R, I, B])``
for ``configuration.fragment_words [R, I, M]`` and ``configuration.demos [R, I, U]``.

Only shapes and switches are static. The hyper-parameters in
:data:`~asyndbt_jax.engine.TRACED_HYPERPARAMETERS` (learning rates, clip norm, μ, ψ, c₁, ε, γ)
are traced: ``hp = opt.hyperparams()`` gives their defaults, and ``step(..., hp)`` with changed
values (same keys, same types) reuses the compilation. ``lr_consensus`` (``η_z``) and ``epsilon`` (``ε``) default to values
derived from the configuration (``1/(Rμ)``, ``0.01·R``); pass them too when you change ``mu``.

``num_active`` (S) sets the cost of a step: the arrived workers' replies are computed S at a
time (an iteration with more arrivals takes more chunks), so a step with S of R workers
arriving costs in proportion to S; the default ``num_active = num_workers`` computes all R
workers masked, the better choice when most arrive. Both give the same result.

The scheduling (which workers arrive, the staleness bound τ) is the caller's: ``step``
counts each worker's staleness (``state.workers.staleness``) and refreshes the lower level
every ``refresh_every`` iterations with every worker, as the simulator does.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .engine import (TRACED_HYPERPARAMETERS, AsynDBTConfig, Data, EngineState, StepMetrics, decoded_prompts, init_state,
                     method_config, method_data, server_step, split_config)
from .selection import Configuration


class Algorithm(NamedTuple):
    """One method of the family as a pure ``init``/``step``/``decode`` triple (hashable)."""

    method: str
    config: AsynDBTConfig

    def init(self, key: jax.Array) -> EngineState:
        """Uniform selection variables for every worker, no cuts, ``z`` uniform."""
        return init_state(self.config, key)

    def hyperparams(self) -> dict[str, float]:
        """The traced hyper-parameters' default values (derived ones resolved), as Python
        floats: pass the dict, changed or not, to every ``step`` call. (A call whose values
        differ in type from the last, e.g. a ``jax.Array`` where a float was, compiles once
        more.)"""
        return {k: float(v) for k, v in split_config(self.config)[1].items()}

    def step(self, state: EngineState, arrived: jax.Array, batch: Data, loss_fn,
             hyperparams: dict | None = None) -> tuple[EngineState, StepMetrics]:
        """One server iteration: accept the ``arrived [R]`` workers' messages, update the
        consensus and the cut duals, refresh the lower level every ``refresh_every``
        iterations, and reply to the arrived workers, which take their next step on
        ``batch`` (per-worker ``train``/``validation`` query batches, leaves ``[R, B]``).

        Raises:
          ValueError: a ``hyperparams`` key that is not a traced hyper-parameter.
        """
        static, hyper = split_config(self.config)
        if hyperparams:
            unknown = sorted(set(hyperparams) - set(TRACED_HYPERPARAMETERS))
            if unknown:
                raise ValueError(f"unknown hyper-parameters {unknown}; traced ones: {list(TRACED_HYPERPARAMETERS)}")
            hyper = {**hyper, **{k: jnp.asarray(v, jnp.float32) for k, v in hyperparams.items()}}
        return server_step(static._replace(**hyper), loss_fn, state, arrived, method_data(self.method, batch))

    def decode(self, state: EngineState) -> Configuration:
        """The prompt each worker would use now: its ``argmax q`` demonstrations and the
        fragment ``argmax z`` (distributed methods) or its own ``argmax p`` (centralised ones)."""
        return decoded_prompts(self.config, state)


def _factory(method: str, **kwargs) -> Algorithm:
    kwargs.setdefault("num_active", kwargs.get("num_workers", 1))
    kwargs.setdefault("max_staleness", 1)  # the caller's scheduling: the step does not read it
    return Algorithm(method, method_config(method, **kwargs))


def asyndbt(**config) -> Algorithm:
    """AsynDBT (:class:`~asyndbt_jax.engine.AsynDBTConfig` fields as keywords: the shapes
    ``num_workers``, ``num_fragment_words``, ``vocab_size``, ``num_classes``,
    ``num_candidates`` are required)."""
    return _factory("asyndbt", **config)


def sync(**config) -> Algorithm:
    """Synchronous distributed bilevel tuning: every worker arrives every iteration."""
    return _factory("sync", **config)


def cendbt(**config) -> Algorithm:
    """Centralised bilevel tuning: one worker holding all data (``num_workers=1``), no consensus."""
    return _factory("cendbt", **config)


def bdpl(**config) -> Algorithm:
    """BDPL (Diao et al. 2023): the fragment only, no demonstrations, no lower level."""
    return _factory("bdpl", **config)


def demos_only(**config) -> Algorithm:
    """The demonstrations only, no fragment, no lower level."""
    return _factory("demos-only", **config)


def fedone(**config) -> Algorithm:
    """FedAvg of BDPL updates (FedOne-style): the fragment only, averaged by the server."""
    return _factory("fedone", **config)


def joint(**config) -> Algorithm:
    """The single-level ablation: one policy gradient over both levels on the training and
    validation queries together, no lower level, no cuts."""
    return _factory("joint", **config)
