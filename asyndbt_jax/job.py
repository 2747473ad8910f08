"""``asyndbt run``: tune the prompt of a real LLM on real data, distributed over workers.

``--method`` is any of :data:`JOB_METHODS`: the prompt baselines of
:mod:`asyndbt_jax.baselines` (``manual``, ``random-icl``, ``kate``) or a tuned method of
:mod:`asyndbt_jax.engine`. The default job is the README's main job: the MR sentence-polarity task (the SST-2
substitute, prepared from the package registry on first use), the embedded
gemma-3-270m, 3 asynchronous workers of which the server waits for 2, lognormal
stragglers. It reports the test accuracy of the manual prompt (template only), of random
in-context demonstrations (one per class, redrawn per seed) and of the tuned prompt, and
prints the learned demonstrations and fragment.

Everything it computes goes to ``--out`` (default ``runs/<task>-<method>-seed<seed>``):
``config.json`` (written first), ``history.jsonl`` (one line per server iteration),
``checkpoint.npz`` (the whole run, every ``checkpoint_every`` iterations: ``asyndbt run
--resume DIR`` continues it and ends exactly where an uninterrupted run ends; FedDTPT writes
``checkpoint.json`` after every round instead) and
``result.json``. Settings come from the defaults, then a TOML file (``--config``), then
``--quick``, then the flags. LLM answers go to
the response cache (``cache_root()/responses.sqlite``): rerunning the same job asks the
model nothing it has already answered.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
import tomllib
import types
import typing
from pathlib import Path

import numpy as np

from .reporting import CHECKPOINTS, machine_info


@dataclasses.dataclass
class JobConfig:
    """What ``asyndbt run`` does (the CLI flags and the TOML keys, one to one)."""

    task: str = "mr"
    method: str = "asyndbt"
    model: str = "gemma3-270m"
    base_url: str | None = None  # an OpenAI-compatible endpoint instead of the local model
    glue_dir: str | None = None  # read the task from GLUE TSVs instead of the registry
    train_file: str | None = None  # the user's own task (CSV/TSV/JSONL; see asyndbt_jax.tasks.files)
    test_file: str | None = None  # its test examples (default: drawn from train_file)
    fields: str = "text"  # the text column(s) the prompt shows, comma-separated
    label_field: str = "label"
    label_words: str | None = None  # file label=answer word, comma-separated, in class order
    template: str | None = None  # your own task: the example block with {field} slots and {note}; a registry or
    # GLUE task: "fitted" (the template the embedded models answer best, where the task has one) or "paper"
    calibrate: bool = True  # contextual calibration of the label scores (content-free inputs)
    candidates: int = 50  # demonstration candidates per class, V
    validation: int = 20  # validation examples per class, shared among the workers (paper: 10)
    keep_best: bool = True  # deliver each worker's best decoded prompt on its own validation examples
    pick: str = "pooled"  # "pooled": all workers adopt the delivered prompt best on every worker's validation; "own"
    demos_per_class: int = 1  # k: demonstrations each class shows (paper: 1)
    workers: int = 3
    active: int = 2
    staleness: int = 4
    delay: str = "lognormal:1.0"
    alpha: float | None = None  # Dirichlet(alpha) non-IID worker partitions; None: IID
    malicious: int = 0  # the last B workers attack
    attack: str = "none"
    aggregator: str = "sign_consensus"
    feddtpt_client: str = "feedback"  # feddtpt's client: feedback | no-feedback | random
    feddtpt_server: str = "cluster"  # feddtpt's server: cluster | no-cluster | fedavg | kmeans
    feddtpt_async: bool = False  # feddtpt on the virtual clock (--active, --staleness, --delay); default: synchronous rounds
    iterations: int = 25  # server iterations; feddtpt: communication rounds
    samples: int = 4
    fragment_words: int = 10
    lower_rounds: int = 1
    cut_tolerance: float | None = None  # ε: a refresh adds a cut when the lower-level gap (summed over workers) exceeds it; None: 0.01·R nats
    lr: float = 0.05
    test_size: int = 200
    budget: int | None = None  # most prompts the job may score (cache hits count: the run stays reproducible)
    seed: int = 0
    checkpoint_every: int = 1
    runtime: str = "simulated"  # simulated (the virtual clock) | local (threads) | ray (actors)
    ray_address: str | None = None  # --runtime ray: join this cluster (default: a local Ray)
    actors: int | None = None  # --runtime ray: actors (worker groups; default one per worker)
    out: str | None = None
    cache: str | None = None  # the response cache (default cache_root()/responses.sqlite)
    progress: bool = True

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), _TYPES[f.name]
            allowed = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
            ok = any(isinstance(value, t) and not (t is int and isinstance(value, bool)) for t in allowed)
            if float in allowed and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                names = " or ".join("none" if t is type(None) else t.__name__ for t in allowed)
                raise ValueError(f"{f.name} must be {names}, got {value!r}")
        for name in ("workers", "active", "staleness", "iterations", "samples", "fragment_words", "lower_rounds",
                     "test_size", "checkpoint_every", "candidates", "demos_per_class", "validation"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cut_tolerance is not None and not (math.isfinite(self.cut_tolerance) and self.cut_tolerance > 0):
            raise ValueError(f"cut_tolerance must be a finite positive number, got {self.cut_tolerance!r}")
        from .simulator import PICKS

        if self.pick not in PICKS:
            raise ValueError(f"pick must be one of {PICKS}, got {self.pick!r}")
        if self.demos_per_class > self.candidates:
            raise ValueError(f"demos_per_class ({self.demos_per_class}) cannot exceed candidates ({self.candidates})")
        if self.samples < 2 and self.method != "feddtpt":  # FedDTPT's clients may propose one candidate
            raise ValueError(f"samples must be >= 2 (the gradient estimate compares sampled configurations), "
                             f"got {self.samples}")


_TYPES = typing.get_type_hints(JobConfig)
DEFAULTS = {f.name: f.default for f in dataclasses.fields(JobConfig)}
QUICK = dict(iterations=2, samples=2, test_size=10, validation=10)  # ~100 s on 2 cores: a smoke run, not a result
_NOT_RESULTS = ("out", "cache", "progress", "checkpoint_every", "ray_address", "actors")  # settings that do not change what a run computes


def job_methods() -> tuple[str, ...]:
    from .baselines import PROMPT_METHODS
    from .engine import METHODS

    return PROMPT_METHODS + METHODS + ("feddtpt",)


def read_config_file(path: str) -> dict:
    """The settings of a TOML file: top-level keys named like :class:`JobConfig`'s fields
    (``-`` or ``_``). Unknown keys are an error that lists the valid ones."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from exc
    values = {k.replace("-", "_"): v for k, v in raw.items()}
    # lists and tables read naturally in TOML: fields = ["question", "sentence"],
    # label_words = {neg = "Terrible", pos = "Great"}
    if isinstance(values.get("fields"), list):
        values["fields"] = ",".join(map(str, values["fields"]))
    if isinstance(values.get("label_words"), dict):
        values["label_words"] = ",".join(f"{k}={v}" for k, v in values["label_words"].items())
    valid = set(DEFAULTS) - {"progress"}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {unknown}; valid: {sorted(valid)}")
    return values


