"""The real runtime (threads and Ray actors) against the simulator and under faults."""

import functools
import math

import jax
import numpy as np
import pytest

from asyndbt_jax.engine import Data
from asyndbt_jax.harness import make_planted_task, run_planted
from asyndbt_jax.oracle import oracle_feedback
from asyndbt_jax.runtime import LocalDriver, Worker, run_runtime
from asyndbt_jax.simulator import parse_delay

R = 4
SHAPES = dict(num_fragment_words=6, vocab_size=8, num_candidates=6, num_test=300)
ENGINE = dict(num_samples=4, refresh_every=3)


@pytest.fixture(scope="module")
def task():
    return make_planted_task(jax.random.key(0), num_workers=R, **SHAPES)


def config_of(task, method="asyndbt", num_active=R, max_staleness=3, **overrides):
    _, config = run_planted(method, task, parse_delay("constant:1"), iterations=1, num_active=num_active,
                            max_staleness=max_staleness, seed=0, progress=False, **{**ENGINE, **overrides})
    return config


def run(task, config, **kw):
    feedback = functools.partial(oracle_feedback, task.oracle)
    args = dict(iterations=10, seed=3, progress=False)
    args.update(kw)
    return run_runtime(config, lambda: feedback, Data(task.train, task.validation), task.test, **args)


@pytest.mark.parametrize("method, gap", [("asyndbt", "value"), ("asyndbt", "l2sq"), ("fedone", "value")])
def test_s_equal_r_reproduces_the_simulator(task, method, gap):
    """With S = R the arrival sets do not depend on timing: the runtime's workers, each
    holding only its own row, end exactly where the simulator's batched step does (with
    either gap; ε small enough that the value-function gap adds cuts). ψ = 0: the sign
    term ψ·sign(z − p) is discontinuous where a worker's p equals z, and the refresh's
    per-worker calls differ from the batched one in the last float bit, which at such a
    tie becomes a difference of η_z·ψ in z. With ψ = 0 the consensus is the mean's (μ = 1):
    under the ψ-sign rule it would not move."""
    iterations = 8
    sim, config = run_planted(method, task, parse_delay("lognormal:1.0"), iterations=iterations, num_active=R,
                              max_staleness=3, seed=3, progress=False, gap_norm=gap, epsilon=1e-4, lower_lr=0.2,
                              psi=0.0, aggregator="mean", **{**ENGINE, "num_samples": 32})
    if method == "asyndbt":
        assert max(h["active_cuts"] for h in sim.history) > 0  # the cuts (and their q part) are exercised
    real = run(task, config, iterations=iterations, delay=parse_delay("lognormal:1.0"), delay_seconds=0.002)
    assert [h["arrived"] for h in real.history] == [h["arrived"] for h in sim.history]
    assert real.queries == sim.queries
    # the refresh rounds run as separate calls instead of one scan: float32 round-off only
    np.testing.assert_allclose(real.server.consensus, sim.state.server.consensus, atol=1e-6)
    np.testing.assert_allclose(real.server.cuts.duals, sim.state.server.cuts.duals, atol=1e-6)
    np.testing.assert_allclose(real.server.demo_terms, sim.state.server.demo_terms, atol=1e-6)
    assert [h["added_cuts"] for h in real.history] == [h["added_cuts"] for h in sim.history]
    gaps = [(h.get("lower_gap"), g.get("lower_gap")) for h, g in zip(real.history, sim.history)]
    assert all((a is None) == (b is None) and (a is None or a == pytest.approx(b, abs=1e-5)) for a, b in gaps)
    for got, want in zip(jax.tree.leaves(real.workers), jax.tree.leaves(sim.state.workers)):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert real.final_test_accuracy == pytest.approx(sim.final_test_accuracy, abs=1e-6)
    assert real.final_validation_accuracy == pytest.approx(sim.final_validation_accuracy, abs=1e-6)
    # the loss of a reply arrives with the worker's next message, one iteration later
    assert real.history[0]["mean_loss"] is None
    assert real.history[1]["mean_loss"] == pytest.approx(sim.history[0]["mean_loss"], rel=1e-6)


def _numbers_only(value):
    if isinstance(value, (tuple, list)):
        return all(_numbers_only(v) for v in value)
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "biuf"
    return isinstance(value, (bool, int, float, np.integer, np.floating))


