"""Projected optax optimizers for parameters that live on probability simplices.

BDPL's update (Diao et al., TMLR 2023), used for every ``p`` and ``q`` step in AsynDBT: clip the
gradient to global norm 3, take an Adam step (lr 1e-4), project every row back onto the
simplex. ``simplex_adam`` is that chain as one ``optax.GradientTransformation``; the
projection itself is :func:`project_onto_simplex`, a stateless transformation that can
end any optax chain.

Per-worker use: the global-norm clip must see one worker's gradient only, so lift the
optimizer over the worker axis with ``jax.vmap`` (``jax.vmap(opt.init)(params)``,
``jax.vmap(opt.update)(grads, state, params)``) rather than updating a stacked pytree at
once.
"""

from __future__ import annotations

import math

import jax
import optax

from ._checks import is_concrete
from .simplex import project_simplex


def project_onto_simplex() -> optax.GradientTransformation:
    """A transformation that turns ``updates`` into ``project_simplex(params + updates) - params``.

    After ``optax.apply_updates(params, updates)`` every leaf's rows (last axis) lie on
    the probability simplex (up to one rounding of the final addition). Needs ``params``.
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("project_onto_simplex needs params: call opt.update(grads, state, params)")
        new_params = jax.tree.map(lambda p, u: project_simplex(p + u), params, updates)
        return jax.tree.map(lambda n, p: n - p, new_params, params), state

    return optax.GradientTransformation(init_fn, update_fn)


def simplex_adam(learning_rate: float = 1e-4, max_norm: float = 3.0) -> optax.GradientTransformation:
    """BDPL's projected optimizer: ``clip_by_global_norm(max_norm) → adam(lr) → project``.

    Args:
      learning_rate: Adam step size (AsynDBT: 1e-4). A float, a traced scalar (a learning rate
        passed as data into a jitted step) or an optax schedule.
      max_norm: global gradient-norm clip (BDPL: 3). ``math.inf`` disables clipping.

    Returns:
      An ``optax.GradientTransformation`` whose applied updates keep every row of every
      leaf on the probability simplex.

    Paper: BDPL's projected step, and the ``proj_Δ(p − η ∇̂)`` steps of AsynDBT's lower and upper levels
    (docs/algorithm.md).
    """
    if (not callable(learning_rate) and is_concrete(learning_rate)
            and not (math.isfinite(learning_rate) and learning_rate > 0)):
        raise ValueError(f"learning_rate must be a finite positive number, got {learning_rate!r}")
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm!r}")
    parts = [] if math.isinf(max_norm) else [optax.clip_by_global_norm(max_norm)]
    return optax.chain(*parts, optax.adam(learning_rate), project_onto_simplex())
