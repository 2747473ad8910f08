"""The feedback interface: how the optimizer asks a black box to score prompt configurations.

A feedback backend turns sampled configurations into loss tensors. It is called with

* ``config``: a :class:`~asyndbt_jax.Configuration` with ``demos [R, I, U]`` and
  ``fragment_words [R, I, M]`` (index ``-1`` means "no demonstration" / "no word");
* ``queries``: a pytree of per-worker query batches whose leaves have leading axes
  ``[R, B]`` (the backend defines its content: the planted oracle uses query types,
  labels and difficulties; the LLM backends use example indices),

and optionally ``active``: bool ``[R]``, the workers whose answers will be used (the
engine passes the arrived workers when it replies to them; a backend may skip the others,
whose values are ignored: an LLM backend then makes no call for them), and returns
:class:`Feedback` with ``losses [R, I, B]`` (cross-entropy of the observed
label) and ``correct [R, I, B]`` (argmax prediction equals the observed label).
Backends that are pure JAX (the planted oracle) can be called inside ``jit``; LLM
backends run on the host and return NumPy arrays.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax

from .selection import Configuration


class Feedback(NamedTuple):
    """Black-box answers for ``I`` configurations on ``B`` queries per worker.

    Attributes:
      losses: ``[..., I, B]`` cross-entropy of the observed label under the label
        distribution the model gives (renormalised over the label words).
      correct: bool ``[..., I, B]`` whether the argmax label equals the observed label.
    """

    losses: jax.Array
    correct: jax.Array


class FeedbackFn(Protocol):
    def __call__(self, config: Configuration, queries: Any, active: jax.Array | None = None) -> Feedback: ...
