"""``asyndbt plot`` and ``asyndbt report``: curves and tables from run folders.

A run folder is what ``asyndbt run`` writes: ``config.json``, ``history.jsonl`` (one
record per server iteration) and ``result.json``. :func:`plot_runs` draws accuracy and
loss against server iterations, virtual time and LLM queries, every run on the same axes
(so an asynchronous and a synchronous run compare directly); :func:`report` writes a
markdown table with one row per run and, where several seeds of one setting ran, their
mean ± standard deviation.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHECKPOINTS = ("checkpoint.npz", "checkpoint.json")  # a run's checkpoint: the engine's methods; feddtpt's


def machine_info() -> dict:
    """What a measurement ran on: the JAX device, the CPU, its core count, the OS and versions.
    Every run's ``result.json`` and every benchmark's JSON carry it."""
    import jax

    dev = jax.devices()[0]
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "device": f"{dev.platform}:{getattr(dev, 'device_kind', dev.platform)}",
        "cpu": cpu or "unknown",
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
    }


@dataclass
class Run:
    path: Path
    result: dict
    history: list[dict]

    @property
    def label(self) -> str:
        c = self.result.get("config", {})
        from .engine import CENTRALISED

        if self.result["method"] in CENTRALISED:  # one machine holding every worker's data
            return f"{self.path.name}: {self.result['method']} (centralised)"
        return f"{self.path.name}: {self.result['method']} R={c.get('workers')} S={c.get('active')}"


def load_run(path: str | Path) -> Run:
    """Read a finished run folder (``result.json`` and ``history.jsonl``)."""
    path = Path(path)
    result_file = path / "result.json"
    if not result_file.exists():
        hint = " (it has a checkpoint: asyndbt run --resume it)" if any((path / f).exists() for f in CHECKPOINTS) else ""
        raise FileNotFoundError(f"{path} holds no finished run: no result.json{hint}")
    try:
        result = json.loads(result_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{result_file} is not valid JSON: {exc}") from exc
    history_file = path / "history.jsonl"
    history = [json.loads(line) for line in history_file.read_text().splitlines()] if history_file.exists() else []
    return Run(path, result, history)


def curves(history: list[dict]) -> dict[str, np.ndarray]:
    """The per-iteration series of one history: ``iteration``, ``virtual_time``,
    ``llm_queries`` (cumulative), ``loss``, and the evaluated points ``val_at``/``val``,
    ``test_at``/``test`` (indices into the iterations)."""
    it = np.array([h["iteration"] for h in history])
    series = {
        "iteration": it,
        "virtual_time": np.array([h["virtual_time"] for h in history]),
        "llm_queries": np.cumsum([h["queries"] for h in history]),
        "loss": np.array([h["mean_loss"] for h in history]),
    }
    for key, name in (("validation_accuracy", "val"), ("test_accuracy", "test")):
        at = np.array([i for i, h in enumerate(history) if key in h], dtype=int)
        series[f"{name}_at"] = at
        series[name] = np.array([history[i][key] for i in at])
    return series


def plot_runs(paths, out: str | Path | None = None) -> Path:
    """Accuracy and loss vs iteration, virtual time and LLM queries for every run in
    ``paths``, on shared axes; written as a PNG to ``out`` (default ``<first run>/curves.png``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ModuleNotFoundError('asyndbt plot needs matplotlib: pip install "asyndbt_jax[plots]"') from err
    runs = [load_run(p) for p in paths]
    tuned = [r for r in runs if r.history]
    if not tuned:
        raise ValueError("none of these runs has an iteration history to plot (prompt baselines train nothing)")
    out = Path(out) if out else runs[0].path / "curves.png"
    axes_x = (("iteration", "server iteration"), ("virtual_time", "virtual time"), ("llm_queries", "LLM queries"))
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), squeeze=False)
    for run in tuned:
        c = curves(run.history)
        for col, (x, xlabel) in enumerate(axes_x):
            (line,) = axes[0][col].plot(c[x][c["val_at"]], c["val"], label=f"{run.label} (validation)")
            axes[0][col].plot(c[x][c["test_at"]], c["test"], "o", color=line.get_color(), label=f"{run.label} (test)")
            axes[1][col].plot(c[x], c["loss"], color=line.get_color(), label=run.label)
            axes[1][col].set_xlabel(xlabel)
    for col in range(3):
        axes[0][col].set_ylabel("accuracy")
        axes[1][col].set_ylabel("mean sampled loss")
        for row in range(2):
            axes[row][col].grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    first = tuned[0].result
    fig.suptitle(f"{first['task']} on {first['model']}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _pct(values) -> str:
    values = np.asarray(values, float) * 100
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}"


def report(paths) -> str:
    """A markdown report of the runs in ``paths``: one row per run, then mean ± std (sample
    standard deviation over seeds) for every setting that ran more than once."""
    runs = [load_run(p) for p in paths]
    lines = ["| run | task | model | method | R | S | seed | manual | random-icl | method acc. | prompts | "
             "iterations | virtual time | wall s |", "|" + "---|" * 14]
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        r, c = run.result, run.result.get("config", {})
        acc = r["test_accuracy"]
        setting = {k: v for k, v in c.items() if k not in ("seed", "out", "cache", "progress", "checkpoint_every")}
        groups.setdefault(json.dumps(setting, sort_keys=True), []).append(run)
        trained = f"{r['iterations']} | {r['virtual_time']:.1f}" if "virtual_time" in r else " | "
        lines.append(
            f"| {run.path.name} | {r['task']} | {r['model']} | {r['method']} | {c.get('workers', '')} | "
            f"{c.get('active', '')} | {r['seed']} | {acc['manual'] * 100:.1f} | {acc['random-icl'] * 100:.1f} | "
            f"{acc[r['method']] * 100:.1f} | {r['llm_prompts']} | {trained} | {r['wall_seconds']:.0f} |"
        )
    repeated = [g for g in groups.values() if len(g) > 1]
    if repeated:
        lines += ["", "Repeated settings (test accuracy %, mean ± sample std over their runs):", "",
                  "| task | model | method | R | S | runs | manual | random-icl | method acc. | prompts (mean) |",
                  "|" + "---|" * 10]
        for g in repeated:
            r, c = g[0].result, g[0].result.get("config", {})
            col = lambda name: _pct([x.result["test_accuracy"][name] for x in g])  # noqa: E731
            lines.append(f"| {r['task']} | {r['model']} | {r['method']} | {c.get('workers', '')} | "
                         f"{c.get('active', '')} | {len(g)} | {col('manual')} | {col('random-icl')} | "
                         f"{col(r['method'])} | {np.mean([x.result['llm_prompts'] for x in g]):.0f} |")
    return "\n".join(lines) + "\n"