def _log(cfg: JobConfig, msg: str) -> None:
    if cfg.progress:
        print(msg, file=sys.stderr, flush=True)


def load_task(cfg: JobConfig):
    """``(data, test_pool)``: the task's examples, and the indices reserved for test (a test
    file) or ``None``."""
    from .tasks import with_template
    from .tasks.files import load_user_task

    if cfg.train_file:
        if cfg.glue_dir:
            raise ValueError("give either --train-file (your own task) or --glue-dir, not both")
        if not cfg.label_words:
            raise ValueError("a task from --train-file needs --label-words, e.g. 'neg=Terrible,pos=Great'")
        return load_user_task(cfg.train_file, fields=cfg.fields, label_words=cfg.label_words,
                              label_field=cfg.label_field, template=cfg.template, test_file=cfg.test_file)
    if cfg.test_file:
        raise ValueError("--test-file goes with --train-file")
    data, test_pool = _load_named_task(cfg)
    return with_template(data, cfg.template or "fitted"), test_pool


def _load_named_task(cfg: JobConfig):
    from .tasks import GLUE, known_tasks, load_glue, prepare

    if cfg.glue_dir:
        # The paper's split draws every part from one pool: the task's train.tsv, or its dev.tsv
        # where the folder has no train.tsv (a QQP folder with the dev file only).
        try:
            return load_glue(cfg.glue_dir, cfg.task, "train"), None
        except FileNotFoundError as missing:
            try:
                data = load_glue(cfg.glue_dir, cfg.task, "dev")
            except FileNotFoundError:
                raise missing from None
            _log(cfg, f"note: {missing}; every split is drawn from {data.source}")
            return data, None
    if cfg.task not in known_tasks():
        raise ValueError(f"unknown task {cfg.task!r}; known: {known_tasks()} (or --glue-dir with {sorted(GLUE)}, "
                         "or your own --train-file)")
    return prepare(cfg.task, log=lambda m: _log(cfg, m)), None


