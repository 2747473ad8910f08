"""What makes the demonstration tuner learn on the real LLM: its levers, measured on a score table.

The embedded model answers every pair of demonstrations (one per class, from the first
``--pool`` candidates of each class) for every train, validation and (held-out) test
example of a task's split, calibrated, once (``(pool² × examples)`` prompts, cached). The
tuner then runs on that table instead of the model (a pure-JAX lookup: the same losses the
model gives, no fragment), so each lever costs seconds, not an LLM run:

* the method: ``asyndbt`` (R workers, the server waits for S) or ``demos-only`` (one
  machine holding every worker's data);
* candidates per class V (a prefix of the pool), samples per iteration I, iterations,
  the learning rate of the demonstration level;
* ``--empty-slot``: candidate 0 of every class is "no demonstration" (the manual prompt is
  then one of the choices, and an untrained selection decodes to it);
* the final pick: the last decoded prompt or the best one on validation (early stopping);
  each worker delivers its own, or (``pick: pooled``) every worker scores the R delivered
  prompts on its own validation batch and all adopt the one with the best pooled accuracy
  (R² batches of extra queries);
* the queries of the upper-level estimate: the worker's validation batch (the method) or
  its train and validation batches together;
* ``--validation N``: a split with N validation examples per class (the paper's 10); each
  worker's first 7, 14 or all of its validation examples then feed its estimates and its
  early stopping (the "validation examples per worker" lever).

The test examples never reach the tuner; they only score the prompt it delivers. Prints one
JSON object: the table's facts (the template alone's test accuracy; mean, best and
quantiles of the test accuracy over every pair: what random ICL gets on average and what
is there to find), and per lever setting the delivered prompt's test accuracy (mean and
std over run seeds) and the queries it scored.

    python benchmarks/tuner_levers.py --task mr --pool 8 --out docs/tuner_levers_mr.json
    python benchmarks/tuner_levers.py --task mr --pool 8 --validation 40 --out docs/tuner_levers_mr_val40.json
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, load_task, machine, parse_args  # noqa: E402


def _args(parser):
    parser.add_argument("--task", default="mr", help="a registry task, or glue:NAME with --glue-dir")
    parser.add_argument("--glue-dir", default=None)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=8, help="candidates per class in the table")
    parser.add_argument("--test", type=int, default=60, help="held-out test examples in the table")
    parser.add_argument("--validation", type=int, default=10,
                        help="validation examples per class in the split (the paper's: 10); a larger split adds the "
                             "'validation examples per worker' lever")
    parser.add_argument("--runs", type=int, default=10, help="tuner seeds per lever setting")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--active", type=int, default=2)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--empty-slot", action="store_true",
                        help="every class's candidate 0 is 'no demonstration' (the table then has (pool + 1)² pairs)")


class TableFeedback:
    """Feedback from a score table: ``losses``/``correct [V, V, Q]`` of demonstration pair
    ``(a, b)`` on table query ``q`` (two classes). Pure JAX: the engine calls it inside jit."""

    def __init__(self, losses, correct):
        import jax.numpy as jnp

        self.losses, self.correct = jnp.asarray(losses, jnp.float32), jnp.asarray(correct)

    def __call__(self, config, queries, active=None):
        from asyndbt_jax.feedback import Feedback

        a, b = config.demos[..., 0][..., None], config.demos[..., 1][..., None]  # [R, I, 1]
        q = queries[:, None, :]  # [R, 1, B]
        return Feedback(self.losses[a, b, q], self.correct[a, b, q])


def build_table(args):
    from asyndbt_jax.llm import LLMFeedback, LocalScorer, ResponseCache, cache_root
    from asyndbt_jax.tasks import paper_split, with_template

    data = with_template(load_task(args.task, args.glue_dir), "fitted")
    split = paper_split(data, seed=args.split_seed, test=args.test, validation=args.validation)
    task = split.prompt_task(empty_slot=args.empty_slot)
    queries = np.concatenate([split.train, split.validation, split.test])
    feedback = LLMFeedback(task, LocalScorer(args.model), cache=ResponseCache(cache_root() / "responses.sqlite"),
                           calibrate=True)
    V = args.pool + args.empty_slot
    losses = np.zeros((V, V, len(queries)), np.float32)
    correct = np.zeros((V, V, len(queries)), bool)
    started = time.perf_counter()
    for n, (a, b) in enumerate(itertools.product(range(V), range(V))):
        lo, co = feedback.host(np.full((1, 1, 1), -1), np.array([[[a, b]]]), queries[None])
        losses[a, b], correct[a, b] = lo[0, 0], co[0, 0]
        if not args.json:
            print(f"\rtable {n + 1}/{V * V} pairs ({time.perf_counter() - started:.0f} s)", end="", file=sys.stderr)
    if not args.json:
        print(file=sys.stderr)
    _, alone = feedback.host(np.full((1, 1, 1), -1), np.full((1, 1, 2), -1), queries[None])  # the template alone
    return data, split, queries, losses, correct, alone[0, 0], feedback.prompts, time.perf_counter() - started


def main():
    import jax
    import jax.numpy as jnp

    from asyndbt_jax.engine import Data, decoded_prompts
    from asyndbt_jax.harness import run_method
    from asyndbt_jax.simulator import parse_delay
    from asyndbt_jax.tasks import partition_workers, template_label

    args = parse_args(__doc__.splitlines()[0], _args)
    if args.quick:
        args.pool, args.test, args.runs = 2, 4, 2
    data, split, queries, losses, correct, alone, table_prompts, table_seconds = build_table(args)
    position = {int(e): i for i, e in enumerate(queries)}
    to_pos = np.vectorize(lambda e: position[int(e)])
    n_tr, n_va = len(split.train), len(split.validation)
    test_pos = np.arange(n_tr + n_va, len(queries))
    test_acc = correct[:, :, test_pos].mean(-1)  # [V, V]: the truth the tuner never sees
    R = args.workers
    train = to_pos(partition_workers(split.train, data.labels, R, seed=args.split_seed))
    validation = to_pos(partition_workers(split.validation, data.labels, R, seed=args.split_seed + 1))
    delay = parse_delay("lognormal:1.0")

    train_and_validation = np.concatenate([train, validation], axis=1)

    def run(method, V, samples, iterations, lr, keep_best, seed, upper="validation", per_worker=None, pick="own"):
        feedback = TableFeedback(losses[:V, :V], correct[:V, :V])
        queries = validation if upper == "validation" else train_and_validation
        queries = queries[:, :per_worker]  # each worker's first ``per_worker`` validation examples
        result, config = run_method(
            method, feedback, Data(jnp.asarray(train), jnp.asarray(queries)), jnp.asarray(validation[0]), delay,
            shapes=dict(num_fragment_words=1, vocab_size=2, num_classes=2, num_candidates=V), iterations=iterations,
            num_active=args.active, max_staleness=4, seed=seed, progress=False, eval_every=1, test_every=iterations,
            num_samples=samples, lr_demos=lr, lr_fragment=lr, keep_best=keep_best,
            **({} if method == "demos-only" else {"use_fragment": False}),
        )
        demos = np.asarray(result.kept.demos if keep_best else decoded_prompts(config, result.state).demos)
        spent = result.queries
        if pick == "pooled":  # every worker scores every worker's prompt on its batch; all adopt the best sum
            seen = queries.reshape(-1)
            pooled = [correct[a, b, seen].mean() for a, b in demos]
            spent += len(demos) * seen.size
            demos = demos[[int(np.argmax(pooled))]]
        return float(np.mean([test_acc[a, b] for a, b in demos])), spent

    pool = args.pool + args.empty_slot
    base = dict(method="asyndbt", V=pool, samples=4, iterations=25, lr=0.05, keep_best=False, upper="validation")
    settings = [base]
    for method in ("demos-only",):
        settings.append({**base, "method": method})
        settings.append({**base, "method": method, "keep_best": True})
    for V in (2, 4, 8):
        settings.append({**base, "V": min(V + args.empty_slot, pool)})
    for samples in (2, 8, 16):
        settings.append({**base, "samples": samples})
    for iterations in (10, 50, 100):
        settings.append({**base, "iterations": iterations})
    for lr in (0.01, 0.2, 0.5):
        settings.append({**base, "lr": lr})
    settings.append({**base, "keep_best": True})
    settings.append({**base, "keep_best": True, "samples": 8, "lr": 0.2})
    for method in ("asyndbt", "demos-only"):  # the upper-level estimate on every labelled query a worker holds
        settings.append({**base, "method": method, "upper": "train+validation"})
        settings.append({**base, "method": method, "upper": "train+validation", "iterations": 50, "lr": 0.2})
    paper_size = len(partition_workers(np.arange(2 * 10), np.arange(20) % 2, R)[0])
    for per_worker in sorted({paper_size, 2 * paper_size, validation.shape[1]}):  # validation examples per worker
        if per_worker <= validation.shape[1]:
            for method in ("asyndbt", "demos-only"):
                settings.append({**base, "method": method, "per_worker": per_worker})
                settings.append({**base, "method": method, "per_worker": per_worker, "iterations": 50, "lr": 0.2})
            settings.append({**base, "per_worker": per_worker, "keep_best": True})  # early stopping on that batch
    for lever in ({"lr": 0.2}, {"iterations": 15}, {"samples": 8}):  # with early stopping on the whole batch
        settings.append({**base, "keep_best": True, **lever})
    for per_worker in sorted({paper_size, 2 * paper_size, validation.shape[1]}):  # one prompt for all, picked on
        if per_worker <= validation.shape[1]:                                   # every worker's batch
            settings.append({**base, "per_worker": per_worker, "keep_best": True, "pick": "pooled"})
            settings.append({**base, "per_worker": per_worker, "keep_best": False, "pick": "pooled"})
    unique = list({tuple(sorted(s.items())): s for s in settings}.values())
    rows = []
    started = time.perf_counter()
    for s in unique:
        accs, spent = zip(*(run(**s, seed=seed) for seed in range(args.runs)))
        jax.clear_caches()  # every setting compiles afresh: without this a long sweep runs out of code memory
        rows.append({**s, "test_accuracy_mean": float(np.mean(accs)), "test_accuracy_std": float(np.std(accs)),
                     "tuning_queries_mean": float(np.mean(spent))})
        if not args.json:
            print(f"{s}: {np.mean(accs):.3f} ± {np.std(accs):.3f}", file=sys.stderr)
    flat = test_acc.reshape(-1)
    emit({
        "benchmark": "tuner_levers",
        "task": data.name,
        "template": template_label(data.template),
        "split_seed": args.split_seed,
        "pool": args.pool,
        "validation_per_class": args.validation,
        "validation_per_worker": int(validation.shape[1]),
        "empty_slot": args.empty_slot,
        "table": {"pairs": int(flat.size), "queries": int(len(queries)), "test_examples": int(len(test_pos)),
                  "prompts": int(table_prompts), "seconds": table_seconds,
                  "template_alone_test_accuracy": float(alone[test_pos].mean()),
                  "random_pair_test_accuracy": float(flat.mean()), "best_pair_test_accuracy": float(flat.max()),
                  "test_accuracy_quantiles": {q: float(np.quantile(flat, float(q))) for q in ("0.1", "0.5", "0.9")}},
        "settings": rows,
        "tuner_seconds": time.perf_counter() - started,
        "machine": machine(),
    }, args)


if __name__ == "__main__":
    main()
