"""Event-driven virtual clock for AsynDBT: seeded worker delays on the host, the math in JAX.

Each worker, once replied, takes a random compute time (its *delay*) before its message
reaches the server. The server proceeds at the moment the ``S``-th earliest pending
message arrives, except that a worker about to exceed the staleness bound ``τ`` must be
waited for; every message that has arrived by then is processed together. The event queue
is a NumPy array of arrival times; the math of an iteration is one jit-compiled
:func:`~asyndbt_jax.engine.server_step` over all workers (no Python loop over workers).

A polyhedron refresh (every ``δ`` iterations) needs ``K`` rounds with every online worker:
it advances the clock by ``K`` times the slowest of their fresh delay draws, and delays
every pending message by the same amount (the cost of a synchronous refresh).

Delay models (``parse_delay``): ``constant:D``, ``exponential:MEAN``, ``lognormal:SIGMA``
(median 1), ``pareto:ALPHA`` (heavy tail, scale 1), ``classes:S1,S2,...`` (workers are
assigned speed multipliers round-robin, times lognormal(0.25) jitter). Any model takes
``+dropout:P:MEAN``: after a reply a worker goes offline with probability ``P`` for an
extra exponential(MEAN) time; an offline worker is not waited for (τ does not apply to it
until it rejoins).
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ._files import atomic_file
from .engine import (AsynDBTConfig, Data, EngineState, decoded_prompts, evaluate, evaluate_prompts, init_state,
                     pooled_scores,
                     jit_config, malicious_mask, server_step)
from .selection import Configuration

KINDS = ("constant", "exponential", "lognormal", "pareto", "classes")

# Compiled once per process: shapes and switches are static, hyper-parameters traced, so runs
# that differ only in learning rates, ψ, μ, ε … (with the same feedback function) share them.
# The state is threaded through, so its buffers are donated: the step updates them in place
# instead of holding input and output copies (halves peak memory at 100k workers).
_STEP = jit_config(server_step, static_argnums=(0, 1), donate_argnums=(2,))
_EVALUATE = jax.jit(evaluate_prompts, static_argnums=0)
_POOLED = jax.jit(pooled_scores, static_argnums=0)
PICKS = ("own", "pooled")
_DECODE = jit_config(decoded_prompts)


@dataclass(frozen=True)
class DelayModel:
    """Per-worker compute-time distribution (virtual seconds). See the module docstring."""

    kind: str = "lognormal"
    param: tuple[float, ...] = (1.0,)
    dropout_prob: float = 0.0
    dropout_mean: float = 0.0
    scale: float = 1.0  # multiplies every delay (a central machine doing R workers' work: R)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"delay kind must be one of {KINDS}, got {self.kind!r}")
        if not self.param or any((not math.isfinite(x)) or x <= 0 for x in self.param):
            raise ValueError(f"delay parameters must be finite and positive, got {self.param!r}")
        if self.kind != "classes" and len(self.param) != 1:
            raise ValueError(f"delay kind {self.kind!r} takes one parameter, got {self.param!r}")
        if not 0 <= self.dropout_prob < 1 or self.dropout_mean < 0:
            raise ValueError("dropout probability must be in [0, 1) and its mean time >= 0")

    def sample(
        self, rng: np.random.Generator, workers: np.ndarray, allow_dropout: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Delays for ``workers`` (int array) and whether each drops out after this reply."""
        n = len(workers)
        (a, *_) = self.param
        if self.kind == "constant":
            delay = np.full(n, a)
        elif self.kind == "exponential":
            delay = rng.exponential(a, n)
        elif self.kind == "lognormal":
            delay = rng.lognormal(0.0, a, n)
        elif self.kind == "pareto":
            delay = 1.0 + rng.pareto(a, n)
        else:
            speed = np.asarray(self.param)[workers % len(self.param)]
            delay = speed * rng.lognormal(0.0, 0.25, n)
        delay = self.scale * delay
        dropped = (rng.random(n) < self.dropout_prob) & allow_dropout
        delay = delay + np.where(dropped, rng.exponential(max(self.dropout_mean, 1e-12), n), 0.0)
        return delay, dropped