def test_messages_carry_numbers_only(task, monkeypatch):
    sent, answered = [], []
    submit, result = LocalDriver.submit, LocalDriver.result

    def spy_submit(self, i, method, *args):
        sent.append((method, args))
        return submit(self, i, method, *args)

    def spy_result(handle):
        out = result(handle)
        answered.append(out)
        return out

    monkeypatch.setattr(LocalDriver, "submit", spy_submit)
    monkeypatch.setattr(LocalDriver, "result", staticmethod(spy_result))
    run(task, config_of(task, num_active=2), iterations=7, eval_every=3)
    methods = {m for m, _ in sent}
    assert {"update", "gradient", "accuracy"} <= methods  # every kind of message was inspected
    bad = [(m, type(a).__name__) for m, args in sent for a in args if not _numbers_only(a)]
    assert not bad, f"non-numeric payloads sent to workers: {bad}"
    # answers: p and losses, gradients, accuracies; the final read-back of a worker's own
    # variables is a local report, not a message to the server
    bad = [type(a).__name__ for a in answered if not (_numbers_only(a) or type(a).__name__ == "WorkerState")]
    assert not bad, f"non-numeric payloads sent to the server: {bad}"


def test_the_server_goes_on_while_a_slow_worker_computes(task):
    """Worker 3 is 10× slower: the fast ones keep the iteration count rising, and the slow
    one is waited for exactly when it would exceed τ. (A refresh is a barrier that waits for
    every update in flight, so it is made rare here.)"""
    tau = 3
    config = config_of(task, num_active=1, max_staleness=tau, refresh_every=50)
    result = run(task, config, iterations=30, delay=parse_delay("classes:1,1,1,10"), delay_seconds=0.02)
    stale = [h["max_staleness"] for h in result.history]
    assert max(stale) == tau  # the bound binds …
    without_slow = [3 not in h["arrived"] for h in result.history[1:]]
    longest = max(len(run_) for run_ in "".join("x" if w else " " for w in without_slow).split())
    assert longest >= tau  # … after τ server iterations went by without the slow worker
    assert sum(3 in h["arrived"] for h in result.history[1:]) >= 3
    assert math.isfinite(result.final_test_accuracy)


def _assert_dropped_for_good(history, worker, *, killed_at, tau):
    """The killed ``worker`` is dropped within 2(τ + 1) iterations of the kill (each of its two
    outstanding answers is waited for at most τ + 1 iterations) and never arrives again."""
    dropped = next(h["iteration"] for h in history if h["iteration"] > killed_at and h["live"] == R - 1)
    assert dropped <= killed_at + 2 * (tau + 1)
    assert all(h["live"] == R - 1 and worker not in h["arrived"] for h in history if h["iteration"] >= dropped)


def test_a_killed_worker_does_not_stop_training(task):
    def kill(iteration, driver):
        if iteration == 3:
            driver.kill(2)

    tau = 2
    result = run(task, config_of(task, num_active=2, max_staleness=tau), iterations=15, on_iteration=kill)
    assert result.iterations == 15
    assert result.failures == {2: 3}
    assert result.history[-1]["live"] == R - 1
    # An update that had already returned when the kill landed still arrives (a reply sent
    # before a crash is not lost), and the next request fails. Each of the two is waited for
    # at most τ + 1 iterations, so the worker is dropped by iteration 3 + 2(τ + 1); from then
    # on it never arrives. (How soon within that bound depends on thread timing.)
    _assert_dropped_for_good(result.history, 2, killed_at=3, tau=tau)
    assert result.history[-1]["max_staleness"] > tau  # τ no longer waits for it
    assert result.workers.selection.demo_probs.shape[0] == R - 1


def test_a_worker_that_raises_rejoins_with_the_current_state(task, monkeypatch):
    calls = {"n": 0}
    update = Worker.update

    def flaky(self, *args):
        if self.index == 1:
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("the LLM endpoint answered 503")
        return update(self, *args)

    monkeypatch.setattr(Worker, "update", flaky)
    result = run(task, config_of(task, num_active=2, max_staleness=2), iterations=12)
    assert result.failures == {}  # it recovered (its failure count was reset)
    assert calls["n"] > 3  # it was sent the state again …
    assert result.history[-1]["live"] == R
    assert any(1 in h["arrived"] for h in result.history[6:])  # … and its messages came back