def make_scorer(cfg: JobConfig):
    if cfg.base_url:
        from .llm import OpenAIScorer

        return OpenAIScorer(cfg.model, base_url=cfg.base_url)
    from .llm import LocalScorer

    return LocalScorer(cfg.model)


def upgrade_config(config: dict) -> dict:
    """A stored run configuration in today's terms. Runs written before calibrated scoring and
    the fitted templates existed (no ``calibrate`` key) scored raw label log-probs with the
    paper's template; runs written before the validation size and early stopping were
    settings (no ``validation`` key) used the paper's 10 validation examples per class and
    delivered the last decoded prompts; runs written before the pooled pick (no ``pick`` key)
    delivered each worker's own prompt."""
    if "validation" not in config:
        config = {**config, "validation": 10, "keep_best": False}
    if "pick" not in config:
        config = {**config, "pick": "own"}
    if "calibrate" in config:
        return config
    return {**config, "calibrate": False, "template": config.get("template") or (None if config.get("train_file") else "paper")}


def differences(old: dict, new: dict) -> list[str]:
    """The result-changing settings in which two configurations (as dicts) differ, as ``name=old (now new)``.
    A setting a configuration lacks (written before the setting existed) counts as what runs did
    then (:func:`upgrade_config`), else as its default."""
    old = upgrade_config(old)
    return [f"{k}={old.get(k, DEFAULTS.get(k))!r} (now {new[k]!r})" for k in sorted(new)
            if k not in _NOT_RESULTS and old.get(k, DEFAULTS.get(k)) != new[k]]


def _claim(out: Path, cfg: JobConfig) -> None:
    """Use ``out`` for this run unless it holds a run of a different configuration, or an
    unfinished one (then nothing there is touched). Rerunning a finished configuration
    starts it over."""
    previous = out / "config.json"
    if previous.exists():
        try:
            old = json.loads(previous.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{out} holds an unreadable config.json; choose another --out or remove it "
                             "(nothing was overwritten)") from None
        differ = differences(old, dataclasses.asdict(cfg))
        if differ:
            raise ValueError(f"{out} holds a run with other settings: {', '.join(differ)}; choose another --out, "
                             "remove it, or --resume it (nothing was overwritten)")
        if any((out / name).exists() for name in CHECKPOINTS) and not (out / "result.json").exists():
            raise ValueError(f"{out} holds an unfinished run of these settings: continue it with "
                             f"asyndbt run --resume {out}, or remove the folder to start over (nothing was overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    for stale in (*CHECKPOINTS, "result.json", "history.jsonl"):
        (out / stale).unlink(missing_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))


def resume_config(run_dir: str, given: dict) -> JobConfig:
    """The configuration of the run in ``run_dir``; ``given`` (flags the user typed) may only
    repeat it, or change settings that do not alter results (progress, cache, checkpoints)."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} holds no run to resume (no config.json)")
    stored = upgrade_config(json.loads(path.read_text()))
    differ = differences(stored, {**stored, **given})
    if differ:
        raise ValueError(f"{run_dir} is a run with other settings: {', '.join(differ)}; --resume continues a run "
                         "as it was configured (nothing was overwritten)")
    return JobConfig(**{**stored, **given, "out": str(run_dir)})


def run_job(cfg: JobConfig, *, resume: bool = False, scorer=None) -> dict:
    """Run the job (or continue it from its checkpoint with ``resume``); returns the result
    object (also written to ``<out>/result.json``). ``scorer``: reuse a loaded scorer (it
    must be the one ``cfg`` names; e.g. across the runs of a grid), else one is made."""
    import jax.numpy as jnp

    from . import baselines
    from .attacks import ATTACKS
    from .engine import AGGREGATORS, METHODS, Data
    from .harness import run_method
    from .llm import CONTENT_FREE, LLMFeedback, ResponseCache, cache_root
    from .simulator import parse_delay
    from .tasks import paper_split, partition_workers, template_label
    from .tasks.files import task_name as user_task_name

    if cfg.method not in job_methods():
        raise ValueError(f"unknown method {cfg.method!r}; known: {list(job_methods())}")
    if not 1 <= cfg.active <= cfg.workers:
        raise ValueError(f"--active (S={cfg.active}) must be between 1 and --workers (R={cfg.workers})")
    if cfg.attack not in ATTACKS:
        raise ValueError(f"unknown attack {cfg.attack!r}; known: {list(ATTACKS)}")
    if cfg.aggregator not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {cfg.aggregator!r}; known: {list(AGGREGATORS)}")
    if cfg.method == "feddtpt":
        from .feddtpt import CLIENTS, METHODS as SERVERS

        if cfg.feddtpt_client not in CLIENTS:
            raise ValueError(f"unknown feddtpt client {cfg.feddtpt_client!r}; known: {list(CLIENTS)}")
        if cfg.feddtpt_server not in SERVERS:
            raise ValueError(f"unknown feddtpt server {cfg.feddtpt_server!r}; known: {list(SERVERS)}")
        if cfg.malicious:
            raise ValueError("feddtpt runs without malicious workers (--malicious 0)")
    if cfg.runtime not in ("simulated", "local", "ray"):
        raise ValueError(f"unknown runtime {cfg.runtime!r}; known: simulated, local, ray")
    if cfg.runtime != "simulated":
        from .engine import CENTRALISED

        if cfg.method not in METHODS or cfg.method in CENTRALISED:
            raise ValueError(f"--runtime {cfg.runtime} runs the distributed methods "
                             f"({', '.join(m for m in METHODS if m not in CENTRALISED)}), not {cfg.method}")
        if cfg.malicious:
            raise ValueError("attacks are simulated only: --malicious needs --runtime simulated")
        if cfg.budget is not None:
            raise ValueError("--budget is checked on the simulated runtime only (the workers of a real runtime "
                             "score in parallel): drop it or use --runtime simulated")
        if resume:
            raise ValueError(f"--resume continues simulated runs; a --runtime {cfg.runtime} run starts again")
        if cfg.runtime == "ray":
            from .runtime_ray import _ray, check_reachable

            _ray()  # installed?
            check_reachable(cfg.ray_address)  # before any model is loaded or the run folder touched
    if not 0 <= cfg.malicious < cfg.workers:
        raise ValueError(f"--malicious (B={cfg.malicious}) must be between 0 and --workers - 1 ({cfg.workers - 1})")
    if cfg.aggregator != "mean" and 2 * cfg.malicious >= cfg.workers:
        raise ValueError(f"--aggregator {cfg.aggregator} needs an honest majority: --malicious (B={cfg.malicious}) "
                         f"must be below half of --workers ({cfg.workers})")
    delay = parse_delay(cfg.delay)
    task_name = user_task_name(cfg.train_file) if cfg.train_file else cfg.task
    out = Path(cfg.out or f"runs/{task_name}-{cfg.method}-seed{cfg.seed}")
    checkpoint = out / CHECKPOINTS[cfg.method == "feddtpt"]
    if resume:
        if (cfg.method in METHODS or cfg.method == "feddtpt") and not checkpoint.exists():
            raise FileNotFoundError(f"{out} has no checkpoint yet (the run stopped before its first iteration "
                                    "ended): start it again without --resume")
    started = time.perf_counter()
    # what the job stored in its checkpoint: the prompts it had scored and the wall time it had spent
    saved = _checkpoint_extra(checkpoint, cfg.method == "feddtpt") if resume and checkpoint.exists() else {}

    def wall() -> float:  # a resumed run's: the time spent when its checkpoint was written, plus this part
        return saved.get("wall_seconds", 0.0) + time.perf_counter() - started

    data, test_pool = load_task(cfg)  # every data problem is reported before the run folder is touched
    split = paper_split(data, seed=cfg.seed, test=cfg.test_size, test_pool=test_pool, candidates=cfg.candidates,
                        validation=cfg.validation)
    if not resume:
        _claim(out, cfg)
    for note in split.notes:
        _log(cfg, f"note: {note}")
    train = partition_workers(split.train, data.labels, cfg.workers, alpha=cfg.alpha, seed=cfg.seed)
    validation = partition_workers(split.validation, data.labels, cfg.workers, alpha=cfg.alpha, seed=cfg.seed + 1)
    _log(cfg, f"{data.name}: {len(data.examples)} examples from {data.source}; {cfg.workers} workers with "
              f"{train.shape[1]} train / {validation.shape[1]} validation queries each, {len(split.test)} test")

    task = split.prompt_task(cfg.demos_per_class)
    V = task.candidates.shape[1]
    U = task.num_slots  # demonstration slots: k per class
    M, T = cfg.fragment_words, len(split.test)
    tuned = cfg.method in METHODS
    cf = len(CONTENT_FREE) if cfg.calibrate else 0  # every calibrated prompt also asks the content-free inputs
    baseline_cost = 2 * (T + cf) + (cfg.method == "kate") * T * (1 + cf)  # kate: one prompt per query
    upper = validation.shape[1] + (train.shape[1] if cfg.method == "joint" else 0)  # joint: train and validation
    one_iteration = cfg.workers * (cfg.samples + 1) * (upper + cf)
    evaluation = cfg.workers * (upper + T + 2 * cf)  # the test evaluation; validation's is in every step
    if cfg.pick == "pooled":  # every worker scores every delivered prompt, then the picked one meets the test
        evaluation += cfg.workers ** 2 * (validation.shape[1] + cf) + T + cf
    if cfg.method == "feddtpt":  # no mid-run stop: the whole plan must fit
        one_iteration = (cfg.workers * (cfg.samples + 1) * (train.shape[1] + len(split.validation) + cf)
                         + len(split.validation) + cf)
        need = baseline_cost + cfg.iterations * one_iteration + T + cf
        if cfg.budget is not None and cfg.budget < need:
            raise ValueError(f"--budget {cfg.budget} is too small: feddtpt's {cfg.iterations} rounds and the "
                             f"baselines may score up to {need} prompts (it checks its budget before starting)")
    elif cfg.budget is not None and cfg.budget < baseline_cost + tuned * (one_iteration + evaluation):
        raise ValueError(f"--budget {cfg.budget} is too small: the baselines score {baseline_cost} prompts"
                         + (f" and one iteration with its evaluation up to {one_iteration + evaluation}" if tuned else ""))

    scorer = scorer or make_scorer(cfg)
    cache = ResponseCache(cfg.cache or cache_root() / "responses.sqlite")
    feedback = LLMFeedback(task, scorer, cache=cache, calibrate=cfg.calibrate)

    accuracy, prompts = {}, {}

    def measure(name, demos, queries=split.test):
        before = feedback.prompts
        accuracy[name] = baselines.prompt_accuracy(feedback, demos, queries, M)
        prompts[name] = feedback.prompts - before

    measure("manual", np.full(U, -1))
    measure("random-icl", baselines.random_demos(U, V, cfg.seed))
    if cfg.method == "kate":
        _log(cfg, "kate: embedding the candidates and the test queries with all-MiniLM-L6-v2")
        measure("kate", baselines.kate_demos(task, split.test))
    _log(cfg, "; ".join(f"{k} {v:.3f}" for k, v in accuracy.items()) + (f"; tuning with {cfg.method}" if tuned else ""))

    summary = {
        "task": data.name,
        "source": data.source,
        "method": cfg.method,
        "model": getattr(scorer, "name", cfg.model),
        "workers": cfg.workers,
        "seed": cfg.seed,
        "test_examples": int(T),
        "template": template_label(data.template),
        "calibrated": cfg.calibrate,
        "test_accuracy": accuracy,
        "llm_prompts_by_method": prompts,
    }
    if cfg.method == "feddtpt":
        summary.update(_run_feddtpt(cfg, task, scorer, cache, train, split, out, checkpoint, accuracy, prompts, resume,
                                    wall))
    if tuned:
        done = saved["prompts"] if resume else 0
        spent = {"max_step": 0, "last": baseline_cost + done}

        def near_budget() -> bool:  # stop before an iteration that could overrun the budget
            now = baseline_cost + done + feedback.prompts - tuning_start
            spent["max_step"] = max(spent["max_step"], now - spent["last"])
            spent["last"] = now
            return cfg.budget is not None and now + spent["max_step"] + evaluation > cfg.budget

        tuning_start = feedback.prompts
        shapes = dict(num_fragment_words=M, vocab_size=len(task.vocabulary), num_classes=U, num_candidates=V)
        if cfg.runtime != "simulated":
            summary.update(_run_on_runtime(cfg, data, task, feedback, train, validation, split, shapes, out, accuracy, prompts))
    if tuned and cfg.runtime == "simulated":
        result, config = run_method(
            cfg.method, feedback, Data(jnp.asarray(train), jnp.asarray(validation)), jnp.asarray(split.test), delay,
            shapes=shapes, iterations=cfg.iterations, num_active=cfg.active, max_staleness=cfg.staleness,
            seed=cfg.seed, history_path=str(out / "history.jsonl"), progress=cfg.progress,
            eval_every=1, test_every=cfg.iterations, num_samples=cfg.samples, lower_rounds=cfg.lower_rounds,
            epsilon=cfg.cut_tolerance, lr_fragment=cfg.lr, lr_demos=cfg.lr, num_malicious=cfg.malicious, attack=cfg.attack,
            aggregator=cfg.aggregator, status=feedback.status, checkpoint=str(checkpoint), keep_best=cfg.keep_best, pick=cfg.pick,
            checkpoint_every=cfg.checkpoint_every, resume=resume, stop=near_budget,
            checkpoint_extra=lambda: {"prompts": done + feedback.prompts - tuning_start, "wall_seconds": wall()},
        )
        accuracy[cfg.method] = result.final_test_accuracy
        prompts[cfg.method] = done + feedback.prompts - tuning_start
        summary.update(_learned(data, task, result.delivered_prompts(config)))
        summary.update({
            "kept_best": cfg.keep_best,
            "pick": cfg.pick,
            **({"picked_worker": result.picked} if result.picked is not None else {}),
            "active": config.num_active,
            "staleness": cfg.staleness,
            "delay": cfg.delay,
            "malicious": cfg.malicious,
            "attack": cfg.attack,
            "aggregator": cfg.aggregator,
            "iterations": result.iterations,
            "stopped_by_budget": bool(result.history and result.history[-1].get("stopped")),
            "final_validation_accuracy": result.final_validation_accuracy,
            "virtual_time": result.virtual_time,
        })
    summary.update({
        "llm_prompts": sum(prompts.values()),
        "cache_hits": cache.hits,
        "cache_misses": cache.misses,
        "wall_seconds": wall(),
        "machine": machine_info(),
        "resumed": resume,
        "notes": list(split.notes),
        "out": str(out),
        "config": dataclasses.asdict(cfg),
    })
    (out / "result.json").write_text(json.dumps(summary, indent=2))
    return summary


def _checkpoint_extra(checkpoint: Path, feddtpt: bool) -> dict:
    """What the job stored in its checkpoint (prompts scored, wall time spent)."""
    from .simulator import checkpoint_meta

    return json.loads(checkpoint.read_text()).get("extra", {}) if feddtpt else checkpoint_meta(checkpoint)["extra"]


def _learned(data, task, decoded) -> dict:
    """Every worker's learned demonstrations (as text; slot ``s`` shows class ``s mod U``) and
    fragment (the consensus's, decoded when that worker's prompt was: early stopping keeps each
    worker's prompt from its own best iteration)."""
    U = task.num_classes
    learned = [
        [{"label": data.template.answers[s % U], **data.examples[int(task.candidates[s % U, k])]}
         for s, k in enumerate(np.asarray(worker_demos)) if k >= 0]
        for worker_demos in decoded.demos
    ]
    # the tuned row: mean over the benign workers' own prompts (their demonstrations differ)
    fragments = [" ".join(task.vocabulary[j] for j in np.asarray(words) if j >= 0 and task.vocabulary[j])
                 for words in decoded.fragment_words]
    return {"learned_demonstrations": learned, "learned_fragment": fragments[0], "learned_fragments": fragments}


def _actor_feedback(cfg: JobConfig, task):
    """An actor's own black box (``--runtime ray``): its model (or endpoint) and the shared response cache."""
    from .llm import LLMFeedback, ResponseCache, cache_root

    return LLMFeedback(task, make_scorer(cfg), cache=ResponseCache(cfg.cache or cache_root() / "responses.sqlite"),
                       calibrate=cfg.calibrate)


def _run_on_runtime(cfg: JobConfig, data, task, feedback, train, validation, split, shapes, out: Path, accuracy: dict,
                    prompts: dict) -> dict:
    """Tune with real concurrent workers (:mod:`asyndbt_jax.runtime`) instead of the virtual clock."""
    import functools

    import jax.numpy as jnp

    from .engine import Data, method_config, method_data, prompts_of
    from .runtime import run_runtime

    config = method_config(cfg.method, num_workers=cfg.workers, num_active=cfg.active, max_staleness=cfg.staleness,
                           num_samples=cfg.samples, lower_rounds=cfg.lower_rounds, epsilon=cfg.cut_tolerance,
                           lr_fragment=cfg.lr, lr_demos=cfg.lr,
                           aggregator=cfg.aggregator, **shapes)
    make_feedback = (lambda: feedback) if cfg.runtime == "local" else functools.partial(_actor_feedback, cfg, task)
    _log(cfg, f"tuning on the {cfg.runtime} runtime: {cfg.workers} concurrent workers (S={cfg.active}, tau={cfg.staleness})"
              + ("; it delivers each worker's last decoded prompt (early stopping and the pooled pick run on the "
                 "simulated runtime only)" if cfg.keep_best or cfg.pick != "own" else ""))
    result = run_runtime(config, make_feedback, method_data(cfg.method, Data(jnp.asarray(train), jnp.asarray(validation))),
                         jnp.asarray(split.test),
                         iterations=cfg.iterations, runtime=cfg.runtime, seed=cfg.seed, progress=cfg.progress,
                         history_path=str(out / "history.jsonl"), ray_address=cfg.ray_address, actors=cfg.actors)
    accuracy[cfg.method] = result.final_test_accuracy
    live = _num_rows(result.workers)
    prompts[cfg.method] = result.queries + live * (validation.shape[1] + len(split.test))  # + the final evaluation
    decoded = prompts_of(config, result.workers.selection, result.server.consensus)
    return _learned(data, task, decoded) | {
        "kept_best": False,
        "pick": "own",
        "runtime": cfg.runtime,
        "active": cfg.active,
        "staleness": cfg.staleness,
        "aggregator": cfg.aggregator,
        "iterations": result.iterations,
        "final_validation_accuracy": result.final_validation_accuracy,
        "wall_time": result.wall_time,
        "failed_workers": result.failures,
    }


def _num_rows(workers) -> int:
    return 0 if workers is None else int(np.asarray(workers.selection.demo_probs).shape[0])


def _run_feddtpt(cfg: JobConfig, task, scorer, cache, train, split, out: Path, checkpoint: Path, accuracy: dict,
                 prompts: dict, resume: bool, wall) -> dict:
    """FedDTPT on the job's workers (its clients), the validation split as the small balanced
    public set, ``iterations`` rounds of ``samples`` proposals each; checkpointed after every
    round to ``checkpoint.json`` (``resume`` continues from it)."""
    from .feddtpt import ClientConfig, LocalProposer, OpenAIProposer, ServerConfig, run_feddtpt
    from .simulator import parse_delay

    proposer = None
    if cfg.feddtpt_client != "random":
        proposer = OpenAIProposer(cfg.model, base_url=cfg.base_url) if cfg.base_url else LocalProposer(scorer.loaded)
    result = run_feddtpt(
        task, scorer, train, split.validation, split.test, rounds=cfg.iterations,
        client=ClientConfig(kind=cfg.feddtpt_client, num_candidates=cfg.samples, max_length=cfg.fragment_words),
        server=ServerConfig(method=cfg.feddtpt_server), proposer=proposer, cache=cache, seed=cfg.seed,
        progress=cfg.progress, history_path=out / "history.jsonl", checkpoint=checkpoint, resume=resume,
        checkpoint_extra=lambda: {"wall_seconds": wall()}, calibrate=cfg.calibrate,
        **(dict(delay=parse_delay(cfg.delay), num_active=cfg.active, max_staleness=cfg.staleness) if cfg.feddtpt_async else {}),
    )
    accuracy["feddtpt"] = result.test_accuracy
    prompts["feddtpt"] = result.llm_prompts
    return {"rounds": result.rounds, "learned_fragment": result.prompt_text, "asynchronous": cfg.feddtpt_async,
            **({"virtual_time": result.history[-1].get("virtual_time")} if cfg.feddtpt_async else {}),
            "final_public_accuracy": result.public_accuracy,
            "communication": {k: getattr(result, k) for k in ("upload_tokens", "upload_bytes", "download_tokens",
                                                              "download_bytes")},
            "proposer": {k: getattr(result, k) for k in ("proposer_calls", "parse_failures", "proposer_errors",
                                                         "skipped")}}


def table(summary: dict) -> str:
    """The job's closing table, in plain text."""
    acc = summary["test_accuracy"]
    width = max(len(k) for k in acc)
    tuned = "learned_demonstrations" in summary
    scoring = f"template {summary['template']}, {'calibrated' if summary['calibrated'] else 'raw'} scores"
    picked = summary.get("picked_worker")
    how = (f" ({summary['method']}: the prompt every worker adopts, worker {picked}'s, best on all their validation "
           "examples)" if picked is not None else f" ({summary['method']}: mean over the workers' prompts)")
    lines = [f"{summary['task']} on {summary['model']} ({scoring}): test accuracy over {summary['test_examples']} examples"
             + (how if tuned else ""), ""]
    lines += [f"  {name:<{width}}  {value * 100:6.2f} %   {summary['llm_prompts_by_method'][name]:>7} prompts"
              for name, value in acc.items()]
    if summary.get("stopped_by_budget"):
        lines.append(f"  (stopped by the budget after {summary['iterations']} iterations)")
    if not tuned:
        if "learned_fragment" in summary:  # feddtpt: a global note, no demonstrations
            lines += ["", "learned prompt (the global note):", f"  {summary['learned_fragment'] or '(none)'}"]
        lines += ["", f"{summary['llm_prompts']} prompts scored ({summary['cache_hits']} cache hits), "
                      f"{summary['wall_seconds']:.0f} s; results in {summary['out']}"]
        return "\n".join(lines)
    shown = summary["learned_demonstrations"]
    lines += ["", "learned demonstrations (per worker):" if picked is None else "learned demonstrations:"]
    for r, demos in enumerate(shown if picked is None else shown[:1]):
        for d in demos:
            text = " / ".join(v for k, v in d.items() if k != "label")
            lines.append(f"  worker {r} [{d['label']}] {text}" if picked is None else f"  [{d['label']}] {text}")
    lines += ["learned fragment:", f"  {summary['learned_fragment'] or '(none)'}", "",
              f"{summary['llm_prompts']} prompts scored ({summary['cache_hits']} cache hits), "
              f"{summary['wall_seconds']:.0f} s; results in {summary['out']}"]
    return "\n".join(lines)
