"""On-disk response cache: (backend, model, exact prompt, label words) → label log-probs.

One SQLite file in WAL mode, so several processes and threads can read and write it at
once (writers wait up to a minute for each other instead of failing). Every answer is
committed as soon as it is known: a run that fails half-way keeps what it paid for, and
re-running the same experiment makes no LLM call for prompts already answered. Hits and
misses are counted on the object (``hits``, ``misses``) for the run log.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Sequence

import numpy as np


def _key(backend: str, model: str, prompt: str, labels: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps([backend, model, prompt, list(labels)]).encode()).hexdigest()


class ResponseCache:
    """SQLite cache of label log-probs. ``path`` is created (with its folder) if missing."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, backend TEXT, model TEXT,"
            " prompt TEXT, labels TEXT, logprobs TEXT)"
        )
        self.hits = 0
        self.misses = 0

    def get(self, backend: str, model: str, prompts: Sequence[str], labels: Sequence[str]) -> list[np.ndarray | None]:
        """The cached ``[U]`` label log-probs of each prompt, or ``None`` where there is none."""
        keys = [_key(backend, model, p, labels) for p in prompts]
        found: dict[str, str] = {}
        with self._lock:
            for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit
                chunk = keys[start : start + 500]
                rows = self._db.execute(
                    f"SELECT key, logprobs FROM responses WHERE key IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
                found.update(rows)
        out = [np.asarray(json.loads(found[k]), np.float64) if k in found else None for k in keys]
        hit = sum(o is not None for o in out)
        self.hits += hit
        self.misses += len(out) - hit
        return out

    def put(self, backend: str, model: str, prompts: Sequence[str], labels: Sequence[str], logprobs) -> None:
        """Store ``logprobs [B, U]`` for ``prompts`` (one transaction; replaces older answers)."""
        logprobs = np.asarray(logprobs, np.float64)
        if logprobs.shape != (len(prompts), len(labels)):
            raise ValueError(f"logprobs must have shape ({len(prompts)}, {len(labels)}), got {logprobs.shape}")
        rows = [
            (_key(backend, model, p, labels), backend, model, p, json.dumps(list(labels)), json.dumps(lp.tolist()))
            for p, lp in zip(prompts, logprobs)
        ]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def split_cached(cache: ResponseCache | None, backend: str, model: str, prompts: Sequence[str],
                 labels: Sequence[str]) -> tuple[np.ndarray, list[int]]:
    """``(out [B, U], todo)``: the cached answers filled into ``out`` (zeros elsewhere) and
    the indices of the prompts still to be asked (all of them without a cache)."""
    out = np.zeros((len(prompts), len(labels)))
    if cache is None:
        return out, list(range(len(prompts)))
    got = cache.get(backend, model, prompts, labels)
    for b, lp in enumerate(got):
        if lp is not None:
            out[b] = lp
    return out, [b for b, lp in enumerate(got) if lp is None]

