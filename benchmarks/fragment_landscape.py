"""What the lower level can gain on the real LLM: the training loss across prompt fragments.

The lower level tunes the fragment on the workers' training queries; its cuts switch on when
K primal-dual rounds lower the training loss by more than ε (0.01 nats per worker). This
measures the landscape those rounds search: for a few demonstration pairs (candidate ``j`` of
every class, ``j < --pairs``), the embedded model (fitted template, calibrated as in the job)
scores every training query of the split with no fragment and with ``--fragments`` fragments
of M words drawn uniformly from the fragment vocabulary (the lower level's starting
distribution). Per pair it reports the mean training loss (nats per query) without a fragment
and, over the random fragments, its mean, standard deviation, minimum and maximum, and
``best_gain`` = mean − minimum: the most that moving from a random fragment to the best one
seen could lower the loss. Training accuracy likewise. Prompts are cached; never asserts.

    python benchmarks/fragment_landscape.py --task glue:sst2 --glue-dir DIR --out docs/fragment_landscape_sst2.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, load_task, machine, parse_args  # noqa: E402


def _args(parser):
    parser.add_argument("--task", default="glue:sst2", help="a registry task, or glue:NAME with --glue-dir")
    parser.add_argument("--glue-dir", default=None)
    parser.add_argument("--seed", type=int, default=0, help="the split's seed and the fragments' draws")
    parser.add_argument("--pairs", type=int, default=2, help="demonstration pairs (candidate j of every class)")
    parser.add_argument("--fragments", type=int, default=16, help="random fragments per pair")
    parser.add_argument("--fragment-words", type=int, default=10, help="M, the job's default")
    parser.add_argument("--model", default="gemma3-270m")


def main():
    from asyndbt_jax.llm import LLMFeedback, LocalScorer, ResponseCache, cache_root
    from asyndbt_jax.tasks import paper_split, with_template

    args = parse_args(__doc__.splitlines()[0], _args)
    if args.quick:
        args.pairs, args.fragments = 1, 2
    data = with_template(load_task(args.task, args.glue_dir), "fitted")
    split = paper_split(data, seed=args.seed)
    task = split.prompt_task()
    feedback = LLMFeedback(task, LocalScorer(args.model), cache=ResponseCache(cache_root() / "responses.sqlite"),
                           calibrate=True)
    rng = np.random.default_rng(args.seed)
    N = len(task.vocabulary)  # entry 0 is "no word here"; the lower level starts uniform over all of them
    M, F = args.fragment_words, args.fragments
    fragments = np.concatenate([np.full((1, M), -1), rng.integers(0, N, (F, M))])  # row 0: no fragment
    queries = np.asarray(split.train)[None]
    started = time.perf_counter()
    pairs = []
    for j in range(args.pairs):
        demos = np.full((1, F + 1, task.num_classes * task.demos_per_class), j)
        losses, correct = feedback.host(fragments[None], demos, queries)
        loss, acc = losses[0].mean(-1), correct[0].mean(-1)  # [F + 1]: per fragment, over the training queries
        rand = loss[1:]
        pairs.append({
            "candidate": j,
            "loss_no_fragment": float(loss[0]),
            "loss_fragments_mean": float(rand.mean()),
            "loss_fragments_sd": float(rand.std(ddof=1)) if F > 1 else 0.0,
            "loss_fragments_min": float(rand.min()),
            "loss_fragments_max": float(rand.max()),
            "best_gain": float(rand.mean() - rand.min()),
            "accuracy_no_fragment": float(acc[0]),
            "accuracy_fragments_mean": float(acc[1:].mean()),
            "accuracy_fragments_min": float(acc[1:].min()),
            "accuracy_fragments_max": float(acc[1:].max()),
        })
        if not args.json:
            print(f"pair {j}: {pairs[-1]}", file=sys.stderr)
    emit({
        "benchmark": "fragment_landscape",
        **machine(),
        "inputs": {"task": args.task, "seed": args.seed, "pairs": args.pairs, "fragments": F, "fragment_words": M,
                   "vocabulary": N, "training_queries": int(queries.shape[1]), "model": args.model,
                   "template": "fitted", "calibrated": True},
        "pairs": pairs,
        "best_gain_mean": float(np.mean([p["best_gain"] for p in pairs])),
        "loss_fragments_sd_mean": float(np.mean([p["loss_fragments_sd"] for p in pairs])),
        "prompts": feedback.prompts,
        "seconds": time.perf_counter() - started,
    }, args)


if __name__ == "__main__":
    main()