def parse_delay(spec: str) -> DelayModel:
    """Parse ``KIND:PARAMS[+dropout:P:MEAN]``, e.g. ``lognormal:1.0`` or ``pareto:1.5+dropout:0.01:50``."""
    try:
        main, *extra = spec.split("+")
        kind, _, params = main.partition(":")
        values = tuple(float(x) for x in params.split(",")) if params else (1.0,)
        drop_p, drop_mean = 0.0, 0.0
        for part in extra:
            name, p, mean = part.split(":")
            if name != "dropout":
                raise ValueError(f"unknown delay modifier {name!r}")
            drop_p, drop_mean = float(p), float(mean)
    except ValueError as exc:
        raise ValueError(f"cannot parse delay {spec!r} (expected e.g. 'lognormal:1.0' or 'pareto:1.5+dropout:0.01:50'): {exc}") from exc
    return DelayModel(kind.strip(), values, drop_p, drop_mean)


class KeptPrompts:
    """Every worker's best decoded prompt so far on its own validation batch (early stopping
    on validation accuracy, ties to the lower validation loss, then to the later prompt).

    Host-side NumPy: ``fragment_words [R, M]``, ``demos [R, U]``, ``accuracy``, ``loss`` and
    ``iteration [R]`` (when each worker's kept prompt was decoded)."""

    def __init__(self):
        self.fragment_words = self.demos = None
        self.accuracy = self.loss = self.iteration = None

    def update(self, prompts: Configuration, accuracy, loss, iteration: int) -> None:
        words, demos = np.asarray(prompts.fragment_words), np.asarray(prompts.demos)
        accuracy, loss = np.asarray(accuracy, np.float64), np.asarray(loss, np.float64)
        if self.demos is None:
            self.fragment_words, self.demos = words.copy(), demos.copy()
            self.accuracy, self.loss = accuracy.copy(), loss.copy()
            self.iteration = np.full(len(accuracy), iteration, np.int64)
            return
        better = (accuracy > self.accuracy) | ((accuracy == self.accuracy) & (loss <= self.loss))
        self.fragment_words[better], self.demos[better] = words[better], demos[better]
        self.accuracy[better], self.loss[better], self.iteration[better] = accuracy[better], loss[better], iteration

    @property
    def filled(self) -> bool:
        """Whether a prompt has been kept yet (the first validation pass fills every worker)."""
        return self.demos is not None

    def prompts(self) -> Configuration:
        return Configuration(jnp.asarray(self.fragment_words), jnp.asarray(self.demos))

    def state_dict(self) -> dict | None:
        if self.demos is None:
            return None
        return {k: getattr(self, k).tolist() for k in ("fragment_words", "demos", "accuracy", "loss", "iteration")}

    def load_state_dict(self, state: dict | None) -> None:
        if state is None:
            return
        for k, dtype in (("fragment_words", np.int32), ("demos", np.int32), ("accuracy", np.float64),
                         ("loss", np.float64), ("iteration", np.int64)):
            setattr(self, k, np.asarray(state[k], dtype))


@dataclass
class SimulationResult:
    state: EngineState
    history: list[dict]
    final_test_accuracy: float
    final_validation_accuracy: float
    iterations: int
    virtual_time: float
    queries: int
    rejected: int
    reached_target_at: float | None
    kept: KeptPrompts | None = None  # keep_best: each worker's best prompt on its validation batch
    picked: int | None = None  # pick="pooled": the worker whose prompt every worker adopts

    def delivered_prompts(self, config: AsynDBTConfig) -> Configuration:
        """The prompts this run delivers, one per worker: the kept ones under early stopping,
        otherwise the last decoded ones; with a pooled pick, the picked one for everyone."""
        prompts = self.kept.prompts() if self.kept is not None and self.kept.filled else _DECODE(config, self.state)
        if self.picked is None:
            return prompts
        return jax.tree.map(lambda x: jnp.broadcast_to(x[self.picked], x.shape), prompts)


