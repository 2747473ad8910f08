"""Label-scoring throughput on the embedded model: naive vs padded vs shared-prefix reuse.

    python benchmarks/llm_throughput.py [--quick] [--json] [--out FILE] [--model NAME] [--configs K]

Realistic AsynDBT batches: each sampled configuration is an instruction, one demonstration
per class (U = 2) with its answer word, a 75-word "Note:" fragment, then 8 queries that end
with the answer cue; labels " positive" / " negative". The review sentences are short
hand-written examples shipped here (their length, not their content, sets the cost); the
fragment words are drawn with a fixed seed from a word list. Each of ``--configs`` (default
4; ``--quick``: 2) configurations is scored by the three modes of
``asyndbt_jax.llm.LocalScorer``:

* ``naive``: one forward per prompt;
* ``padded``: one right-padded batch of the 8 whole prompts;
* ``shared_prefix``: the prefix once, then the 8 queries on its key/value cache.

JSON: ``prompts_per_s`` per mode, ``speedup_prefix_vs_naive`` (shared_prefix / naive
prompts per second), ``max_abs_logprob_diff`` (largest |naive − shared_prefix| label
log-prob over every prompt and label) and ``max_abs_logprob_diff_padded``; also the model's
load time and source, the token counts and the machine. Never asserts.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

DEMOS = {
    "positive": ["A warm, funny and beautifully acted film.", "I loved every minute of this charming story.",
                 "A stunning, heartfelt triumph of a movie."],
    "negative": ["The plot is a mess and the jokes fall flat.", "Two hours of my life I will never get back.",
                 "Dull, predictable and far too long."],
}
QUERIES = [
    "An absolute delight from start to finish.", "The acting was wooden and the script was worse.",
    "A gripping thriller with a clever twist at the end.", "I fell asleep halfway through this boring mess.",
    "Gorgeous visuals and a moving soundtrack.", "Painfully slow, with characters I did not care about.",
    "One of the best films I have seen this year.", "A lazy sequel that adds nothing new.",
    "Sharp writing and a wonderful lead performance.", "The dialogue was cringeworthy and the ending made no sense.",
]
WORDS = (
    "tone overall feeling opinion judge writer review critic praise blame story acting music visual scene plot "
    "ending pace humour drama emotion subtle sarcasm irony compare recommend friend watch enjoy dislike final "
    "verdict strong weak clear mixed positive negative honest impression moment character dialogue direction"
).split()
INSTRUCTION = "Classify the sentiment of each movie review as positive or negative."


def configuration(rng: np.random.Generator, n_queries: int = 8, n_words: int = 75) -> tuple[str, list[str]]:
    demos = [(rng.choice(DEMOS[label]), label) for label in ("positive", "negative")]
    fragment = " ".join(rng.choice(WORDS, n_words))
    prefix = INSTRUCTION + "\n\n" + "".join(f"Review: {x}\nSentiment: {y}\n\n" for x, y in demos)
    prefix += f"Note: {fragment}.\n\n"
    queries = [f"Review: {q}\nSentiment:" for q in rng.choice(QUERIES, n_queries, replace=False)]
    return prefix, queries


def _extra(parser):
    parser.add_argument("--model", default="gemma3-270m", help="model name or path (default: the embedded gemma3-270m)")
    parser.add_argument("--configs", type=int, help="configurations scored per mode (default 4; quick: 2)")


def main() -> None:
    args = _common.parse_args(__doc__.splitlines()[0], _extra)
    import torch

    from asyndbt_jax.llm import MODES, LocalScorer, load_causal_lm

    loaded = load_causal_lm(args.model)
    scorer = LocalScorer(loaded)
    _common.log(args, f"loaded {loaded.name} from {loaded.source} in {loaded.load_seconds:.1f} s")
    K = args.configs or (2 if args.quick else 4)
    rng = np.random.default_rng(0)
    configs = [configuration(rng) for _ in range(K)]
    labels = (" positive", " negative")
    scorer.score(*configs[0], labels, mode="padded")  # warm-up (first-call allocations)
    seconds, results = {}, {}
    for mode in MODES:
        started = time.perf_counter()
        results[mode] = [scorer.score(prefix, queries, labels, mode=mode) for prefix, queries in configs]
        seconds[mode] = time.perf_counter() - started
        _common.log(args, f"{mode:14s} {sum(len(q) for _, q in configs) / seconds[mode]:6.2f} prompts/s")
    prompts = sum(len(q) for _, q in configs)
    naive = np.concatenate(results["naive"])
    tok = scorer.tokenizer
    _common.emit(
        {
            "benchmark": "llm_throughput",
            **_common.machine(),
            "torch_threads": torch.get_num_threads(),
            "model": loaded.name,
            "model_source": loaded.source,
            "load_seconds": loaded.load_seconds,
            "inputs": {"configurations": K, "queries_per_configuration": 8, "fragment_words": 75, "demonstrations": 2,
                       "labels": list(labels),
                       "prefix_tokens": [len(tok(p)["input_ids"]) for p, _ in configs],
                       "mean_query_tokens": float(np.mean([len(tok(q, add_special_tokens=False)["input_ids"])
                                                          for _, qs in configs for q in qs]))},
            "seconds": seconds,
            "prompts_per_s": {mode: prompts / seconds[mode] for mode in MODES},
            "speedup_prefix_vs_naive": seconds["naive"] / seconds["shared_prefix"],
            "speedup_padded_vs_naive": seconds["naive"] / seconds["padded"],
            "max_abs_logprob_diff": float(np.abs(naive - np.concatenate(results["shared_prefix"])).max()),
            "max_abs_logprob_diff_padded": float(np.abs(naive - np.concatenate(results["padded"])).max()),
            "target": {"speedup_at_least": 3.0, "diff_at_most": 1e-4},
        },
        args,
    )


if __name__ == "__main__":
    main()
