"""Summarise finished ``asyndbt run`` folders by method: test accuracy over seeds and the cuts.

    python benchmarks/runs_table.py docs/runs/sst2-ablation/* [--json] [--out FILE]

Reads every folder's ``result.json`` and ``history.jsonl`` (folders without a result are
skipped and listed; the manual prompt and random demonstrations a run scores on its split
count once per seed) and prints a markdown table — one row per method: test accuracy per
seed, mean ± standard deviation, the cuts each run added (``added_cuts`` summed over its
history; "—" for a method without cuts or a run written before the field existed), its
refreshes, LLM prompts and wall time — then the JSON summary with ``--json``/``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def read_runs(folder: Path) -> list[dict]:
    """The folder's run and the reference prompts scored on the same split (a run's
    ``test_accuracy`` holds the manual prompt's and random demonstrations' too)."""
    run = read_run(folder)
    if run is None:
        return []
    result = json.loads((folder / "result.json").read_text())
    others = [{"folder": str(folder), "method": name, "seed": run["seed"], "test_accuracy": acc, "added_cuts": None,
               "refreshes": 0, "max_active_cuts": 0, "llm_prompts": None, "wall_seconds": None}
              for name, acc in result["test_accuracy"].items() if name != run["method"]] if isinstance(result["test_accuracy"], dict) else []
    return [run] + others


def read_run(folder: Path) -> dict | None:
    result_file = folder / "result.json"
    if not result_file.exists():
        return None
    result = json.loads(result_file.read_text())
    history_file = folder / "history.jsonl"  # absent for the methods that do not train (manual, random ICL, KATE)
    lines = history_file.read_text().splitlines() if history_file.exists() else []
    history = [json.loads(line) for line in lines if line.strip()]
    added = [h["added_cuts"] for h in history if "added_cuts" in h]
    return {
        "folder": str(folder),
        "method": result["method"],
        "seed": result["seed"],
        "test_accuracy": result["test_accuracy"][result["method"]] if isinstance(result["test_accuracy"], dict) else result["test_accuracy"],
        "added_cuts": sum(added) if history and len(added) == len(history) else None,
        "refreshes": sum(bool(h.get("refreshed")) for h in history),
        "max_active_cuts": max((h.get("active_cuts", 0) for h in history), default=0),
        "llm_prompts": result.get("llm_prompts"),
        "wall_seconds": result.get("wall_seconds"),
    }


def summarise(runs: list[dict]) -> dict:
    by_method = defaultdict(list)
    for run in runs:
        by_method[run["method"]].append(run)
    out = {}
    for method, group in by_method.items():
        group.sort(key=lambda r: r["seed"])
        acc = [r["test_accuracy"] for r in group]
        out[method] = {
            "seeds": [r["seed"] for r in group],
            "test_accuracy": acc,
            "test_accuracy_mean": statistics.mean(acc),
            "test_accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "added_cuts": [r["added_cuts"] for r in group],
            "refreshes": [r["refreshes"] for r in group],
            "llm_prompts": [r["llm_prompts"] for r in group],
            "wall_seconds": [r["wall_seconds"] for r in group],
        }
    return out


def table(summary: dict) -> str:
    lines = ["| method | seeds | test accuracy per seed (%) | mean ± sd (%) | cuts added per run | refreshes per run |",
             "|---|---|---|---|---|---|"]
    for method, s in summary.items():
        per_seed = ", ".join(f"{100 * a:.1f}" for a in s["test_accuracy"])
        cuts = ", ".join("—" if c is None or not r else str(c) for c, r in zip(s["added_cuts"], s["refreshes"]))
        lines.append(f"| {method} | {len(s['seeds'])} | {per_seed} | {100 * s['test_accuracy_mean']:.1f} ± "
                     f"{100 * s['test_accuracy_std']:.1f} | {cuts} | {', '.join(map(str, s['refreshes']))} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--json", action="store_true", help="print the JSON summary after the table")
    parser.add_argument("--out", help="also write the JSON summary to this file")
    args = parser.parse_args()
    runs, missing, seen = [], [], set()
    for folder in map(Path, args.folders):
        found = read_runs(folder)
        if not found:
            missing.append(str(folder))
        for run in found:  # the reference prompts of a split once per seed
            if (run["method"], run["seed"]) not in seen:
                seen.add((run["method"], run["seed"]))
                runs.append(run)
    if not runs:
        raise SystemExit(f"no finished run among {args.folders}")
    summary = summarise(runs)
    print(table(summary))
    if missing:
        print(f"\nnot finished (skipped): {', '.join(missing)}")
    payload = {"summary": summary, "runs": runs, "skipped": missing}
    if args.json:
        print(json.dumps(payload, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
