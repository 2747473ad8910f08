"""Real asynchronous runtime: the simulator's algorithm driven by real concurrency.

The simulator (:mod:`asyndbt_jax.simulator`) runs AsynDBT on a virtual clock. This module
runs the *same* jit-compiled pieces of :mod:`asyndbt_jax.engine` with workers that really
compute in parallel — on threads in this process (``runtime="local"``) or as Ray actors on
one or several machines (``runtime="ray"``, :mod:`asyndbt_jax.runtime_ray`):

* a :class:`Worker` holds its private variables ``q``/``p``, its Adam state and its data,
  and computes :func:`~asyndbt_jax.engine.worker_reply` for itself (``rows=[i]``: it draws
  exactly what row ``i`` draws in the simulator's batched step);
* the server loop holds ``z``, ``ρ``, the cuts and the staleness counters and calls
  :func:`~asyndbt_jax.engine.server_receive`, :func:`~asyndbt_jax.engine.refresh_round` and
  :func:`~asyndbt_jax.engine.refresh_cuts` (or, for the value-function gap,
  :func:`~asyndbt_jax.engine.refresh_value_cuts`);
* messages carry numbers only: the server sends a worker its cut forces on ``p [M, N]`` and
  ``q [U, V]``, its cuts' coefficients on ``q`` ``[C, U, V]`` (and ``z`` for FedAvg) and a
  PRNG key as ``uint32`` data; a worker sends back its ``p [M, N]``, its mean loss and its
  cuts' terms ``e_lᵀq [C]``. Never an example, never text, never ``q``. A term of a cut that a
  refresh replaced after the request was sent is ignored: the refresh asked every worker
  for its terms already.

Asynchrony has the simulator's semantics: the server proceeds once at least ``S`` messages
wait and no live worker is more than ``τ`` iterations stale (it blocks on one that would
be), and processes every message that has arrived by then. Every ``δ`` iterations the
polyhedron refresh runs ``K`` primal-dual rounds with every live worker (a synchronous
barrier, as the simulator charges it); an evaluation is a barrier too, so the runtime
evaluates only every ``eval_every`` iterations (default: the last one).

With ``S = R`` the arrival sets do not depend on timing, and a run reproduces the
simulator's synchronous run (tested). With ``S < R`` they depend on real timing, as they
should.

Faults: a worker whose call raises, or whose update has been in flight longer than
``timeout`` seconds, is marked failed: the server stops waiting for it (``τ`` no longer
applies to it) and goes on with the rest. A worker that raised is sent the current server
state again at the next iteration (it rejoins), up to ``max_failures`` times in a row; a
late message of a timed-out worker is accepted when it comes (it rejoins then); a lost
Ray actor is gone for the run. When fewer than ``S`` workers are left the run stops with
an error that says so.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import cuts as cutlib
from .engine import (
    AsynDBTConfig,
    Data,
    EngineState,
    ServerState,
    WorkerState,
    LowerEvaluation,
    added_cuts,
    argument_gap,
    written_cuts,
    cut_forces,
    init_state,
    jit_config,
    lower_evaluation,
    lower_gradient,
    prompts_of,
    refresh_cuts,
    refresh_round,
    refresh_start,
    refresh_value_cuts,
    server_receive,
    worker_reply,
)
from .selection import Configuration, SelectionVariables
from .simulator import DelayModel, check_run_args, resume_from, save_checkpoint

log = logging.getLogger(__name__)

RUNTIMES = ("local", "ray")


class WorkerLost(RuntimeError):
    """A worker that cannot answer any more (its thread was stopped, its Ray actor died)."""


# --------------------------------------------------------------------------- worker side


@jit_config(static_argnums=(0, 1))
def _worker_update(config: AsynDBTConfig, feedback_fn, workers: WorkerState, force, broadcast, queries, key, rows):
    if config.server_rule == "fedavg" and config.use_fragment:
        workers = workers._replace(selection=workers.selection._replace(fragment_probs=broadcast))
    G = rows.shape[0]
    new, loss = worker_reply(config, feedback_fn, workers, force, jnp.ones((G,), bool), queries, key, jnp.zeros((G,), bool), rows)
    return new, loss


#: ``e_lᵀq`` of the workers a batch holds (its own compiled function, used alike by a worker
#: after its update and by a resumed server for every worker's saved ``q``: the same rounding)
_demo_terms = jax.jit(cutlib.demo_terms)


@jit_config(static_argnums=(0, 1))
def _worker_evaluation(config: AsynDBTConfig, feedback_fn, demo_probs, fragment_probs, queries, key, rows):
    G = rows.shape[0]
    return lower_evaluation(config, feedback_fn, demo_probs, fragment_probs, queries, key, jnp.zeros((G,), bool), rows)


@jit_config(static_argnums=(0, 1))
def _worker_gradient(config: AsynDBTConfig, feedback_fn, demo_probs, fragment_probs, queries, key, rows):
    G = rows.shape[0]
    return lower_gradient(config, feedback_fn, demo_probs, fragment_probs, queries, key, jnp.zeros((G,), bool), rows)


@jit_config(static_argnums=(0, 1))
def _worker_accuracy(config: AsynDBTConfig, feedback_fn, selection, consensus, queries):
    prompts = prompts_of(config, selection, consensus)
    one = Configuration(prompts.fragment_words[:, None, :], prompts.demos[:, None, :])
    return jnp.mean(feedback_fn(one, queries).correct[:, 0, :], axis=-1)


def _row(tree, i: int):
    return jax.tree.map(lambda x: np.asarray(x)[i : i + 1], tree)


def _set_row(stacked, i: int, row):
    out = np.array(stacked, copy=True)
    out[i] = np.asarray(row)[0]
    return out


def _key(data) -> jax.Array:
    return jax.random.wrap_key_data(jnp.asarray(data, jnp.uint32))


class Worker:
    """One worker's private side. It never sends its data or its ``q``; every method takes
    and returns numbers (NumPy arrays and floats).

    Args:
      config: the engine configuration (the same on every worker and the server).
      feedback_fn: this worker's black box (``(Configuration, queries[, active]) -> Feedback``).
      index: the worker's index ``i`` in ``0..R-1``.
      workers: its :class:`~asyndbt_jax.engine.WorkerState` (leading axis 1).
      data: its training/validation batches (leading axis 1).
      test: the shared test queries (leaves ``[B]``).
      delay: optional injected compute time per update (a :class:`DelayModel` in units of
        ``delay_seconds``), drawn from the worker's own generator seeded ``(seed, index)``.
    """

    def __init__(self, config, feedback_fn, index: int, workers: WorkerState, data: Data, test, *,
                 delay: DelayModel | None = None, delay_seconds: float = 0.0, seed: int = 0):
        self.config, self.feedback_fn, self.index = config, feedback_fn, int(index)
        self.workers, self.data = workers, data
        self.test = jax.tree.map(lambda x: np.asarray(x)[None], test)
        self.delay, self.delay_seconds = delay, float(delay_seconds)
        self.rng = np.random.default_rng([seed, self.index])
        self.rows = np.array([self.index], np.int32)
        self.stopped = False

    def _check(self):
        if self.stopped:
            raise WorkerLost(f"worker {self.index} was stopped")

    def update(self, force_fragment, force_demos, broadcast, demo_coef, key_data) -> tuple[np.ndarray, float, np.ndarray]:
        """Compute the next upper-level update from the server's reply (the upper level's worker
        side): the cut forces on ``p [M, N]`` and ``q [U, V]``, ``z`` (FedAvg), this worker's
        cut coefficients on ``q`` ``[C, U, V]``. Returns ``(p [M, N], mean loss, e_lᵀq [C])``."""
        self._check()
        if self.delay is not None and self.delay_seconds > 0:
            d, _ = self.delay.sample(self.rng, self.rows, allow_dropout=False)
            time.sleep(float(d[0]) * self.delay_seconds)
        force = SelectionVariables(np.asarray(force_fragment)[None], np.asarray(force_demos)[None])
        coef = tuple(np.asarray(e)[None] for e in demo_coef)  # C arrays [1, U, V]
        new, loss = _worker_update(self.config, self.feedback_fn, self.workers, force, np.asarray(broadcast)[None],
                                   self.data.validation, _key(key_data), self.rows)
        terms = _demo_terms(coef, new.selection.demo_probs)
        self._check()
        self.workers = new
        return np.asarray(new.selection.fragment_probs[0]), float(loss[0]), np.asarray(terms[0])

    def evaluation(self, fragment_probs, key_data) -> tuple[np.ndarray, np.ndarray, float, float]:
        """The training-loss estimates at ``fragment_probs`` and this worker's ``q`` (a
        value-gap refresh): the gradients on ``p [M, N]`` and ``q [U, V]``, the mean loss and
        ``qᵀ∇̂_q g``."""
        self._check()
        out = _worker_evaluation(self.config, self.feedback_fn, self.workers.selection.demo_probs,
                                 np.asarray(fragment_probs)[None], self.data.train, _key(key_data), self.rows)
        return (np.asarray(out.grads.fragment_probs[0]), np.asarray(out.grads.demo_probs[0]), float(out.loss[0]),
                float(out.demo_dot[0]))

    def gradient(self, fragment_probs, key_data) -> np.ndarray:
        """The lower-level gradient ``∇̂g [M, N]`` at ``fragment_probs`` on the training batch
        (one refresh round of the lower level)."""
        self._check()
        grad = _worker_gradient(self.config, self.feedback_fn, self.workers.selection.demo_probs,
                                np.asarray(fragment_probs)[None], self.data.train, _key(key_data), self.rows)
        return np.asarray(grad[0])

    def accuracy(self, consensus, on_test: bool) -> float:
        """Accuracy of this worker's decoded prompt on the shared test set (``on_test``) or
        on its own validation batch."""
        self._check()
        queries = self.test if on_test else self.data.validation
        return float(_worker_accuracy(self.config, self.feedback_fn, self.workers.selection, np.asarray(consensus), queries)[0])

    def variables(self) -> WorkerState:
        """The worker's variables (for a final report or a checkpoint of its own)."""
        return jax.device_get(self.workers)


