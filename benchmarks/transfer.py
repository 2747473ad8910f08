"""Transferability: prompts learned with one local model, evaluated with another (FedDTPT's check).

    python benchmarks/transfer.py RUN_DIR... [--model smollm2-135m] [--json] [--out FILE]

For every finished ``asyndbt run`` folder: rebuild its task split from the stored settings
(same seed, same test examples), render the prompt it learned (each worker's demonstrations
with its learned fragment; FedDTPT: its global note), and score it on the test set with the
run's own model (a check: it must give the stored test accuracy; answers come from the
response cache), on that model again without the fragment (what the fragment adds), and
with ``--model`` (the transfer). The manual prompt on each model is the
reference. Runs of methods that learn no prompt (manual, random-icl, kate) are skipped.
Prints one JSON object with a row per run. Never asserts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from asyndbt_jax.job import JobConfig, load_task, make_scorer, upgrade_config  # noqa: E402
from asyndbt_jax.llm import ResponseCache, cache_root  # noqa: E402
from asyndbt_jax.llm.adapter import CONTENT_FREE, calibrate  # noqa: E402
from asyndbt_jax.tasks import paper_split  # noqa: E402


def learned_prompts(result: dict, answers) -> list[tuple[list, list[str]]]:
    """The run's learned prompts as ``(demos [(example, label)], fragment words)``: one per
    worker (their demonstrations and, with early stopping, their fragments differ), or
    FedDTPT's single global note."""
    shown = result.get("learned_demonstrations") or [[]]
    fragments = result.get("learned_fragments") or [result.get("learned_fragment", "")] * len(shown)
    out = []
    for worker, fragment in zip(shown, fragments, strict=True):
        demos = [({k: v for k, v in d.items() if k != "label"}, answers.index(d["label"])) for d in worker]
        out.append((demos, fragment.split()))
    return out


def accuracy(scorer, template, prompts, queries, labels, cache, calibrated: bool) -> float:
    """Mean over ``prompts`` of the test accuracy of each, scored as the run scored (with
    contextual calibration where the run used it)."""
    extra = [{slot: text for slot in template.slots} for text in CONTENT_FREE] if calibrated else []
    scores = []
    for demos, words in prompts:
        prefix, texts = template.render(demos, words, queries + extra)
        logp = scorer.score(prefix, texts, template.label_words, cache=cache)
        logp = calibrate(logp[:len(queries)], logp[len(queries):]) if extra else logp
        scores.append(float(np.mean(np.argmax(logp, -1) == labels)))
    return float(np.mean(scores))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--model", default="smollm2-135m", help="the model to transfer to (default smollm2-135m)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    cache = ResponseCache(cache_root() / "responses.sqlite")
    scorers: dict[str, object] = {}
    rows = []
    for run in args.runs:
        result_file = run / "result.json"
        if not result_file.exists():
            print(f"skip {run}: no result.json (unfinished)", file=sys.stderr)
            continue
        result = json.loads(result_file.read_text())
        if not result.get("learned_demonstrations") and not result.get("learned_fragment"):
            print(f"skip {run}: {result['method']} learns no prompt", file=sys.stderr)
            continue
        stored = upgrade_config(json.loads((run / "config.json").read_text()))
        known = {f.name for f in dataclasses.fields(JobConfig)}
        cfg = JobConfig(**{k: v for k, v in stored.items() if k in known} | {"progress": False})
        data, test_pool = load_task(cfg)
        split = paper_split(data, seed=cfg.seed, test=cfg.test_size, test_pool=test_pool, candidates=cfg.candidates,
                            validation=cfg.validation)
        template = data.template
        queries = [data.examples[int(i)] for i in split.test]
        labels = np.asarray(data.labels)[np.asarray(split.test)]
        prompts = learned_prompts(result, list(template.answers))
        row = {"run": str(run), "task": result["task"], "method": result["method"], "learned_on": cfg.model,
               "evaluated_on": args.model, "stored_test_accuracy": result["test_accuracy"][result["method"]]}
        for name, model in (("same_model", cfg.model), ("other_model", args.model)):
            if model not in scorers:
                print(f"loading {model} ...", file=sys.stderr)
                scorers[model] = make_scorer(dataclasses.replace(cfg, model=model, base_url=None))
            row[f"accuracy_{name}"] = accuracy(scorers[model], template, prompts, queries, labels, cache, cfg.calibrate)
        row["reproduced"] = abs(row["accuracy_same_model"] - row["stored_test_accuracy"]) < 1e-6
        if any(words for _, words in prompts):  # what the learned fragment adds on the run's own model
            row["accuracy_same_model_without_fragment"] = accuracy(
                scorers[cfg.model], template, [(demos, []) for demos, _ in prompts], queries, labels, cache, cfg.calibrate)
        for name, model in (("same_model", cfg.model), ("other_model", args.model)):
            row[f"manual_{name}"] = accuracy(scorers[model], template, [([], [])], queries, labels, cache, cfg.calibrate)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    text = json.dumps({"benchmark": "transfer", **machine(), "rows": rows}, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
