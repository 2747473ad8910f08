"""asyndbt_jax: asynchronous distributed bilevel prompt tuning (AsynDBT) in JAX.

Public API (one concept per module, re-exported here):

* :func:`project_simplex`, :func:`project_simplex_bisection` (``simplex``)
* :class:`SelectionVariables`, :class:`Configuration`, :func:`init_selection`,
  :func:`sample_categorical`, :func:`sample_configurations`, :func:`categorical_log_prob`,
  :func:`log_prob`, :func:`decode` (``selection``)
* :func:`policy_gradient`, :func:`selection_gradient`, :func:`centred_weights` (``estimators``)
* :func:`simplex_adam`, :func:`project_onto_simplex` (``optim``)
* :class:`Algorithm` and a factory per method: :func:`asyndbt`, :func:`sync`, :func:`cendbt`,
  :func:`bdpl`, :func:`demos_only`, :func:`fedone`, :func:`joint` (``algorithms``: ``init``/``step``/
  ``decode`` for your own ``jax.jit`` loop); :class:`Data` (per-worker query batches) and
  :class:`Feedback` (what a black-box loss returns)
"""

from importlib.metadata import PackageNotFoundError, version

from .algorithms import Algorithm, asyndbt, bdpl, cendbt, demos_only, fedone, joint, sync
from .engine import Data
from .estimators import centred_weights, policy_gradient, selection_gradient
from .feedback import Feedback
from .optim import project_onto_simplex, simplex_adam
from .selection import (
    Configuration,
    SelectionVariables,
    categorical_log_prob,
    decode,
    init_selection,
    log_prob,
    sample_categorical,
    sample_configurations,
)
from .simplex import project_simplex, project_simplex_bisection

try:
    __version__ = version("asyndbt_jax")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "Algorithm",
    "Configuration",
    "Data",
    "Feedback",
    "SelectionVariables",
    "asyndbt",
    "bdpl",
    "categorical_log_prob",
    "cendbt",
    "centred_weights",
    "decode",
    "demos_only",
    "fedone",
    "init_selection",
    "joint",
    "log_prob",
    "policy_gradient",
    "project_onto_simplex",
    "project_simplex",
    "project_simplex_bisection",
    "sample_categorical",
    "sample_configurations",
    "selection_gradient",
    "simplex_adam",
    "sync",
]