def make_workers(config, feedback_fn, data: Data, test, state, *, delay=None, delay_seconds=0.0, seed=0, indices=None):
    """Build :class:`Worker` objects ``indices`` (default: all) from a full initial state and data."""
    indices = range(config.num_workers) if indices is None else indices
    return {i: Worker(config, feedback_fn, i, _row(state.workers, i), _row(data, i), test,
                      delay=delay, delay_seconds=delay_seconds, seed=seed) for i in indices}


# --------------------------------------------------------------------------- drivers


class LocalDriver:
    """Workers on threads of this process: one single-thread executor per worker, so a
    worker's requests run in order (a refresh request waits for its update in flight).

    ``make_feedback()`` is called once; the workers share the feedback (a local model is
    loaded once; an :class:`~asyndbt_jax.llm.adapter.LLMFeedback` is thread-safe)."""

    name = "local"

    def __init__(self, config, make_feedback, data, test, state, **worker_kwargs):
        feedback_fn = make_feedback()
        self.workers = make_workers(config, feedback_fn, data, test, state, **worker_kwargs)
        self.pools = {i: cf.ThreadPoolExecutor(1, thread_name_prefix=f"asyndbt-worker-{i}") for i in self.workers}

    def submit(self, i: int, method: str, *args):
        return self.pools[i].submit(getattr(self.workers[i], method), *args)

    @staticmethod
    def wait(handles, timeout):
        done, _ = cf.wait(list(handles), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return list(done)

    @staticmethod
    def result(handle):
        return handle.result()

    @staticmethod
    def lost(error: BaseException) -> bool:
        return isinstance(error, WorkerLost)

    def kill(self, i: int) -> None:
        """Stop worker ``i`` for good (its next answer raises :class:`WorkerLost`); tests use it."""
        self.workers[i].stopped = True

    def close(self) -> None:
        for pool in self.pools.values():
            pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- server loop


class RuntimeResult(NamedTuple):
    """What :func:`run_runtime` returns."""

    server: ServerState
    workers: WorkerState | None  # every live worker's final variables (None rows: lost workers excluded)
    history: list[dict]
    final_test_accuracy: float
    final_validation_accuracy: float
    iterations: int
    wall_time: float
    queries: int
    rejected: int
    failures: dict  # worker index -> failures in a row (max_failures for a dropped worker)


@dataclass
class _Book:
    """The server's host-side book-keeping of its workers."""

    R: int
    live: np.ndarray = field(init=False)
    failures: np.ndarray = field(init=False)
    staleness: np.ndarray = field(init=False)

    def __post_init__(self):
        self.live = np.ones(self.R, bool)
        self.failures = np.zeros(self.R, np.int64)
        self.staleness = np.zeros(self.R, np.int64)


def _driver(runtime: str, config, make_feedback, data, test, state, ray_address, actors, **worker_kwargs):
    if runtime == "local":
        return LocalDriver(config, make_feedback, data, test, state, **worker_kwargs)
    if runtime == "ray":
        from .runtime_ray import RayDriver

        return RayDriver(config, make_feedback, data, test, state, address=ray_address, actors=actors, **worker_kwargs)
    raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")


def run_runtime(
    config: AsynDBTConfig,
    make_feedback: Callable[[], Any],
    data: Data,
    test_queries: Any,
    *,
    iterations: int,
    runtime: str = "local",
    seed: int = 0,
    delay: DelayModel | None = None,
    delay_seconds: float = 0.0,
    timeout: float | None = None,
    max_failures: int = 3,
    eval_every: int | None = None,
    history_path: str | None = None,
    progress: bool = True,
    ray_address: str | None = None,
    actors: int | None = None,
    on_iteration: Callable[[int, Any], None] | None = None,
    checkpoint: str | None = None,
    checkpoint_every: int = 10,
    resume: bool = False,
) -> RuntimeResult:
    """Run ``iterations`` server iterations with real concurrent workers.

    Args:
      config: validated engine configuration (``num_active`` = S, ``max_staleness`` = τ).
        Attacks are a simulation feature: ``num_malicious`` must be 0.
      make_feedback: ``() -> feedback_fn``, called once by the local driver and once per
        actor by Ray (so each machine builds its own black box; Ray ships it with
        cloudpickle).
      data: per-worker training/validation queries (leaves ``[R, B]``); worker ``i`` gets row ``i``.
      test_queries: shared test queries (leaves ``[B]``).
      iterations: server iterations (the first is the broadcast of the initial state).
      runtime: ``"local"`` (threads) or ``"ray"`` (actors; ``pip install 'asyndbt_jax[ray]'``).
      seed: the JAX key (as in the simulator) and the injected delays.
      delay, delay_seconds: inject a compute time into every worker update: a draw of
        ``delay`` times ``delay_seconds`` seconds (a stand-in for a slow LLM endpoint).
      timeout: seconds an update may be in flight before its worker is marked failed
        (``None``: never).
      max_failures: a worker whose calls raise this many times in a row is dropped.
      eval_every: evaluate every this many iterations (and last); each evaluation is a
        barrier. Default: the last iteration only.
      history_path: one JSON line per iteration.
      progress: a progress line on stderr.
      ray_address: ``ray.init(address=...)`` (``None``: a local Ray, or the one running).
      actors: Ray actors (worker groups); default one per worker.
      on_iteration: ``(iteration, driver) -> None`` after every iteration (tests kill workers here).
      checkpoint: write the server's state, every worker's variables (gathered: a barrier),
        the key, the counters and the history here every ``checkpoint_every`` iterations and
        at the end (atomic; the simulator's format).
      resume: continue from ``checkpoint``. The resumed run starts as a run does: every
        worker re-joins with its saved variables and its first message counts as arrived
        (updates in flight at the checkpoint are computed again). With ``S = R`` a resumed
        run ends exactly where an uninterrupted one does.

    Returns:
      :class:`RuntimeResult`.
    """
    eval_every = iterations if eval_every is None else eval_every
    check_run_args(config, iterations, eval_every, checkpoint_every, checkpoint, resume)
    if config.num_malicious:
        raise ValueError("attacks are simulated only (asyndbt simulate / the simulator): num_malicious must be 0 here")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    R, S, tau = config.num_workers, config.num_active, config.max_staleness
    state = init_state(config, jax.random.key(seed))
    run_id = {"config": repr(config), "iterations": iterations, "seed": seed, "eval_every": eval_every, "runtime": "real"}
    first, history, total_queries, saved_book = 0, [], 0, None
    if resume:
        state, meta = resume_from(checkpoint, state, run_id)
        first, history, total_queries, saved_book = meta["next_iteration"], meta["history"], meta["total_queries"], meta["book"]
    server, key = state.server, state.key
    known = jax.device_get(state.workers)  # the latest variables of every worker the server has seen
    bilevel = bool(config.bilevel and config.use_fragment)
    M, N = config.num_fragment_words, config.vocab_size
    grad_q_shape = (config.num_classes, config.num_candidates)
    val_batch = jax.tree.leaves(data.validation)[0].shape[-1]
    train_batch = jax.tree.leaves(data.train)[0].shape[-1]
    receive = jit_config(server_receive)
    one_round = jit_config(refresh_round)
    add_cuts = jit_config(refresh_cuts)
    forces_of = jit_config(cut_forces)
    value_cuts = jit_config(refresh_value_cuts)
    value_gap = bilevel and config.gap_norm == "value"
    C = config.cut_capacity
    slot_written = np.full(C, -1, np.int64)  # the refresh count at which each cut slot was last written
    num_refreshes = 0

    book = _Book(R)
    if saved_book is not None:
        book.staleness = np.zeros(R, np.int64)  # everyone re-joins at the first resumed iteration
        book.failures = np.asarray(saved_book["failures"], np.int64)
    driver = _driver(runtime, config, make_feedback, data, test_queries, state, ray_address, actors,
                     delay=delay, delay_seconds=delay_seconds, seed=seed)
    inflight: dict[int, tuple[Any, float]] = {}  # worker -> (handle, submitted at)
    sent_at: dict[int, int] = {}  # worker -> the refresh count when its request in flight was sent
    ready: dict[int, tuple] = {}  # worker -> (p, loss, e_lᵀq, sent at): arrived, not yet processed
    retry: set[int] = set()  # workers that raised: sent the current state at the next iteration
    val_acc = test_acc = float("nan")
    sink = open(history_path, "w") if history_path else None
    if sink:
        sink.writelines(json.dumps(record) + "\n" for record in history)
    started = time.perf_counter()

    def fail(i: int, why: str, error: BaseException | None = None) -> None:
        book.live[i] = False
        if book.failures[i] >= max_failures:  # already dropped: a request sent before the drop failing late changes nothing
            return
        book.failures[i] += 1
        lost = error is not None and driver.lost(error)
        if lost:
            book.failures[i] = max(book.failures[i], max_failures)
        elif error is not None and book.failures[i] < max_failures:
            retry.add(i)
        then = ("it is dropped" if book.failures[i] >= max_failures else
                "it will be sent the current state" if i in retry else "it is not waited for until it answers")
        log.warning("worker %d failed (%s); %s", i, why, then)

    def collect(handles: dict, block: bool) -> None:
        """Move finished updates from ``handles`` into ``ready``; wait for one when ``block``."""
        waiting = {h: i for i, (h, _) in handles.items()}
        if not waiting:
            return
        wait_for = None if not block else (1.0 if timeout is None else max(0.01, min(1.0, timeout)))
        done = driver.wait(list(waiting), 0 if not block else wait_for)
        for h in done:
            i = waiting[h]
            del handles[i]
            try:
                p, loss, terms = driver.result(h)
            except Exception as error:  # noqa: BLE001 - any worker failure is handled the same way
                fail(i, f"{type(error).__name__}: {error}", error)
                continue
            ready[i] = (np.asarray(p), loss, np.asarray(terms), sent_at.get(i, -1))
            book.live[i] = True
            book.failures[i] = 0
        if timeout is not None:
            now = time.perf_counter()
            for i, (_, since) in handles.items():
                if book.live[i] and now - since > timeout:
                    fail(i, f"no answer after {timeout:g} s")

    def gather(method: str, args_of: Callable[[int], tuple], who: np.ndarray) -> dict[int, Any]:
        """A barrier: ask every worker in ``who``, wait for all; failures are marked and skipped."""
        asked = {i: driver.submit(i, method, *args_of(i)) for i in np.flatnonzero(who)}
        answers = {}
        deadline = None if timeout is None else time.perf_counter() + timeout
        for i, h in asked.items():
            try:
                left = None if deadline is None else max(0.0, deadline - time.perf_counter())
                if left is not None and not driver.wait([h], left):
                    raise TimeoutError(f"no answer to {method} after {timeout:g} s")
                answers[i] = driver.result(h)
            except Exception as error:  # noqa: BLE001
                fail(i, f"{method}: {type(error).__name__}: {error}", None if isinstance(error, TimeoutError) else error)
        return answers

    def gather_rows(method: str, args_of: Callable[[int], tuple], shapes: list[tuple]) -> tuple[np.ndarray, list]:
        """:func:`gather` of per-worker answers into arrays ``[R, *shape]`` (zero where a
        worker failed) and the mask of the workers that answered."""
        answers = gather(method, args_of, book.live)
        out = [np.zeros((R,) + s, np.float32) for s in shapes]
        mask = np.zeros(R, bool)
        for i, answer in answers.items():
            mask[i] = True
            for o, a in zip(out, answer if len(shapes) > 1 else (answer,)):
                o[i] = a
        return mask, out

    def evaluate(on_test: bool) -> float:
        z = np.asarray(server.consensus)
        answers = gather("accuracy", lambda i: (z, on_test), book.live)
        return float(np.mean(list(answers.values()))) if answers else float("nan")

    def read_back() -> None:
        """Gather every live worker's variables into ``known`` (a barrier)."""
        nonlocal known
        rows = gather("variables", lambda i: (), book.live)
        for i, w in rows.items():
            known = jax.tree.map(lambda all_, one, i=i: _set_row(all_, i, one), known, w)

    def save(next_iteration: int) -> None:
        read_back()
        meta = {"run": run_id, "next_iteration": next_iteration, "history": history, "total_queries": total_queries,
                "book": {"failures": book.failures.tolist()}}
        save_checkpoint(checkpoint, EngineState(known, server, key, jnp.zeros((R,), bool)), meta)

    received_init = np.asarray(state.workers.selection.fragment_probs)
    # what every worker reports of its q with its (re)joining message: e_lᵀq for the current cuts
    terms_init = np.asarray(_demo_terms(state.server.cuts.demo_coef, state.workers.selection.demo_probs))
    del state
    try:
        for it in range(first, iterations):
            if it == first:
                arrived = np.ones(R, bool)
                p, terms = received_init, terms_init
                losses = np.zeros(R)
            else:
                while True:
                    collect(inflight, block=False)
                    live = book.live | np.isin(np.arange(R), list(ready))
                    if live.sum() < S:
                        raise RuntimeError(
                            f"only {int(live.sum())} live workers are left and the server needs S={S} "
                            f"(failed: {np.flatnonzero(~live).tolist()})")
                    forced = (book.staleness >= tau) & book.live & ~np.isin(np.arange(R), list(ready))
                    if len(ready) >= S and not forced.any():
                        break
                    if not inflight:
                        raise RuntimeError(f"no worker is computing and only {len(ready)} messages wait (S={S})")
                    collect(inflight, block=True)
                arrived = np.zeros(R, bool)
                arrived[list(ready)] = True
                p = np.asarray(server.received).copy()
                terms = np.asarray(server.demo_terms).copy()
                losses = np.zeros(R)
                for i, (msg, loss, msg_terms, stamp) in ready.items():
                    p[i], losses[i] = msg, loss
                    current = slot_written <= stamp  # a slot a refresh rewrote since the request: the refresh's term stands
                    terms[i, current] = msg_terms[current]
                ready.clear()
            num_arrived = int(arrived.sum())
            # the arrived messages' losses (from replies of earlier iterations; none at a (re)start)
            mean_loss = float(losses[arrived].mean()) if it > first and num_arrived else None
            key, k_refresh, k_reply = jax.random.split(key, 3)
            server, num_rejected = receive(config, server, jnp.asarray(p, server.received.dtype), jnp.asarray(arrived),
                                           jnp.asarray(terms, server.demo_terms.dtype))
            queries = 0
            refreshed = bilevel and it % config.refresh_every == 0
            cuts_before, added, record_gap = server.cuts, 0, None
            if refreshed:
                lower = start = refresh_start(server)
                if value_gap:  # the first round's estimates at the point, then K − 1 rounds, then one at φ
                    k_first, k_rest = jax.random.split(k_refresh)
                    round_keys = [k_first] + (list(jax.random.split(k_rest, config.lower_rounds - 1)) if config.lower_rounds > 1 else [])
                else:
                    round_keys = list(jax.random.split(k_refresh, config.lower_rounds))
                evaluations = []
                for r, round_key in enumerate(round_keys):
                    kd = np.asarray(jax.random.key_data(round_key))
                    current = np.asarray(lower.fragment_probs)
                    if value_gap and r == 0:
                        mask, (grad, grad_q, loss, dot) = gather_rows("evaluation", lambda i, p_=current, k_=kd: (p_[i], k_),
                                                                      [(M, N), grad_q_shape, (), ()])
                        evaluations.append(LowerEvaluation(SelectionVariables(grad, grad_q), loss, dot))
                    else:
                        mask, (grad,) = gather_rows("gradient", lambda i, p_=current, k_=kd: (p_[i], k_), [(M, N)])
                    lower = one_round(config, lower, jnp.asarray(grad), jnp.asarray(mask))
                    queries += int(mask.sum()) * config.num_samples * train_batch
                if value_gap:
                    kd = np.asarray(jax.random.key_data(round_keys[0]))  # the same draws as at the point
                    current = np.asarray(lower.fragment_probs)
                    mask, (grad, grad_q, loss, dot) = gather_rows("evaluation", lambda i, p_=current, k_=kd: (p_[i], k_),
                                                                  [(M, N), grad_q_shape, (), ()])
                    evaluations.append(LowerEvaluation(SelectionVariables(grad, grad_q), loss, dot))
                    queries += int(mask.sum()) * config.num_samples * train_batch
                    server, gap = value_cuts(config, server, start, lower, *evaluations)
                    num_refreshes += 1
                    slot_written[np.any(np.asarray(written_cuts(cuts_before, server.cuts)), 0)] = num_refreshes
                else:
                    gap = jnp.max(argument_gap(config, server, lower))
                    server = add_cuts(config, server, lower)
                added = int(added_cuts(cuts_before, server.cuts))
                record_gap = float(gap)
            # reply to the arrived workers (and send workers that raised the current state again)
            forces = forces_of(config, server.cuts)
            if isinstance(forces, SelectionVariables):
                force, force_q = np.asarray(forces.fragment_probs), np.asarray(forces.demo_probs)
            else:
                force, force_q = np.zeros((R, M, N), np.float32), np.zeros((R,) + grad_q_shape, np.float32)
            demo_coef = np.stack([np.asarray(e) for e in server.cuts.demo_coef], axis=1)  # [R, C, U, V]
            z = np.asarray(server.consensus)
            kd = np.asarray(jax.random.key_data(k_reply))
            replied = arrived | np.isin(np.arange(R), list(retry))
            for i in np.flatnonzero(replied):
                if book.failures[i] >= max_failures:
                    continue
                sent_at[i] = num_refreshes
                inflight[i] = (driver.submit(i, "update", force[i], force_q[i], z, demo_coef[i], kd), time.perf_counter())
                book.live[i] = True
                queries += config.num_samples * val_batch
            retry.clear()
            book.staleness = np.where(arrived, 0, book.staleness + 1)
            server = server._replace(staleness=jnp.asarray(book.staleness, jnp.int32), iteration=server.iteration + 1,
                                     rejected=server.rejected + num_rejected)
            total_queries += queries
            record = {
                "iteration": it,
                "wall_time": time.perf_counter() - started,
                "arrived": np.flatnonzero(arrived).tolist(),
                "max_staleness": int(book.staleness.max()),
                "max_staleness_live": int(book.staleness[book.live].max()) if book.live.any() else 0,
                "live": int(book.live.sum()),
                "mean_loss": mean_loss,
                "rejected": int(num_rejected),
                "queries": queries,
                "refreshed": refreshed,
                "active_cuts": int(jnp.sum(server.cuts.active)),
                "added_cuts": added,
                **({"lower_gap": record_gap} if refreshed else {}),
            }
            last = it == iterations - 1
            if it % eval_every == 0 and it > 0 or last:
                test_acc = record["test_accuracy"] = evaluate(True)
                val_acc = record["validation_accuracy"] = evaluate(False)
            history.append(record)
            if sink:
                sink.write(json.dumps(record) + "\n")
                sink.flush()
            if checkpoint is not None and ((it + 1) % checkpoint_every == 0 or last):
                save(it + 1)
            if on_iteration is not None:
                on_iteration(it, driver)
            if progress:
                sys.stderr.write(f"\r[{it + 1}/{iterations}] {record['wall_time']:7.1f}s live={record['live']}/{R} "
                                 f"arrived={num_arrived} val={val_acc:.3f} test={test_acc:.3f} queries={total_queries}")
                sys.stderr.flush()
        # the replies of the last iteration are answered but not processed: collect them so
        # every worker ends in a consistent state, then read the variables back
        variables = gather("variables", lambda i: (), book.live)
        workers = jax.tree.map(lambda *xs: np.concatenate(xs), *[variables[i] for i in sorted(variables)]) if variables else None
    finally:
        if sink:
            sink.close()
        if progress:
            sys.stderr.write("\n")
        driver.close()
    return RuntimeResult(
        server=server,
        workers=workers,
        history=history,
        final_test_accuracy=test_acc,
        final_validation_accuracy=val_acc,
        iterations=len(history),
        wall_time=time.perf_counter() - started,
        queries=total_queries,
        rejected=int(server.rejected),
        failures={int(i): int(book.failures[i]) for i in np.flatnonzero(book.failures)},
    )


__all__ = ["RUNTIMES", "LocalDriver", "RuntimeResult", "Worker", "WorkerLost", "make_workers", "run_runtime"]
