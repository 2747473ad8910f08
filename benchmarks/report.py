"""Render benchmark JSON files as the markdown tables quoted in docs/.

    python benchmarks/report.py docs/core_kernels_cpu.json docs/core_kernels_gpu.json
    python benchmarks/report.py docs/robustness_r100.json
    python benchmarks/report.py docs/aggregators_cpu.json
    python benchmarks/report.py docs/async_vs_sync.json

The table is chosen by the file's ``benchmark`` field (core_kernels, robustness, aggregators or
async_vs_sync).
The ``.partN`` files of a stopped robustness ``--jobs`` run (and any robustness file marked
``"complete": false``) are merged into one table, with a dash for cells not yet run.
"""

from __future__ import annotations

import json
import re
import sys

KERNELS = [
    ("projection_michelot", "project (Michelot, default)"),
    ("projection_sort", "project (sort)"),
    ("projection_bisection", "project (BDPL bisection)"),
    ("sampling_inverse_cdf", "sample I=20 (inverse CDF)"),
    ("sampling_categorical", "sample I=20 (jax.random.categorical)"),
    ("estimator", "policy gradient (fragment)"),
    ("sample_and_estimate_both_levels", "sample + estimate, both levels"),
]


def core_kernels_table(result: dict) -> str:
    workers = list(result["results"])
    lines = [
        f"**{result['device']}**, jax {result['jax_version']}, {result.get('cpu_count')} host cores. "
        "Median ms per call (per-worker µs in brackets).",
        "",
        "| kernel | " + " | ".join(f"R={int(w):,}" for w in workers) + " |",
        "|---|" + "---|" * len(workers),
    ]
    for key, label in KERNELS:
        cells = []
        for w in workers:
            t = result["results"][w][key]
            cells.append(
                "skipped (memory)" if "median_s" not in t else f"{t['median_s'] * 1e3:.3g} ({t['per_worker_us']:.3g})"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| ratio | " + " | ".join(f"R={int(w):,}" for w in workers) + " |", "|---|" + "---|" * len(workers)]
    for key, label in [
        ("categorical_over_inverse_cdf", "categorical / inverse CDF"),
        ("sort_over_michelot", "sort / Michelot"),
        ("bisection_over_michelot", "bisection / Michelot"),
    ]:
        cells = [
            f"{result['results'][w]['ratios'][key]:.2f}" if key in result["results"][w]["ratios"] else "—"
            for w in workers
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def robustness_table(result: dict) -> str:
    """Accuracy at B = 0 and at 30 % malicious for every attack × aggregator, drop in points."""
    attacks = [a for a in result["results"] if result["results"][a]]
    aggregators = list(dict.fromkeys(g for a in attacks for g in result["results"][a]))
    lines = [
        "Benign workers' test accuracy (%) with 30 % malicious workers, and in brackets the points lost "
        "against the same rule without attackers (B = 0 row).",
        "",
        "| attack | " + " | ".join(aggregators) + " |",
        "|---|" + "---|" * len(aggregators),
    ]
    first = {g: next(result["results"][a][g] for a in attacks if g in result["results"][a]) for g in aggregators}
    lines.append("| B = 0 | " + " | ".join(f"{100 * first[g]['0.0']:.1f}" for g in aggregators) + " |")
    for a in attacks:
        cells = []
        for g in aggregators:
            cell = result["results"][a].get(g)
            cells.append("—" if cell is None else f"{100 * cell['0.3']:.1f} ({100 * (cell['0.0'] - cell['0.3']):+.1f})")
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def aggregators_table(result: dict) -> str:
    """Seconds per call and both ratios for every rule and size."""
    m = result.get("machine", result)
    lines = [
        f"**{m['device']}**, jax {m['jax_version']}, {m.get('cpu_count')} host cores.",
        "",
        "| rule | size | JAX s | NumPy s | memory pass s | ratio_vs_numpy | ratio_vs_memory_pass |",
        "|---|---|---|---|---|---|---|",
    ]
    for rule, sizes in result["results"].items():
        for size, r in sizes.items():
            lines.append(
                f"| {rule} | {size} | {r['jax_s']:.3g} | {r['numpy_s']:.3g} | {r['memory_pass_s']:.3g} "
                f"| {r['ratio_vs_numpy']:.2f} | {r['ratio_vs_memory_pass']:.3g} |"
            )
    return "\n".join(lines)


def async_vs_sync_table(result: dict) -> str:
    inputs = result["inputs"]
    lines = [
        f"**{result['device']}**, jax {result['jax_version']}. R = {inputs['workers']}, S = {inputs['active']}, "
        f"{inputs['seeds']} seeds; cut-dual step η_λ {inputs.get('lr_dual_sync', 0.1):g} (synchronous) / "
        f"{inputs.get('lr_dual_async', 0.1):g} (AsynDBT).",
        "",
        "| delays | τ | target val. acc. (mean) | time ratio per seed | time ratio (mean) | messages to target, "
        "async / sync | test acc. sync | test acc. async |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for delay, r in result["results"].items():
        target = sum(run["target_validation_accuracy"] for run in r["runs"]) / len(r["runs"])
        per_seed = " / ".join(f"{x:.2f}" for x in r["time_ratio_by_seed"])
        lines.append(f"| {delay} | {inputs['staleness']} | {target:.3f} | {per_seed} | **{r['time_ratio']:.2f}** | "
                     f"{r['message_ratio']:.2f} | {r['acc_sync']:.3f} | {r['acc_async']:.3f} |")
    lines += ["", f"Target: the smoothed validation accuracy at the start plus {inputs['target_fraction']:g} of the "
                  "way to the lower of the two runs' best (both reach it)."]
    return "\n".join(lines)


TABLES = {"core_kernels": core_kernels_table, "robustness": robustness_table, "aggregators": aggregators_table,
          "async_vs_sync": async_vs_sync_table}


def merge_parts(parts: list[dict]) -> dict:
    """One robustness result from the ``.partN`` files of a stopped ``--jobs`` run (cells not
    yet run are left out and show as a dash)."""
    merged: dict = {"benchmark": "robustness", "complete": False, "results": {}}
    for part in parts:
        for attack, row in part["results"].items():
            merged["results"].setdefault(attack, {}).update(row)
    return merged


def main(paths: list[str]) -> None:
    loaded = []
    for path in paths:
        with open(path) as fh:
            loaded.append((path, json.load(fh)))
    def is_part(path, result):  # a part is complete once its own rows are: the name says it is a part
        return result.get("benchmark") == "robustness" and (
            result.get("complete") is False or re.search(r"\.part\d+$", path) is not None
        )

    parts = [(p, r) for p, r in loaded if is_part(p, r)]
    if parts:  # the parts of one stopped run: one table
        loaded = [(p, r) for p, r in loaded if not is_part(p, r)]
        loaded.append((", ".join(p for p, _ in parts), merge_parts([r for _, r in parts])))
    for path, result in loaded:
        print(f"From `{path}`:\n")
        print(TABLES.get(result.get("benchmark"), core_kernels_table)(result))
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
