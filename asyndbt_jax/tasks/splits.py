"""The paper's few-shot splits, worker partitions and the fragment vocabulary.

* :func:`paper_split`: per class 10 train, 10 validation and V = 50 demonstration
  candidates, plus 200 test examples (balanced over the classes), all disjoint, drawn with
  a seed (the paper's experimental setup).
* :func:`partition_workers`: each worker's private share of a split, IID or Dirichlet(α)
  non-IID, as fixed-size index arrays ``[R, B]`` (the engine's query batches).
* :func:`pmi_vocabulary`: the fragment vocabulary as BDPL builds it: adjacent words whose
  pointwise mutual information reaches ``min_pmi`` are joined into n-grams (up to
  ``max_n`` words), and the most frequent n-grams are kept.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..llm.adapter import NO_DEMONSTRATION, PromptTask
from .data import LabelledData


#: the fragment vocabulary's entry 0: "no word at this position" (see TaskSplit.prompt_task)
EMPTY_WORD = ""


@dataclass(frozen=True, eq=False)
class TaskSplit:
    """Disjoint index sets into ``data`` and the fragment vocabulary.

    Attributes:
      train, validation, test: example indices.
      candidates: ``[U, V]`` demonstration candidates of each class.
      vocabulary: the ``N`` fragment words/n-grams.
      notes: what differs from the paper's sizes, and why (empty when nothing does).
    """

    data: LabelledData
    train: np.ndarray
    validation: np.ndarray
    candidates: np.ndarray
    test: np.ndarray
    vocabulary: tuple
    notes: tuple = field(default=())

    def prompt_task(self, demos_per_class: int = 1, empty_slot: bool = False) -> PromptTask:
        """The task for the LLM feedback. Its fragment vocabulary is :data:`EMPTY_WORD`
        followed by the PMI n-grams: a fragment position may stay empty, and since the
        argmax of a uniform distribution is index 0, an untrained fragment decodes to no
        note at all (not to the first n-gram repeated M times); a word enters the decoded
        prompt only once the optimizer prefers it to leaving its position empty.

        ``empty_slot``: the same for the demonstrations: every class's candidates start with
        :data:`~asyndbt_jax.llm.adapter.NO_DEMONSTRATION`, so a slot may stay empty, and an
        untrained selection decodes to the template alone (the manual prompt); a
        demonstration enters the decoded prompt once the optimizer prefers it to none."""
        candidates = self.candidates
        if empty_slot:  # candidate 0 of every class: no demonstration
            candidates = np.concatenate([np.full((len(candidates), 1), NO_DEMONSTRATION), candidates], axis=1)
        return PromptTask(self.data.template, self.data.examples, self.data.labels, candidates,
                          (EMPTY_WORD,) + tuple(self.vocabulary), demos_per_class)


def paper_split(data: LabelledData, *, seed: int = 0, train: int = 10, validation: int = 10, candidates: int = 50,
                test: int = 200, vocabulary_size: int = 100, test_pool=None, **vocab_kwargs) -> TaskSplit:
    """Draw the paper's split of ``data`` (per class ``train``, ``validation``, ``candidates``;
    ``test`` in all). The vocabulary is built from every example outside the test set.
    ``test_pool``: example indices reserved for the test draw (a separate test file); the
    other draws then come from the remaining examples only.

    Raises:
      ValueError: a class with fewer examples than ``train + validation + candidates + 1``
        (``+ 0`` with a ``test_pool``; the message names the class and both sizes).
    """
    rng = np.random.default_rng(seed)
    U = data.num_classes
    need = train + validation + candidates
    reserved = np.zeros(len(data.labels), bool)
    if test_pool is not None:
        reserved[np.asarray(test_pool, np.int64)] = True
    counts = np.bincount(data.labels[~reserved], minlength=U)
    spare = 0 if test_pool is not None else 1  # without a test file, test is drawn from the same examples
    for u in range(U):
        if counts[u] < need + spare:
            where = " outside the test file" if test_pool is not None else ""
            raise ValueError(f"{data.name}: class {u} ({data.template.answers[u]!r}) has {counts[u]} examples{where}"
                             f"; the split needs {need} (train {train} + validation {validation} + candidates "
                             f"{candidates})" + (" plus at least 1 for test" if spare else ""))
    per_class = [rng.permutation(np.flatnonzero((data.labels == u) & ~reserved)) for u in range(U)]
    tr = np.concatenate([p[:train] for p in per_class])
    va = np.concatenate([p[train : train + validation] for p in per_class])
    cand = np.stack([p[train + validation : need] for p in per_class])
    if test_pool is None:
        rest = [p[need:] for p in per_class]
    else:
        rest = [rng.permutation(np.flatnonzero((data.labels == u) & reserved)) for u in range(U)]
    want = [test // U + (u < test % U) for u in range(U)]
    notes = []
    take = [min(w, len(r)) for w, r in zip(want, rest)]
    if sum(take) < test:
        notes.append(f"test has {sum(take)} examples, not {test}: the source has only {sum(len(r) for r in rest)} "
                     f"left after the train/validation/candidate draws")
    te = np.concatenate([r[:t] for r, t in zip(rest, take)])
    used = set(te.tolist())
    pool = [data.examples[i] for i in range(len(data.examples)) if i not in used]
    texts = [" ".join(ex[s] for s in data.template.slots) for ex in pool]
    vocab = pmi_vocabulary(texts, size=vocabulary_size, **vocab_kwargs)
    if len(vocab) < vocabulary_size:
        notes.append(f"vocabulary has {len(vocab)} n-grams, not {vocabulary_size}: no more pass the PMI/frequency filters")
    return TaskSplit(data, tr, va, cand, np.sort(te), tuple(vocab), tuple(notes))


def partition_workers(indices, labels, num_workers: int, *, alpha: float | None = None, seed: int = 0) -> np.ndarray:
    """Give each of ``num_workers`` a private share of ``indices``: ``[R, B]`` example indices.

    ``alpha=None``: IID (a random equal split). ``alpha > 0``: non-IID, each class spread
    over the workers by proportions drawn from Dirichlet(α). Shares are disjoint; a worker
    whose share is smaller than the largest repeats its own examples to reach ``B`` (the
    scorers score a repeated prompt once). Every worker gets at least one example.

    Raises:
      ValueError: fewer examples than workers, or ``alpha <= 0``.
    """
    indices = np.asarray(indices)
    labels = np.asarray(labels)
    R = int(num_workers)
    if R < 1 or len(indices) < R:
        raise ValueError(f"cannot give {R} workers a private share of {len(indices)} examples")
    if alpha is not None and alpha <= 0:
        raise ValueError(f"alpha must be > 0 (or None for IID), got {alpha}")
    rng = np.random.default_rng(seed)
    shares: list[list[int]] = [[] for _ in range(R)]
    if alpha is None:
        for r, part in enumerate(np.array_split(rng.permutation(indices), R)):
            shares[r] = list(part)
    else:
        for u in np.unique(labels[indices]):
            members = rng.permutation(indices[labels[indices] == u])
            cuts = (np.cumsum(rng.dirichlet(np.full(R, alpha))) * len(members)).round().astype(int)[:-1]
            for r, part in enumerate(np.split(members, cuts)):
                shares[r].extend(part.tolist())
        for r in range(R):  # nobody is left without data
            if not shares[r]:
                donor = max(range(R), key=lambda k: len(shares[k]))
                shares[r].append(shares[donor].pop())
    B = max(len(s) for s in shares)
    return np.array([[s[b % len(s)] for b in range(B)] for s in shares], np.int64)


_WORD = re.compile(r"[0-9A-Za-z\u00C0-\u024F]+(?:'[A-Za-z]+)?")


def pmi_vocabulary(texts, *, size: int = 100, max_n: int = 5, min_count: int = 5, min_pmi: float = 1.0,
                   min_freq: int = 5) -> list[str]:
    """Top-``size`` PMI n-grams of ``texts`` (BDPL's construction, lower-cased words).

    Adjacent words ``(a, b)`` seen more than ``min_count`` times, with
    ``log(total · n(a, b) / (n(a) n(b))) >= min_pmi``, are glued; each maximal glued run of
    at most ``max_n`` words is an n-gram. The n-grams are recounted over the texts, those
    seen more than ``min_freq`` times kept, and the most frequent ``size`` returned (ties:
    alphabetical). May return fewer than ``size`` on small corpora.
    """
    sentences = [[w.lower() for w in _WORD.findall(t)] for t in texts]
    sentences = [s for s in sentences if s]
    words = Counter(w for s in sentences for w in s)
    pairs = Counter((s[i], s[i + 1]) for s in sentences for i in range(len(s) - 1))
    total = sum(pairs.values())
    strong = {
        (a, b) for (a, b), n in pairs.items()
        if n > min_count and words[a] > min_count and words[b] > min_count
        and math.log(total * n / (words[a] * words[b])) >= min_pmi
    }
    grams = set()
    for s in sentences:
        run = [s[0]]
        for a, b in zip(s, s[1:]):
            if (a, b) in strong:
                run.append(b)
            else:
                grams.add(tuple(run))
                run = [b]
        grams.add(tuple(run))
    grams = {g for g in grams if len(g) <= max_n}
    counts = Counter()
    for s in sentences:
        for i in range(len(s)):
            for n in range(1, max_n + 1):
                g = tuple(s[i : i + n])
                if len(g) == n and g in grams:
                    counts[g] += 1
    kept = sorted(((c, " ".join(g)) for g, c in counts.items() if c > min_freq), key=lambda cg: (-cg[0], cg[1]))
    return [g for _, g in kept[:size]]
