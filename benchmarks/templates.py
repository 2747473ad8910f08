"""Which template and scoring the embedded model answers best, measured on validation data only.

For each task and split seed, the paper's template and the fitted one
(``asyndbt_jax.llm.FITTED_TEMPLATES``) ask the split's train and validation examples (never
its test examples) with no demonstrations and with ``--draws`` random draws of one
demonstration per class from the candidate pool. Every prompt also asks the content-free
inputs, so raw and calibrated scores (contextual calibration) come from the same model calls.

    python benchmarks/templates.py --tasks mr,glue:sst2 --glue-dir DIR --out docs/templates.json

Prints one JSON object: per task, template and scoring the validation accuracy and mean
cross-entropy of every prompt, their means, and ``chosen`` (the best template and scoring
by mean accuracy over the demonstration draws).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, load_task, machine, parse_args  # noqa: E402


def _args(parser):
    parser.add_argument("--tasks", default="mr,glue:sst2", help="registry tasks, or glue:NAME with --glue-dir")
    parser.add_argument("--glue-dir", default=None)
    parser.add_argument("--seeds", type=int, default=3, help="split seeds per task")
    parser.add_argument("--draws", type=int, default=3, help="random demonstration draws per seed")
    parser.add_argument("--model", default="gemma3-270m")


def main():
    from asyndbt_jax import baselines
    from asyndbt_jax.llm import LLMFeedback, LocalScorer, PromptTask, ResponseCache, cache_root
    from asyndbt_jax.tasks import paper_split, template_label, with_template

    args = parse_args(__doc__.splitlines()[0], _args)
    seeds, draws = (1, 1) if args.quick else (args.seeds, args.draws)
    scorer = LocalScorer(args.model)
    cache = ResponseCache(cache_root() / "responses.sqlite")
    started = time.perf_counter()
    out = {"benchmark": "templates", "model": scorer.name, "seeds": seeds, "draws": draws, "tasks": {}}
    for name in args.tasks.split(","):
        data = load_task(name, args.glue_dir)
        rows = {}
        for style in ("paper", "fitted"):
            styled = with_template(data, style)
            used = template_label(styled.template)
            cells = {"raw": {"accuracy": [], "loss": []}, "calibrated": {"accuracy": [], "loss": []}}
            for seed in range(seeds):
                split = paper_split(styled, seed=seed)
                queries = np.concatenate([split.train, split.validation])
                task = PromptTask(styled.template, styled.examples, styled.labels, split.candidates, ("",))
                U, V = split.candidates.shape
                prompts = [np.full(U, -1)] + [baselines.random_demos(U, V, 1000 * seed + d) for d in range(draws)]
                for calibrated, cell in ((False, cells["raw"]), (True, cells["calibrated"])):
                    feedback = LLMFeedback(task, scorer, cache=cache, calibrate=calibrated)
                    for demos in prompts:
                        losses, correct = feedback.host(np.full((1, 1, 1), -1), demos[None, None], queries[None])
                        cell["accuracy"].append(float(correct.mean()))
                        cell["loss"].append(float(losses.mean()))
                print(f"{name} {used} seed {seed}: raw {cells['raw']['accuracy'][-len(prompts):]} calibrated "
                      f"{cells['calibrated']['accuracy'][-len(prompts):]} ({time.perf_counter() - started:.0f} s)",
                      file=sys.stderr)
            for cell in cells.values():
                per = len(prompts)
                acc = np.asarray(cell["accuracy"]).reshape(seeds, per)
                cell["zero_shot_mean_accuracy"] = float(acc[:, 0].mean())
                cell["with_demos_mean_accuracy"] = float(acc[:, 1:].mean()) if per > 1 else None
                cell["mean_loss"] = float(np.mean(cell["loss"]))
            rows[used] = cells
        scored = {(t, c): cells[c]["with_demos_mean_accuracy"] or cells[c]["zero_shot_mean_accuracy"]
                  for t, cells in rows.items() for c in cells}
        best = max(scored, key=scored.get)
        out["tasks"][name] = {"queries_per_seed": int(len(queries)), "templates": rows,
                              "chosen": {"template": best[0], "scoring": best[1], "mean_accuracy": scored[best]}}
    out.update(wall_seconds=time.perf_counter() - started, machine=machine())
    emit(out, args)


if __name__ == "__main__":
    main()