def test_a_silent_worker_times_out(task):
    """With τ = 1 the server must wait for worker 3 every other iteration; worker 3 takes
    three timeouts per update, so after one timeout it is marked failed and no longer waited
    for. The timeout is derived from a measured run on this machine (20 of its iterations,
    at least 3 s), so a loaded machine, where every update is slower, scales it too."""
    config = config_of(task, num_active=2, max_staleness=1)
    warm = run(task, config, iterations=4, delay=parse_delay("constant:1"), delay_seconds=0.01)  # compiles too
    timeout = max(3.0, 20 * warm.wall_time / warm.iterations)
    silent = 3 * timeout / 0.01  # worker 3's delay class, in units of delay_seconds
    result = run(task, config, iterations=8, delay=parse_delay(f"classes:1,1,1,{silent}"), delay_seconds=0.01,
                 timeout=timeout)
    assert result.iterations == 8
    assert result.failures == {3: 1}
    assert all(3 not in h["arrived"] for h in result.history[1:])
    assert all({0, 1, 2} & set(h["arrived"]) for h in result.history[1:])


def test_bad_input(task):
    with pytest.raises(ValueError, match="runtime must be one of"):
        run(task, config_of(task), runtime="threads")
    with pytest.raises(ValueError, match="num_malicious"):
        run(task, config_of(task)._replace(num_malicious=1))

    def kill_two(iteration, driver):
        if iteration == 1:
            driver.kill(0)
            driver.kill(1)

    with pytest.raises(RuntimeError, match="S=3"):
        run(task, config_of(task, num_active=3), iterations=10, on_iteration=kill_two)


# --------------------------------------------------------------------------- Ray (local cluster)

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_matches_the_local_driver(task, local_ray):
    config = config_of(task)
    local = run(task, config, iterations=6)
    remote = run(task, config, iterations=6, runtime="ray")
    assert [h["arrived"] for h in remote.history] == [h["arrived"] for h in local.history]
    assert np.array_equal(remote.server.consensus, local.server.consensus)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(remote.workers), jax.tree.leaves(local.workers)))
    assert remote.final_test_accuracy == local.final_test_accuracy


@pytest.mark.slow
def test_ray_slow_actor_and_killed_actor(task, local_ray):
    tau = 3
    config = config_of(task, num_active=1, max_staleness=tau, refresh_every=50)

    def kill(iteration, driver):
        if iteration == 25:
            driver.kill(1)

    result = run(task, config, iterations=40, runtime="ray", delay=parse_delay("classes:1,1,1,10"),
                 delay_seconds=0.03, on_iteration=kill)
    assert result.iterations == 40
    assert max(h["max_staleness_live"] for h in result.history) <= tau
    without_slow = "".join("x" if 3 not in h["arrived"] else " " for h in result.history[1:25])
    assert max(len(r) for r in without_slow.split()) >= tau
    assert result.failures == {1: 3}
    _assert_dropped_for_good(result.history, 1, killed_at=25, tau=tau)


def test_ray_unreachable_address_is_a_clear_error(task):
    from asyndbt_jax.runtime_ray import check_reachable

    with pytest.raises(ConnectionError, match="cannot reach the Ray cluster"):
        check_reachable("127.0.0.1:9", seconds=2)
    with pytest.raises(ValueError, match="host:port"):
        check_reachable("nonsense")


def test_checkpoint_and_resume(task, tmp_path):
    """A run stopped after its checkpoint at iteration 6 and resumed ends exactly where an
    uninterrupted one does (S = R: the arrival sets do not depend on timing)."""
    config = config_of(task)
    whole = run(task, config, iterations=10)
    path = tmp_path / "ckpt.npz"

    def crash(iteration, driver):
        if iteration == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(task, config, iterations=10, checkpoint=str(path), checkpoint_every=3, on_iteration=crash)
    resumed = run(task, config, iterations=10, checkpoint=str(path), checkpoint_every=3, resume=True,
                  history_path=str(tmp_path / "h.jsonl"))
    assert resumed.iterations == 10 and len((tmp_path / "h.jsonl").read_text().splitlines()) == 10
    assert [h["arrived"] for h in resumed.history] == [h["arrived"] for h in whole.history]
    assert np.array_equal(resumed.server.consensus, whole.server.consensus)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(resumed.workers), jax.tree.leaves(whole.workers)))
    assert resumed.final_test_accuracy == whole.final_test_accuracy
    with pytest.raises(ValueError, match="belongs to another run"):
        run(task, config, iterations=12, checkpoint=str(path), resume=True)


def test_ray_missing_names_the_extra(task, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(ImportError, match=r"pip install 'asyndbt_jax\[ray\]'"):
        run(task, config_of(task), runtime="ray", iterations=2)
