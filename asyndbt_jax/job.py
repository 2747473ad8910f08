"""``asyndbt run``: tune the prompt of a real LLM on real data, distributed over workers.

The default job is the README's main job: the MR sentence-polarity task (the SST-2
substitute, prepared from the package registry on first use), the embedded
gemma-3-270m, 3 asynchronous workers of which the server waits for 2, lognormal
stragglers. It reports the test accuracy of the manual prompt (template only), of random
in-context demonstrations (one per class, redrawn per seed) and of the tuned prompt, and
prints the learned demonstrations and fragment.

Everything it computes goes to ``--out`` (default ``runs/<task>-<method>-seed<seed>``):
``history.jsonl`` (one line per server iteration) and ``result.json``. LLM answers go to
the response cache (``cache_root()/responses.sqlite``): rerunning the same job asks the
model nothing it has already answered.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

@dataclasses.dataclass
class JobConfig:
    """What ``asyndbt run`` does (the CLI flags, one to one)."""

    task: str = "mr"
    method: str = "asyndbt"
    model: str = "gemma3-270m"
    base_url: str | None = None  # an OpenAI-compatible endpoint instead of the local model
    glue_dir: str | None = None  # read the task from GLUE TSVs instead of the registry
    workers: int = 3
    active: int = 2
    staleness: int = 4
    delay: str = "lognormal:1.0"
    iterations: int = 25
    samples: int = 4
    fragment_words: int = 10
    lower_rounds: int = 1
    lr: float = 0.05
    test_size: int = 200
    seed: int = 0
    out: str | None = None
    cache: str | None = None  # the response cache (default cache_root()/responses.sqlite)
    progress: bool = True


DEFAULTS = {f.name: f.default for f in dataclasses.fields(JobConfig)}
QUICK = dict(iterations=3, samples=2, test_size=20)


def _log(cfg: JobConfig, msg: str) -> None:
    if cfg.progress:
        print(msg, file=sys.stderr, flush=True)


def load_task(cfg: JobConfig):
    from .tasks import GLUE, REGISTRY, load_glue, prepare

    if cfg.glue_dir:
        return load_glue(cfg.glue_dir, cfg.task, "train")
    if cfg.task not in REGISTRY:
        raise ValueError(f"unknown task {cfg.task!r}; known: {sorted(REGISTRY)} (or --glue-dir with {sorted(GLUE)})")
    return prepare(cfg.task, log=lambda m: _log(cfg, m))


def make_scorer(cfg: JobConfig):
    if cfg.base_url:
        from .llm import OpenAIScorer

        return OpenAIScorer(cfg.model, base_url=cfg.base_url)
    from .llm import LocalScorer

    return LocalScorer(cfg.model)


_NOT_RESULTS = ("out", "cache", "progress")  # settings that do not change what a run computes


def _claim(out: Path, cfg: JobConfig) -> None:
    """Use ``out`` for this run unless it holds the result of a different configuration
    (then nothing there is touched). Rerunning the same configuration replaces its files."""
    previous = out / "result.json"
    if previous.exists():
        try:
            old = json.loads(previous.read_text()).get("config", {})
        except json.JSONDecodeError:
            old = None
        new = dataclasses.asdict(cfg)
        differ = None if old is None else sorted(k for k in new if k not in _NOT_RESULTS and old.get(k) != new[k])
        if differ is None or differ:
            what = "an unreadable result.json" if differ is None else "a run with other settings: " + ", ".join(
                f"{k}={old.get(k)!r} (now {new[k]!r})" for k in differ)
            raise ValueError(f"{out} holds {what}; choose another --out or remove it (nothing was overwritten)")
    out.mkdir(parents=True, exist_ok=True)


def _accuracy(feedback, fragment_words, demos, queries) -> float:
    """Test accuracy of one prompt (``fragment_words [M]``, ``demos [U]``) on ``queries [B]``."""
    _, correct = feedback.host(np.asarray(fragment_words)[None, None], np.asarray(demos)[None, None],
                               np.asarray(queries)[None])
    return float(correct.mean())


def run_job(cfg: JobConfig) -> dict:
    """Run the job; returns the result object (also written to ``<out>/result.json``)."""
    import jax.numpy as jnp

    from .engine import METHODS, Data, decoded_prompts
    from .harness import run_method
    from .llm import LLMFeedback, ResponseCache, cache_root
    from .simulator import parse_delay
    from .tasks import paper_split, partition_workers

    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; known: {list(METHODS)}")
    if not 1 <= cfg.active <= cfg.workers:
        raise ValueError(f"--active (S={cfg.active}) must be between 1 and --workers (R={cfg.workers})")
    delay = parse_delay(cfg.delay)
    out = Path(cfg.out or f"runs/{cfg.task}-{cfg.method}-seed{cfg.seed}")
    _claim(out, cfg)
    started = time.perf_counter()

    data = load_task(cfg)
    split = paper_split(data, seed=cfg.seed, test=cfg.test_size)
    for note in split.notes:
        _log(cfg, f"note: {note}")
    train = partition_workers(split.train, data.labels, cfg.workers, seed=cfg.seed)
    validation = partition_workers(split.validation, data.labels, cfg.workers, seed=cfg.seed + 1)
    _log(cfg, f"{data.name}: {len(data.examples)} examples from {data.source}; {cfg.workers} workers with "
              f"{train.shape[1]} train / {validation.shape[1]} validation queries each, {len(split.test)} test")

    scorer = make_scorer(cfg)
    cache = ResponseCache(cfg.cache or cache_root() / "responses.sqlite")
    feedback = LLMFeedback(split.prompt_task(), scorer, cache=cache)
    U, V = split.candidates.shape
    M = cfg.fragment_words
    none_words = np.full(M, -1)

    manual = _accuracy(feedback, none_words, np.full(U, -1), split.test)
    rng = np.random.default_rng(cfg.seed)
    random_demos = rng.integers(0, V, U)
    random_icl = _accuracy(feedback, none_words, random_demos, split.test)
    _log(cfg, f"manual prompt {manual:.3f}, random ICL {random_icl:.3f}; tuning with {cfg.method}")

    shapes = dict(num_fragment_words=M, vocab_size=len(split.vocabulary), num_classes=U, num_candidates=V)
    result, config = run_method(
        cfg.method, feedback, Data(jnp.asarray(train), jnp.asarray(validation)), jnp.asarray(split.test), delay,
        shapes=shapes, iterations=cfg.iterations, num_active=cfg.active, max_staleness=cfg.staleness,
        seed=cfg.seed, history_path=str(out / "history.jsonl"), progress=cfg.progress,
        eval_every=cfg.iterations, num_samples=cfg.samples, lower_rounds=cfg.lower_rounds,
        lr_fragment=cfg.lr, lr_demos=cfg.lr, status=feedback.status,
    )
    prompts = decoded_prompts(config, result.state)
    words = np.asarray(prompts.fragment_words[0])  # the consensus fragment: the same for every worker
    learned_demos = [
        [{"label": data.template.answers[u], **data.examples[int(split.candidates[u, k])]}
         for u, k in enumerate(np.asarray(worker_demos)) if k >= 0]
        for worker_demos in prompts.demos
    ]
    fragment = " ".join(split.vocabulary[j] for j in words if j >= 0)
    summary = {
        "task": data.name,
        "source": data.source,
        "method": cfg.method,
        "model": getattr(scorer, "name", cfg.model),
        "workers": cfg.workers,
        "active": config.num_active,
        "staleness": cfg.staleness,
        "delay": cfg.delay,
        "iterations": result.iterations,
        "seed": cfg.seed,
        "test_examples": int(len(split.test)),
        # the tuned row: mean over the workers' own prompts (their demonstrations differ)
        "test_accuracy": {"manual": manual, "random_icl": random_icl, cfg.method: result.final_test_accuracy},
        "final_validation_accuracy": result.final_validation_accuracy,
        "learned_demonstrations": learned_demos,
        "learned_fragment": fragment,
        "virtual_time": result.virtual_time,
        "llm_prompts": feedback.prompts,
        "cache_hits": cache.hits,
        "cache_misses": cache.misses,
        "wall_seconds": time.perf_counter() - started,
        "notes": list(split.notes),
        "out": str(out),
        "config": dataclasses.asdict(cfg),
    }
    (out / "result.json").write_text(json.dumps(summary, indent=2))
    return summary


def table(summary: dict) -> str:
    """The job's closing table, in plain text."""
    acc = summary["test_accuracy"]
    width = max(len(k) for k in acc)
    lines = [f"{summary['task']} on {summary['model']}: test accuracy over {summary['test_examples']} examples "
             f"({summary['method']}: mean over the workers' prompts)", ""]
    lines += [f"  {name:<{width}}  {value * 100:6.2f} %" for name, value in acc.items()]
    lines += ["", "learned demonstrations (per worker):"]
    for r, demos in enumerate(summary["learned_demonstrations"]):
        for d in demos:
            text = " / ".join(v for k, v in d.items() if k != "label")
            lines.append(f"  worker {r} [{d['label']}] {text}")
    lines += ["learned fragment:", f"  {summary['learned_fragment'] or '(none)'}", "",
              f"{summary['llm_prompts']} prompts scored ({summary['cache_hits']} cache hits), "
              f"{summary['wall_seconds']:.0f} s; results in {summary['out']}"]
    return "\n".join(lines)