def choose_arrivals(arrival: np.ndarray, staleness: np.ndarray, offline: np.ndarray, num_active: int, max_staleness: int):
    """The server's next move: ``(clock, arrived mask)``.

    It waits for the ``S``-th earliest message and for every online worker whose staleness
    would otherwise exceed ``τ``; everything that has arrived by then is processed.
    """
    wait_until = np.sort(arrival)[min(num_active, len(arrival)) - 1]
    forced = (staleness >= max_staleness) & ~offline
    if forced.any():
        wait_until = max(wait_until, float(arrival[forced].max()))
    return wait_until, arrival <= wait_until


class Clock:
    """The host-side event clock of one run (NumPy): pending arrival times, offline workers,
    staleness counters, virtual time. :func:`simulate` and :func:`simulate_batch` both drive it."""

    def __init__(self, config: AsynDBTConfig, delay: DelayModel, seed: int):
        self.config, self.delay = config, delay
        self.rng = np.random.default_rng(seed)
        R = config.num_workers
        self.time = 0.0
        self.arrival = np.zeros(R)
        self.offline = np.zeros(R, bool)
        self.staleness = np.zeros(R, np.int64)

    def next_arrivals(self, iteration: int) -> np.ndarray:
        """The arrived mask of server iteration ``iteration`` (everyone at iteration 0: the
        broadcast of the initial state); advances the clock to it."""
        if iteration == 0:
            return np.ones(self.config.num_workers, bool)
        self.time, arrived = choose_arrivals(
            self.arrival, self.staleness, self.offline, self.config.num_active, self.config.max_staleness
        )
        return arrived

    def after_step(self, arrived: np.ndarray, refreshed: bool) -> None:
        """Charge a refresh (``K`` synchronous rounds of the online workers, no dropout draws),
        draw the replied workers' next delays, update the staleness counters."""
        if refreshed:
            online = np.flatnonzero(~self.offline) if (~self.offline).any() else np.arange(self.config.num_workers)
            lower, _ = self.delay.sample(self.rng, online, allow_dropout=False)
            pause = self.config.lower_rounds * float(lower.max())
            self.time += pause
            self.arrival = self.arrival + pause
        replied = np.flatnonzero(arrived)
        d, dropped = self.delay.sample(self.rng, replied)
        self.arrival[replied] = self.time + d
        self.offline[replied] = dropped
        self.staleness = np.where(arrived, 0, self.staleness + 1)

    def state_dict(self) -> dict:
        """Everything the clock carries, JSON-serialisable (the generator's exact position included)."""
        return {"time": self.time, "arrival": self.arrival.tolist(), "offline": self.offline.tolist(),
                "staleness": self.staleness.tolist(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.time = float(state["time"])
        self.arrival = np.asarray(state["arrival"], np.float64)
        self.offline = np.asarray(state["offline"], bool)
        self.staleness = np.asarray(state["staleness"], np.int64)
        self.rng.bit_generator.state = state["rng"]


def _is_key(x) -> bool:
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def save_checkpoint(path: str | os.PathLike, state: EngineState, meta: dict) -> None:
    """Write ``state`` (every leaf, bit for bit; PRNG keys as their raw data) and the
    JSON-serialisable ``meta`` to ``path`` atomically: a kill mid-write leaves the previous
    checkpoint intact."""
    leaves = jax.tree.leaves(jax.device_get(jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state)))
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.asarray(json.dumps(meta)), **{f"leaf{i}": np.asarray(x) for i, x in enumerate(leaves)})
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(buffer.getvalue())
        f.flush()
        os.fsync(f.fileno())


