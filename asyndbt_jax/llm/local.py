"""Label scoring on a local causal LM (transformers, torch CPU), with shared-prefix reuse.

A prompt is a shared ``prefix`` (instruction, demonstrations and fragment: identical for
every query of one sampled configuration) followed by one ``query`` text per example,
which ends with the answer cue. A label word (``" Great"``, ``" thumbs up"``) may span
several tokens: its score is the sum of its tokens' log-probabilities after the prompt,
and the ``U`` label scores are renormalised with a log-softmax. :meth:`LocalScorer.score`
returns these ``[B, U]`` log-probs as float64 NumPy.

Three ways to compute the same numbers (``mode``):

* ``"shared_prefix"`` (default): run the prefix once, keep its key/value cache, and score
  every query of the configuration on it in one batched forward;
* ``"padded"``: right-padded batches of whole prompts;
* ``"naive"``: one forward per prompt (the baseline of ``benchmarks/llm_throughput.py``).

Every mode uses the same token ids: the prefix is tokenised with the tokenizer's special
tokens (its BOS), the queries and label words without, and the ids are concatenated (the
joined text is never re-tokenised). The output projection runs only at the scored
positions (gemma's is 262k words wide: more multiply-adds per position than its 18 layers). The last
prefix token is held back from the cache and starts every query row, so the first query
token always has a prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .cache import split_cached
from .models import LoadedModel, load_causal_lm

MODES = ("shared_prefix", "padded", "naive")


@dataclass(frozen=True)
class _Encoded:
    prefix: list[int]
    queries: list[list[int]]
    labels: list[list[int]]


class LocalScorer:
    """Scores label words after prompts on one local model.

    Args:
      model: a :class:`~asyndbt_jax.llm.models.LoadedModel` or anything
        :func:`~asyndbt_jax.llm.models.load_causal_lm` accepts (default: the embedded
        gemma-3-270m).
      max_batch: rows per forward.
    """

    backend = "local"

    def __init__(self, model: LoadedModel | str = "gemma3-270m", *, max_batch: int = 64):
        self.loaded = model if isinstance(model, LoadedModel) else load_causal_lm(model)
        self.model = self.loaded.model
        self.tokenizer = self.loaded.tokenizer
        self.name = self.loaded.name
        self.max_batch = int(max_batch)
        cfg = self.model.config.get_text_config()
        self.context_window = int(getattr(cfg, "max_position_embeddings", 0) or 0) or None
        self.forward_calls = 0

    # ------------------------------------------------------------------ encoding

    def encode_labels(self, labels: Sequence[str]) -> list[list[int]]:
        """Token ids of each label word (no special tokens).

        Raises:
          ValueError: fewer than 2 labels, a label with no tokens, or two labels with the same tokens.
        """
        if len(labels) < 2:
            raise ValueError(f"need at least 2 label words, got {list(labels)!r}")
        ids = [list(self.tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels]
        for label, t in zip(labels, ids):
            if not t:
                raise ValueError(f"label word {label!r} tokenizes to nothing")
        seen: dict[tuple, str] = {}
        for label, t in zip(labels, ids):
            if tuple(t) in seen:
                raise ValueError(f"label words {seen[tuple(t)]!r} and {label!r} tokenize to the same tokens {t}")
            seen[tuple(t)] = label
        return ids

    def _encode(self, prefix: str, queries: Sequence[str], labels: Sequence[str]) -> _Encoded:
        if not queries:
            raise ValueError("no queries to score")
        enc = _Encoded(
            list(self.tokenizer(prefix, add_special_tokens=True)["input_ids"]),
            [list(self.tokenizer(q, add_special_tokens=False)["input_ids"]) for q in queries],
            self.encode_labels(labels),
        )
        longest = len(enc.prefix) + max(len(q) for q in enc.queries) + max(len(t) for t in enc.labels)
        if self.context_window and longest > self.context_window:
            raise ValueError(
                f"prompt too long for {self.name}: prefix {len(enc.prefix)} + longest query "
                f"{max(len(q) for q in enc.queries)} + longest label {max(len(t) for t in enc.labels)} = "
                f"{longest} tokens > context window {self.context_window}"
            )
        return enc

    # ------------------------------------------------------------------ scoring

    def score(self, prefix: str, queries: Sequence[str], labels: Sequence[str], *, mode: str = "shared_prefix",
              cache=None) -> np.ndarray:
        """Label log-probs ``[B, U]`` (log-softmax over the labels) of ``prefix + queries[b]``.

        ``cache``: an optional :class:`~asyndbt_jax.llm.cache.ResponseCache`; prompts already
        in it are not run, and new answers are stored as soon as they are computed.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        queries = list(queries)
        prompts = [prefix + q for q in queries]
        if not queries:
            raise ValueError("no queries to score")
        out, todo = split_cached(cache, self.backend, self.name, prompts, labels)
        if not todo:
            return out
        # identical prompts in one batch are scored once
        unique = list(dict.fromkeys(queries[b] for b in todo))
        enc = self._encode(prefix, unique, labels)
        scored = {"shared_prefix": self._shared_prefix, "padded": self._padded, "naive": self._naive}[mode](enc)
        by_query = dict(zip(unique, scored))
        for b in todo:
            out[b] = by_query[queries[b]]
        if cache is not None:
            cache.put(self.backend, self.name, [prompts[b] for b in todo], labels, out[todo])
        return out

    # rows: one per query when every label is one token (all labels read at the query's last
    # position), else one per (query, label) holding the label's tokens but its last.
    @staticmethod
    def _rows(enc: _Encoded):
        single = all(len(t) == 1 for t in enc.labels)
        rows, targets = [], []  # targets[r]: (offset in row, token id, query, label)
        for q, ids in enumerate(enc.queries):
            if single:
                rows.append(list(ids))
                targets.append([(len(ids) - 1, t[0], q, u) for u, t in enumerate(enc.labels)])
            else:
                for u, t in enumerate(enc.labels):
                    rows.append(list(ids) + t[:-1])
                    targets.append([(len(ids) - 1 + j, tok, q, u) for j, tok in enumerate(t)])
        return rows, targets

    def _label_logprobs(self, hidden, offset: int, targets, n_queries: int, n_labels: int) -> np.ndarray:
        """Sum the label tokens' log-probs from the hidden states at the scored positions and
        renormalise over the labels. ``hidden[r]``: row ``r``'s ``[length, H]`` states, where
        the row's own tokens start at ``offset``."""
        import torch

        where = {}
        for r, tg in enumerate(targets):
            for pos, _, _, _ in tg:
                where.setdefault((r, pos), len(where))
        logits = self.model.lm_head(torch.stack([hidden[r][offset + pos] for r, pos in where]))
        cap = getattr(self.model.config.get_text_config(), "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        logp = torch.log_softmax(logits.float(), dim=-1).double()
        raw = torch.zeros(n_queries, n_labels, dtype=torch.float64)
        for r, tg in enumerate(targets):
            for pos, tok, q, u in tg:
                raw[q, u] += logp[where[(r, pos)], tok]
        return torch.log_softmax(raw, dim=-1).numpy()

    def _decoder(self):
        return self.model.get_decoder()

    def _naive(self, enc: _Encoded) -> np.ndarray:
        import torch

        rows, targets = self._rows(enc)
        P = len(enc.prefix)
        hidden = []
        with torch.inference_mode():
            for row in rows:
                self.forward_calls += 1
                hidden.append(self._decoder()(input_ids=torch.tensor([enc.prefix + row]), use_cache=False).last_hidden_state[0])
            return self._label_logprobs(hidden, P, targets, len(enc.queries), len(enc.labels))

    def _padded(self, enc: _Encoded) -> np.ndarray:
        import torch

        rows, targets = self._rows(enc)
        P = len(enc.prefix)
        full = [enc.prefix + row for row in rows]
        hidden = []
        with torch.inference_mode():
            for start in range(0, len(full), self.max_batch):
                chunk = full[start : start + self.max_batch]
                ids, mask = _right_pad(chunk, self._pad_id())
                self.forward_calls += 1
                h = self._decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
                hidden.extend(h)
            return self._label_logprobs(hidden, P, targets, len(enc.queries), len(enc.labels))

    def _shared_prefix(self, enc: _Encoded) -> np.ndarray:
        import torch
        from transformers import DynamicCache

        if len(enc.prefix) < 2:  # nothing to share
            return self._padded(enc)
        rows, targets = self._rows(enc)
        cached = len(enc.prefix) - 1
        with torch.inference_mode():
            prefix_cache = DynamicCache(config=self.model.config)
            self.forward_calls += 1
            self._decoder()(input_ids=torch.tensor([enc.prefix[:-1]]), cache=prefix_cache, use_cache=True)
            kv = [(layer.keys, layer.values) for layer in prefix_cache.layers]
            hidden = []
            for start in range(0, len(rows), self.max_batch):
                chunk = [[enc.prefix[-1]] + row for row in rows[start : start + self.max_batch]]
                n = len(chunk)
                # a fresh cache per batch over views of the prefix's keys/values: the model's
                # update concatenates into new tensors, so the prefix cache is never written
                batch_cache = DynamicCache(
                    ddp_cache_data=[(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in kv],
                    config=self.model.config,
                )
                ids, mask = _right_pad(chunk, self._pad_id())
                full_mask = torch.cat([torch.ones(n, cached, dtype=mask.dtype), mask], dim=1)
                positions = cached + torch.arange(ids.shape[1]).expand(n, -1)
                self.forward_calls += 1
                h = self._decoder()(input_ids=ids, attention_mask=full_mask, position_ids=positions,
                                    cache=batch_cache, use_cache=True).last_hidden_state
                hidden.extend(h)
            # row offsets are relative to the query tokens; the held-back prefix token is at 0
            return self._label_logprobs(hidden, 1, targets, len(enc.queries), len(enc.labels))

    def _pad_id(self) -> int:
        tok = self.tokenizer
        for candidate in (tok.pad_token_id, tok.eos_token_id):
            if candidate is not None:
                return int(candidate)
        return 0


def _right_pad(rows: Sequence[Sequence[int]], pad_id: int):
    """Right padding keeps every real token's default position; the mask hides the pads."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask
