"""The Ray driver of the real runtime (:mod:`asyndbt_jax.runtime`): workers as Ray actors.

One actor holds one worker, or a group of workers (``actors=``): it builds its own black
box with ``make_feedback()`` and its :class:`~asyndbt_jax.runtime.Worker` objects, and
answers the server's requests in order (``max_concurrency=1``). The server keeps the
returned object refs and proceeds with :func:`ray.wait`. ``ray.init()`` starts a local Ray
when none runs; ``address=`` joins a cluster (see docs/distributed.md). Inside the actors
JAX does not preallocate GPU memory (``XLA_PYTHON_CLIENT_PREALLOCATE=false``), so several
actors can share one GPU, and a local model scores on the actor's share of the cluster's
cores (its CPUs ÷ the number of actors; Ray would give an actor that reserves no CPU one
thread).

Install with ``pip install 'asyndbt_jax[ray]'``.
"""

from __future__ import annotations

import socket

import numpy as np

from .runtime import Worker, WorkerLost, _row

ACTOR_ENV = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


def check_reachable(address: str | None, seconds: float = 5.0) -> None:
    """Fail fast with a clear error when a ``host:port`` (or ``ray://host:port``) cluster
    address does not answer (``ray.init`` itself retries for minutes)."""
    if address in (None, "auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"a Ray address is host:port (or ray://host:port, auto), got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as error:
        raise ConnectionError(f"cannot reach the Ray cluster at {address!r}: {error}. Start its head node with "
                              f"`ray start --head --port {port}` (docs/distributed.md)") from error


def _ray():
    try:
        import ray
    except ImportError as error:  # pragma: no cover - exercised where Ray is absent
        raise ImportError("the Ray runtime needs Ray: pip install 'asyndbt_jax[ray]'") from error
    return ray


class _Group:
    """The body of one actor: some workers, their shared black box."""

    def __init__(self, config, make_feedback, workers: dict, test, worker_kwargs: dict, threads: int):
        # Ray starts an actor that reserves no CPU with OMP_NUM_THREADS=1: a local model would
        # score on one core. Each actor gets its share of the cluster's cores instead.
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:  # pragma: no cover - an API black box needs no torch
            pass
        feedback_fn = make_feedback()
        self.workers = {i: Worker(config, feedback_fn, i, w, d, test, **worker_kwargs) for i, (w, d) in workers.items()}

    def call(self, i: int, method: str, *args):
        return getattr(self.workers[i], method)(*args)

    def ping(self) -> bool:
        return True


class RayDriver:
    """Workers as Ray actors (see the module doc)."""

    name = "ray"

    def __init__(self, config, make_feedback, data, test, state, *, address=None, actors=None, **worker_kwargs):
        ray = _ray()
        self.ray = ray
        R = config.num_workers
        actors = R if actors is None else int(actors)
        if not 1 <= actors <= R:
            raise ValueError(f"actors must be between 1 and R={R}, got {actors}")
        if not ray.is_initialized():
            check_reachable(address)
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=True,
                         runtime_env={"env_vars": ACTOR_ENV})
            except ConnectionError as error:
                raise ConnectionError(f"cannot reach the Ray cluster at {address!r}: {error}") from error
        remote = ray.remote(num_cpus=0, max_concurrency=1, max_restarts=0)(_Group)
        threads = max(1, int(ray.cluster_resources().get("CPU", 1)) // actors)  # torch threads per actor
        groups = np.array_split(np.arange(R), actors)
        self.actor_of, self.actors = {}, []
        for g in groups:
            members = {int(i): (_row(state.workers, int(i)), _row(data, int(i))) for i in g}
            actor = remote.options(scheduling_strategy="SPREAD").remote(
                config, make_feedback, members, test, worker_kwargs, threads)
            self.actors.append(actor)
            self.actor_of.update({int(i): actor for i in g})
        ray.get([a.ping.remote() for a in self.actors])  # every actor is up (and built its black box)

    def submit(self, i: int, method: str, *args):
        return self.actor_of[i].call.remote(i, method, *args)

    def wait(self, handles, timeout):
        done, _ = self.ray.wait(list(handles), num_returns=1, timeout=timeout)
        return done

    def result(self, handle):
        return self.ray.get(handle)

    def lost(self, error: BaseException) -> bool:
        return isinstance(error, (WorkerLost, self.ray.exceptions.RayActorError))

    def kill(self, i: int) -> None:
        """Kill the actor that holds worker ``i`` (and so every worker of its group)."""
        self.ray.kill(self.actor_of[i], no_restart=True)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)


__all__ = ["RayDriver"]