def checkpoint_meta(path: str | os.PathLike) -> dict:
    """The JSON meta of a checkpoint (``next_iteration``, ``history``, ``extra`` …) without its arrays."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc


def load_checkpoint(path: str | os.PathLike, template: EngineState) -> tuple[EngineState, dict]:
    """Read a checkpoint written by :func:`save_checkpoint` into the structure of
    ``template`` (a state of the same configuration, e.g. ``init_state``)."""
    meta = checkpoint_meta(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            saved = [z[f"leaf{i}"] for i in range(len(z.files) - 1)]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    leaves, treedef = jax.tree.flatten(template)
    if len(saved) != len(leaves) or any(a.shape != (jax.random.key_data(b) if _is_key(b) else b).shape
                                        for a, b in zip(saved, leaves)):
        raise ValueError(f"checkpoint {path} does not fit this configuration (its arrays have other shapes)")
    restored = [jax.random.wrap_key_data(jnp.asarray(a), impl=jax.random.key_impl(b)) if _is_key(b) else jnp.asarray(a)
                for a, b in zip(saved, leaves)]
    return jax.tree.unflatten(treedef, restored), meta


def check_run_args(config: AsynDBTConfig, iterations, eval_every: int, checkpoint_every: int,
                   checkpoint, resume: bool) -> None:
    """The argument checks every server loop (the simulator, the real runtime) shares."""
    config.validate()
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    if eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every!r}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every!r}")
    if resume and checkpoint is None:
        raise ValueError("resume needs the checkpoint file to resume from")


def resume_from(checkpoint: str | os.PathLike, template: EngineState, run_id: dict) -> tuple[EngineState, dict]:
    """Load ``checkpoint`` to resume the run ``run_id`` names; refuses one written by another run
    (naming the settings that differ) or a missing file."""
    if not Path(checkpoint).exists():
        raise FileNotFoundError(f"no checkpoint to resume from at {checkpoint}")
    state, meta = load_checkpoint(checkpoint, template)
    differ = sorted(k for k in run_id if meta.get("run", {}).get(k) != run_id[k])
    if differ:
        raise ValueError(f"checkpoint {checkpoint} belongs to another run (it differs in {', '.join(differ)})")
    return state, meta


def refresh_schedule(config: AsynDBTConfig, iterations: int) -> np.ndarray:
    """bool ``[T]``: the iterations that refresh the polyhedron (every ``δ``, bilevel methods only)."""
    every = np.arange(iterations) % config.refresh_every == 0
    return every & bool(config.bilevel and config.use_fragment)


def simulate(
    config: AsynDBTConfig,
    feedback_fn,
    data: Data,
    test_queries: Any,
    delay: DelayModel,
    *,
    iterations: int,
    seed: int = 0,
    eval_every: int = 10,
    test_every: int | None = None,
    target_validation_accuracy: float | None = None,
    history_path: str | None = None,
    progress: bool = True,
    status=None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    checkpoint_extra: Callable[[], dict] | None = None,
    stop: Callable[[], bool] | None = None,
    keep_best: bool = False,
    pick: str = "own",
) -> SimulationResult:
    """Run ``iterations`` server iterations on the virtual clock.

    Args:
      config: validated engine configuration (``num_active`` = S, ``max_staleness`` = τ).
      feedback_fn: pure-JAX feedback (e.g. ``partial(oracle_feedback, task.oracle)``).
      data: per-worker training/validation queries (leaves ``[R, B]``).
      test_queries: shared test queries (leaves ``[B]``).
      delay: worker delay model.
      iterations: number of server iterations (the first one is the broadcast at time 0).
      seed: seeds the JAX key and the delay generator.
      eval_every: evaluate validation accuracy every this many iterations (and last).
      test_every: evaluate test accuracy every this many iterations (and last); default
        ``eval_every``. An LLM run evaluates validation often (each worker's own small
        batch) and the large test set rarely.
      target_validation_accuracy: stop as soon as mean validation accuracy reaches it.
      history_path: write one JSON line per iteration here.
      progress: a progress line on stderr (iteration, virtual time, accuracies, queries,
        wall time and ETA).
      status: optional ``() -> str`` appended to the progress line (``LLMFeedback.status``:
        prompts scored and the cache hit rate).
      checkpoint: write the whole run (engine state, JAX key, the clock and its generator,
        history, counters) to this file every ``checkpoint_every`` iterations and at the end,
        atomically.
      resume: continue from ``checkpoint`` instead of starting; the run must be the same
        (configuration, delay, iterations, seed, evaluation schedule). With deterministic
        feedback (the oracle; an LLM through its response cache) a resumed run ends in
        exactly the state of an uninterrupted one.
      checkpoint_extra: ``() -> dict`` stored in each checkpoint's meta under ``"extra"``
        (the caller's own counters; read them back with :func:`checkpoint_meta`).
      stop: ``() -> bool`` asked after every iteration's step: True makes that iteration the
        last (evaluated, recorded with ``"stopped": true``, checkpointed as finished), e.g.
        a budget of LLM calls about to run out.
      keep_best: early stopping on validation accuracy, per worker (:class:`KeptPrompts`):
        each worker delivers the best of its decoded prompts at the evaluations so far on
        its own validation batch; the test accuracy is that of the kept prompts. The history
        records both the current prompts' ``validation_accuracy`` and the kept prompts'
        ``kept_validation_accuracy``.
      pick: what each worker delivers at the end. ``"own"``: its own prompt (the kept one
        under ``keep_best``, else its last decoded one); the test accuracy is the mean over
        the benign workers' prompts. ``"pooled"``: federated model selection (:func:`pooled_scores`):
        at the last iteration every benign worker scores the benign workers' prompts on its
        own validation batch (``R² B`` more queries), and every worker adopts the one with the
        best pooled accuracy (ties: the lower pooled loss, then the lower worker id). The last
        history record adds ``picked_worker``, ``pooled_validation_accuracy`` and
        ``picked_test_accuracy``; the result's test accuracy is the picked prompt's and its
        validation accuracy the pooled one.

    Returns:
      ``SimulationResult`` with the final state, per-iteration history and totals.
    """
    check_run_args(config, iterations, eval_every, checkpoint_every, checkpoint, resume)
    test_every = eval_every if test_every is None else test_every
    if test_every < 1:
        raise ValueError(f"test_every must be >= 1, got {test_every!r}")
    if pick not in PICKS:
        raise ValueError(f"pick must be one of {PICKS}, got {pick!r}")
    state = init_state(config, jax.random.key(seed))
    step, evaluate_jit, decode_jit = _STEP, _EVALUATE, _DECODE
    benign = np.asarray(~state.malicious)
    kept = KeptPrompts() if keep_best else None

    clock = Clock(config, delay, seed)
    history: list[dict] = []
    total_queries = 0
    reached = None
    val_acc = test_acc = float("nan")
    first = 0
    run_id = {"config": repr(config), "delay": repr(delay), "iterations": iterations, "seed": seed,
              "eval_every": eval_every, "test_every": test_every, "target_validation_accuracy": target_validation_accuracy}
    if keep_best:
        run_id["keep_best"] = True
    if pick != "own":
        run_id["pick"] = pick
    if resume:
        state, meta = resume_from(checkpoint, state, run_id)
        clock.load_state_dict(meta["clock"])
        history, total_queries, reached = meta["history"], meta["total_queries"], meta["reached"]
        val_acc, test_acc, first = meta["validation_accuracy"], meta["test_accuracy"], meta["next_iteration"]
        if kept is not None:
            kept.load_state_dict(meta.get("kept"))
    sink = open(history_path, "w") if history_path else None
    if sink:
        sink.writelines(json.dumps(record) + "\n" for record in history)

    def save(next_iteration: int) -> None:
        if sink:
            sink.flush()
        meta = {"run": run_id, "next_iteration": next_iteration, "clock": clock.state_dict(), "history": history,
                "total_queries": total_queries, "reached": reached, "validation_accuracy": val_acc,
                "test_accuracy": test_acc, "kept": kept.state_dict() if kept is not None else None,
                "extra": checkpoint_extra() if checkpoint_extra else {}}
        save_checkpoint(checkpoint, state, meta)

    started = time.perf_counter()
    try:
        for it in range(first, iterations):
            arrived = clock.next_arrivals(it)
            state, metrics = step(config, feedback_fn, state, jnp.asarray(arrived), data)
            m = jax.device_get(metrics)
            clock.after_step(arrived, bool(m.refreshed))
            staleness, offline = clock.staleness, clock.offline
            total_queries += int(m.queries)
            record = {
                "iteration": it,
                "virtual_time": clock.time,
                "arrived": np.flatnonzero(arrived).tolist(),
                "max_staleness": int(m.max_staleness),
                "max_staleness_online": int(staleness[~offline].max()) if (~offline).any() else 0,
                "mean_loss": float(m.mean_loss),
                "rejected": int(m.num_rejected),
                "queries": int(m.queries),
                "refreshed": bool(m.refreshed),
                "active_cuts": int(m.active_cuts),
                "added_cuts": int(m.added_cuts),
            }
            if bool(m.refreshed):
                record["lower_gap"] = float(m.lower_gap)
            stopped = it < iterations - 1 and stop is not None and bool(stop())
            if stopped:
                record["stopped"] = True
            last = it == iterations - 1 or stopped
            # accuracies of the benign workers' prompts (malicious workers' own prompts do not count)
            current = decode_jit(config, state) if (it % eval_every == 0 or it % test_every == 0 or last) else None
            if it % eval_every == 0 or last:
                accuracy, loss = jax.device_get(evaluate_jit(feedback_fn, current, data.validation))
                val_acc = float(np.mean(accuracy[benign]))
                record["validation_accuracy"] = val_acc
                if kept is not None:
                    kept.update(current, accuracy, loss, it)
                    record["kept_validation_accuracy"] = float(np.mean(kept.accuracy[benign]))
                if target_validation_accuracy is not None and reached is None and val_acc >= target_validation_accuracy:
                    reached = clock.time
            if it % test_every == 0 or last:
                held = kept.prompts() if kept is not None and kept.filled else current
                test_acc = float(np.mean(np.asarray(evaluate_jit(feedback_fn, held, test_queries)[0])[benign]))
                record["test_accuracy"] = test_acc
            if last and pick == "pooled":  # ``held``: the delivered prompts, just tested above
                pooled, pooled_loss = (np.asarray(x, np.float64) for x in _POOLED(feedback_fn, held, data.validation, benign))
                candidates = np.flatnonzero(benign)  # ties: the lower pooled loss, then the lower worker id
                best = int(candidates[np.lexsort((candidates, pooled_loss[candidates], -pooled[candidates]))[0]])
                one = jax.tree.map(lambda x: x[best : best + 1], held)
                test_acc = float(np.asarray(evaluate_jit(feedback_fn, one, test_queries)[0])[0])
                total_queries += len(benign) ** 2 * int(jax.tree.leaves(data.validation)[0].shape[1])
                record.update(picked_worker=best, pooled_validation_accuracy=float(pooled[best]),
                              picked_test_accuracy=test_acc)
            history.append(record)
            if sink:
                sink.write(json.dumps(record) + "\n")
            if checkpoint is not None and ((it + 1) % checkpoint_every == 0 or last or reached is not None):
                save(iterations if (stopped or reached is not None) else it + 1)
            if progress:
                wall = time.perf_counter() - started
                eta = wall / (it + 1 - first) * (iterations - it - 1)
                extra = f" {status()}" if status is not None else ""
                sys.stderr.write(
                    f"\r[{it + 1}/{iterations}] t={clock.time:9.2f} val={val_acc:.3f} test={test_acc:.3f} "
                    f"queries={total_queries}{extra} {wall:6.1f}s eta {eta:5.0f}s"
                )
                sys.stderr.flush()
            if reached is not None or stopped:
                break
    finally:
        if sink:
            sink.close()
        if progress:
            sys.stderr.write("\n")
    final = history[-1] if history else {}
    if "pooled_validation_accuracy" in final:
        val_acc = final["pooled_validation_accuracy"]
    elif kept is not None and kept.filled:
        val_acc = float(np.mean(kept.accuracy[benign]))
    return SimulationResult(
        state=state,
        history=history,
        final_test_accuracy=test_acc,
        final_validation_accuracy=val_acc,
        iterations=len(history),
        virtual_time=clock.time,
        queries=total_queries,
        rejected=int(state.server.rejected),
        reached_target_at=reached,
        kept=kept,
        picked=final.get("picked_worker"),
    )


class BatchResult(NamedTuple):
    """Final accuracies of a batch of runs (benign workers only), one entry per run."""

    test_accuracy: np.ndarray  # [K]
    validation_accuracy: np.ndarray  # [K]
    virtual_time: float
    iterations: int


def simulate_batch(
    config: AsynDBTConfig,
    feedback_fn,
    data: Data,
    test_queries: Any,
    delay: DelayModel,
    *,
    iterations: int,
    seeds: Sequence[int],
    malicious: np.ndarray | None = None,
    schedule_seed: int = 0,
    chunk: int = 100,
    progress: bool = True,
) -> BatchResult:
    """``K`` runs of one configuration as a single vmapped, jit-compiled scan.

    The runs share one straggler schedule (the :class:`Clock` drawn with ``schedule_seed``)
    and differ in their JAX seed (sampling, attack noise) and in which workers are
    malicious, so a seed × attack-fraction grid costs one compilation. ``config.num_malicious``
    is then the bound the rules assume (Krum's ``f``); each run's actual set is a row of
    ``malicious``.

    Args:
      seeds: ``K`` JAX seeds.
      malicious: bool ``[K, R]`` (default: every run has the last ``config.num_malicious``).
      chunk: iterations per compiled scan (progress is reported between chunks).

    Raises:
      ValueError: empty ``seeds``, ``malicious`` of the wrong shape, or ``iterations < 1``.
    """
    config.validate()
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one run")
    R, K = config.num_workers, len(seeds)
    if malicious is None:
        malicious = np.broadcast_to(malicious_mask(config), (K, R))
    malicious = np.asarray(malicious, bool)
    if malicious.shape != (K, R):
        raise ValueError(f"malicious must have shape (len(seeds), R) = ({K}, {R}), got {malicious.shape}")

    clock = Clock(config, delay, schedule_seed)
    refresh = refresh_schedule(config, iterations)
    arrived = np.zeros((iterations, R), bool)
    for it in range(iterations):
        arrived[it] = clock.next_arrivals(it)
        clock.after_step(arrived[it], bool(refresh[it]))

    keys = jnp.stack([jax.random.key_data(jax.random.key(s)) for s in seeds])
    states = jax.vmap(lambda k: init_state(config, jax.random.wrap_key_data(k)))(keys)
    states = states._replace(malicious=jnp.asarray(malicious))

    def body(batch, xs):
        a, r = xs
        new, _ = jax.vmap(lambda s: server_step(config, feedback_fn, s, a, data, r))(batch)
        return new, None  # only the final states are read

    run_chunk = jax.jit(lambda batch, a, r: jax.lax.scan(body, batch, (a, r)), donate_argnums=0)
    started = time.perf_counter()
    for start in range(0, iterations, chunk):
        stop = min(start + chunk, iterations)
        states, _ = run_chunk(states, jnp.asarray(arrived[start:stop]), jnp.asarray(refresh[start:stop]))
        if progress:
            jax.block_until_ready(states)
            sys.stderr.write(f"\r[{stop}/{iterations}] {K} runs {time.perf_counter() - started:6.1f}s")
            sys.stderr.flush()
    if progress:
        sys.stderr.write("\n")

    def benign_accuracy(state, queries):
        acc = evaluate(config, feedback_fn, state, queries)
        benign = ~state.malicious
        return jnp.sum(jnp.where(benign, acc, 0.0)) / jnp.maximum(jnp.sum(benign), 1)

    acc = jax.jit(jax.vmap(benign_accuracy, in_axes=(0, None)))
    return BatchResult(
        test_accuracy=np.asarray(acc(states, test_queries)),
        validation_accuracy=np.asarray(acc(states, data.validation)),
        virtual_time=clock.time,
        iterations=iterations,
    )
