"""Label-scoring throughput on the embedded model: naive vs padded vs shared-prefix reuse.

    python benchmarks/llm_throughput.py [--quick] [--json] [--out FILE] [--model NAME] [--configs K]

Realistic AsynDBT batches, rendered by ``asyndbt_jax.llm.Template``: each sampled
configuration is one demonstration per class (U = 2) with its answer word, a 75-word
fragment, then 8 queries that end with the answer cue. The review sentences are short
hand-written examples shipped here (their length, not their content, sets the cost); the
fragment words are drawn with a fixed seed from a word list. Two prompt layouts:

* ``header`` (the top-level fields): the instruction and the "Note: <fragment>." once, in a
  header before the demonstrations, so instruction + demonstrations + fragment form the
  prefix shared by every query (labels " negative" / " positive");
* ``paper_layout``: the paper's SST-2 template, which repeats the note inside
  every block, the query's included: the ~100 fragment tokens after each query cannot be
  shared (labels " Terrible" / " Great").

Each of ``--configs`` (default 4; ``--quick``: 2) configurations is scored by the three
modes of ``asyndbt_jax.llm.LocalScorer``: ``naive`` (one forward per prompt), ``padded``
(one right-padded batch of the 8 whole prompts), ``shared_prefix`` (the prefix once, then
the 8 queries on its key/value cache).

JSON: ``prompts_per_s`` per mode, ``speedup_prefix_vs_naive`` (shared_prefix / naive
prompts per second), ``max_abs_logprob_diff`` (largest |naive − shared_prefix| label
log-prob over every prompt and label) and ``max_abs_logprob_diff_padded`` for the header
layout, the same fields under ``paper_layout``; also the model's load time and source,
the token counts and the machine. Never asserts.
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


def configuration(template, rng: np.random.Generator, n_queries: int = 8, n_words: int = 75) -> tuple[str, list[str]]:
    demos = [({"S1": rng.choice(DEMOS[label])}, u) for u, label in enumerate(("negative", "positive"))]
    fragment = list(rng.choice(WORDS, n_words))
    queries = [{"S1": q} for q in rng.choice(QUERIES, n_queries, replace=False)]
    return template.render(demos, fragment, queries)


def measure(args, scorer, template, K: int) -> dict:
    from asyndbt_jax.llm import MODES

    rng = np.random.default_rng(0)
    configs = [configuration(template, rng) for _ in range(K)]
    labels = template.label_words
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
    return {
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
    }


def _extra(parser):
    parser.add_argument("--model", default="gemma3-270m", help="model name or path (default: the embedded gemma3-270m)")
    parser.add_argument("--configs", type=int, help="configurations scored per mode (default 4; quick: 2)")


def main() -> None:
    args = _common.parse_args(__doc__.splitlines()[0], _extra)
    import torch

    from asyndbt_jax.llm import PAPER_TEMPLATES, LocalScorer, Template, load_causal_lm

    loaded = load_causal_lm(args.model)
    scorer = LocalScorer(loaded)
    _common.log(args, f"loaded {loaded.name} from {loaded.source} in {loaded.load_seconds:.1f} s")
    K = args.configs or (2 if args.quick else 4)
    header = Template("Review: {S1}", answers=("negative", "positive"), header=INSTRUCTION + " {note}",
                      cue="\nSentiment:")
    _common.log(args, "header layout (fragment once, shared)")
    main_layout = measure(args, scorer, header, K)
    _common.log(args, "paper layout (fragment in every block)")
    paper = measure(args, scorer, PAPER_TEMPLATES["sst2"], K)
    _common.emit(
        {
            "benchmark": "llm_throughput",
            **_common.machine(),
            "torch_threads": torch.get_num_threads(),
            "model": loaded.name,
            "model_source": loaded.source,
            "load_seconds": loaded.load_seconds,
            **main_layout,
            "paper_layout": paper,
            "target": {"speedup_at_least": 3.0, "diff_at_most": 1e-4},
        },
        args,
    )


if __name__ == "__main__":
    main()
