"""The feedback adapter: sampled configurations → prompts → LLM label scores → loss tensors.

:class:`LLMFeedback` implements the optimizer's feedback interface
(:mod:`asyndbt_jax.feedback`) on any scorer with ``score(prefix, queries, labels, cache=)``
(:class:`~asyndbt_jax.llm.local.LocalScorer`, :class:`~asyndbt_jax.llm.openai_backend.OpenAIScorer`).
Called with concrete arrays it runs on the host; called inside ``jit`` (the engine's server
step) it enters the host through :func:`jax.pure_callback`, so the same object serves both.

The queries are example indices ``[R, B]`` into :attr:`PromptTask.examples` (each worker's
private batch); the loss of a query is the cross-entropy of its true label under the
label distribution the model gives (renormalised over the answer words), and it is
correct when that distribution's argmax is the true label.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..feedback import Feedback
from ..selection import Configuration
from .prompts import Template

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class PromptTask:
    """The text side of one task.

    Attributes:
      template: how examples become prompts.
      examples: every example's text fields (``{"S1": ...}``); queries and demonstration
        candidates index into it.
      labels: int ``[n]``, the class of every example.
      candidates: int ``[U, V]``, the demonstration candidates of each class (example
        indices; row ``u`` must all have label ``u``). :data:`NO_DEMONSTRATION` (``-1``) is
        a candidate too: choosing it shows nothing in that slot.
      vocabulary: the ``N`` fragment words; an empty string is "no word" (a position that
        renders nothing).
      demos_per_class: ``k``, the demonstrations each class shows. A prompt configuration
        then has ``U·k`` demonstration slots, class-interleaved: slot ``s`` shows a candidate
        of class ``s mod U`` (``k = 2``: class 0, class 1, class 0, class 1).
    """

    template: Template
    examples: Sequence[Mapping[str, str]]
    labels: np.ndarray
    candidates: np.ndarray
    vocabulary: Sequence[str]
    demos_per_class: int = 1
    num_classes: int = field(init=False)

    def __post_init__(self):
        labels = np.asarray(self.labels)
        candidates = np.asarray(self.candidates)
        U = len(self.template.answers)
        if labels.shape != (len(self.examples),):
            raise ValueError(f"labels must have shape ({len(self.examples)},), got {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= U):
            raise ValueError(f"labels must lie in 0..{U - 1} (the template has {U} answers)")
        if candidates.ndim != 2 or candidates.shape[0] != U:
            raise ValueError(f"candidates must have shape [U={U}, V], got {candidates.shape}")
        if candidates.size and (candidates.min() < NO_DEMONSTRATION or candidates.max() >= len(self.examples)):
            raise ValueError("candidate indices must point into examples (or be -1: no demonstration)")
        wrong = (labels[candidates] != np.arange(U)[:, None]) & (candidates != NO_DEMONSTRATION)
        if wrong.any():
            u, v = map(int, np.argwhere(wrong)[0])
            raise ValueError(f"candidate {v} of class {u} (example {candidates[u, v]}) has label {labels[candidates[u, v]]}")
        if not len(self.vocabulary):
            raise ValueError("the fragment vocabulary is empty")
        if not (isinstance(self.demos_per_class, int) and 1 <= self.demos_per_class <= max(candidates.shape[1], 1)):
            raise ValueError(f"demos_per_class must be an integer between 1 and the {candidates.shape[1]} candidates "
                             f"per class, got {self.demos_per_class!r}")
        missing = [s for s in self.template.slots if self.examples and s not in self.examples[0]]
        if missing:
            raise ValueError(f"examples lack the template's fields {missing}")
        object.__setattr__(self, "labels", labels.astype(np.int64))
        object.__setattr__(self, "candidates", candidates.astype(np.int64))
        object.__setattr__(self, "num_classes", U)

    @property
    def num_slots(self) -> int:
        """Demonstration slots of a prompt configuration: ``U·k``."""
        return self.num_classes * self.demos_per_class

    def render(self, demos: Sequence[int], fragment_words: Sequence[int], queries: Sequence[int],
               extra: Sequence[Mapping[str, str]] = ()) -> tuple[str, list[str]]:
        """Prompt of one configuration: ``demos[s]`` indexes the candidates of slot ``s``'s class
        ``s mod U`` (``-1``: none; a candidate already shown is not repeated), ``fragment_words``
        the vocabulary (``-1``: no word), ``queries`` the examples; ``extra`` examples (e.g.
        :data:`CONTENT_FREE` inputs) are asked after them."""
        U = self.num_classes
        chosen = dict.fromkeys((s % U, int(k)) for s, k in enumerate(demos)  # in slot order, no repeats
                               if k >= 0 and self.candidates[s % U, k] != NO_DEMONSTRATION)
        shown = [(self.examples[self.candidates[u, k]], u) for u, k in chosen]
        fragment = [self.vocabulary[j] for j in fragment_words if j >= 0 and self.vocabulary[j]]  # "": no word
        return self.template.render(shown, fragment, [self.examples[i] for i in queries] + list(extra))

    def content_free(self) -> list[dict[str, str]]:
        """The :data:`CONTENT_FREE` inputs as examples of this task (every field filled with one)."""
        return [{slot: text for slot in self.template.slots} for text in CONTENT_FREE]


#: A candidate that shows no demonstration (see :class:`PromptTask`).
NO_DEMONSTRATION = -1

#: Content-free inputs of contextual calibration (Zhao et al., "Calibrate before use", ICML 2021).
CONTENT_FREE = ("N/A", "[MASK]")


def calibrate(logp: np.ndarray, content_free_logp: np.ndarray) -> np.ndarray:
    """Contextual calibration (Zhao et al., ICML 2021, Eq. 2 with W = diag(p̂_cf)⁻¹, b = 0).

    The label distribution ``p̂_cf`` the same prompt gives to content-free inputs (the mean
    of their probabilities) measures the prompt's own bias towards some answers; dividing
    it out and renormalising removes it: ``log p_cal(u) = log p(u) − log p̂_cf(u) + const``.

    Args:
      logp: ``[..., B, U]`` label log-probs (each row normalised over the labels).
      content_free_logp: ``[..., C, U]`` label log-probs of the ``C`` content-free inputs
        under the same prompt.

    Returns:
      ``[..., B, U]`` calibrated label log-probs (normalised over the labels).
    """
    C = content_free_logp.shape[-2]
    bias = np.logaddexp.reduce(content_free_logp, axis=-2) - np.log(C)  # log of the mean probability
    shifted = logp - bias[..., None, :]
    return shifted - np.logaddexp.reduce(shifted, axis=-1, keepdims=True)


class LLMFeedback:
    """Feedback from a black-box LLM (see the module doc).

    Args:
      task: the :class:`PromptTask`.
      scorer: a local or OpenAI scorer.
      cache: optional :class:`~asyndbt_jax.llm.cache.ResponseCache`: answered prompts are
        never asked again, across runs.
      calibrate: contextual calibration (:func:`calibrate`): every configuration also asks
        the :data:`CONTENT_FREE` inputs (two more queries on the same prefix) and its label
        distributions are corrected by theirs before the loss and the prediction.

    Attributes:
      configurations: configurations scored so far; ``prompts``: prompts scored (cache hits
      included); ``seconds``: host time spent scoring.
    """

    def __init__(self, task: PromptTask, scorer, *, cache=None, calibrate: bool = False):
        self.task = task
        self.scorer = scorer
        self.cache = cache
        self.calibrate = bool(calibrate)
        self.configurations = 0
        self.prompts = 0
        self.seconds = 0.0
        self._lock = threading.Lock()  # the real runtime's workers score from several threads

    def host(self, fragment_words, demos, queries, active=None) -> tuple[np.ndarray, np.ndarray]:
        """NumPy in, NumPy out: ``fragment_words [R, I, M]``, ``demos [R, I, U]``, ``queries [R, B]``
        → ``losses float32 [R, I, B]``, ``correct bool [R, I, B]``. Workers where ``active [R]``
        is False are not scored (losses 0, correct False)."""
        fragment_words, demos, queries = (np.asarray(a) for a in (fragment_words, demos, queries))
        R, I = demos.shape[:2]
        active = np.ones(R, bool) if active is None else np.asarray(active, bool).reshape(R)
        if fragment_words.shape[:2] != (R, I) or queries.shape[0] != R or queries.ndim != 2:
            raise ValueError(f"shapes disagree: fragment_words {fragment_words.shape}, demos {demos.shape}, queries {queries.shape}")
        if queries.size and (queries.min() < 0 or queries.max() >= len(self.task.examples)):
            raise ValueError("query indices must point into the task's examples")
        start = time.perf_counter()
        labels = self.task.labels[queries]  # [R, B]
        logp = np.zeros((R, I, queries.shape[1], self.task.num_classes))
        memo: dict[tuple, np.ndarray] = {}
        extra = self.task.content_free() if self.calibrate else []
        B = queries.shape[1]
        for r in np.flatnonzero(active):
            for i in range(I):
                key = (demos[r, i].tobytes(), fragment_words[r, i].tobytes(), queries[r].tobytes())
                if key not in memo:
                    prefix, texts = self.task.render(demos[r, i], fragment_words[r, i], queries[r], extra)
                    scores = self.scorer.score(prefix, texts, self.task.template.label_words, cache=self.cache)
                    memo[key] = calibrate(scores[:B], scores[B:]) if extra else scores
                logp[r, i] = memo[key]
        with self._lock:
            self.configurations += int(active.sum()) * I
            self.prompts += int(active.sum()) * I * (B + len(extra))
            self.seconds += time.perf_counter() - start
        true = np.take_along_axis(logp, labels[:, None, :, None], axis=-1)[..., 0]
        losses = (-true).astype(np.float32)
        correct = (logp.argmax(-1) == labels[:, None, :]) & active[:, None, None]
        if log.isEnabledFor(logging.INFO):
            log.info("%s", self.summary())
        return losses, correct

    def __call__(self, config: Configuration, queries, active=None) -> Feedback:
        R, I = config.demos.shape[:2]
        B = queries.shape[-1]
        active = jnp.ones((R,), bool) if active is None else active
        shapes = (jax.ShapeDtypeStruct((R, I, B), jnp.float32), jax.ShapeDtypeStruct((R, I, B), jnp.bool_))
        losses, correct = jax.pure_callback(self.host, shapes, config.fragment_words, config.demos, queries, active,
                                            vmap_method="sequential")
        return Feedback(losses, correct)

    def status(self) -> str:
        """A short progress field: prompts scored and the cache hit rate."""
        line = f"prompts={self.prompts}"
        if self.cache is not None and self.cache.hits + self.cache.misses:
            line += f" cache={100 * self.cache.hits / (self.cache.hits + self.cache.misses):.0f}%"
        return line

    def summary(self) -> str:
        """One log line: configurations, prompts, host seconds, cache hits/misses, and a dry
        run's projected calls and tokens."""
        line = f"LLM feedback: {self.configurations} configurations, {self.prompts} prompts, {self.seconds:.1f} s"
        if self.cache is not None:
            line += f", cache {self.cache.hits} hits / {self.cache.misses} misses"
        if getattr(self.scorer, "dry_run", False):
            line += "; " + self.scorer.projection()
        return line
