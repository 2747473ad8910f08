import jax
import numpy as np
import pytest

from asyndbt_jax.harness import make_planted_task, run_planted
from asyndbt_jax.simulator import DelayModel, choose_arrivals, parse_delay

R = 6
SMALL = dict(num_fragment_words=6, vocab_size=8, num_candidates=6, num_test=300)


@pytest.fixture(scope="module")
def task():
    return make_planted_task(jax.random.key(0), num_workers=R, **SMALL)


def run(task, method="asyndbt", delay="lognormal:1.0", **kw):
    args = dict(iterations=12, num_active=2, max_staleness=3, seed=3, progress=False, num_samples=4, refresh_every=3)
    args.update(kw)
    return run_planted(method, task, parse_delay(delay), **args)[0]


def test_parse_delay_and_bad_specs():
    assert parse_delay("pareto:1.5+dropout:0.1:20") == DelayModel("pareto", (1.5,), 0.1, 20.0)
    assert parse_delay("classes:1,5,10").param == (1.0, 5.0, 10.0)
    for bad in ["weibull:1", "lognormal:-1", "lognormal:x", "constant:1+jitter:1:1", "lognormal:1,2"]:
        with pytest.raises(ValueError):
            parse_delay(bad)


def test_choose_arrivals_waits_for_s_and_for_stale_workers():
    arrival = np.array([5.0, 1.0, 3.0, 9.0])
    clock, arrived = choose_arrivals(arrival, np.zeros(4), np.zeros(4, bool), 2, 3)
    assert clock == 3.0 and arrived.tolist() == [False, True, True, False]
    clock, arrived = choose_arrivals(arrival, np.array([0, 0, 0, 3]), np.zeros(4, bool), 2, 3)
    assert clock == 9.0 and arrived.all()
    # an offline worker is not waited for
    clock, arrived = choose_arrivals(arrival, np.array([0, 0, 0, 3]), np.array([False, False, False, True]), 2, 3)
    assert clock == 3.0


def test_staleness_never_exceeds_tau_under_heavy_tails(task):
    result = run(task, delay="pareto:1.1", iterations=30, max_staleness=2)
    assert max(h["max_staleness"] for h in result.history) <= 2
    assert max(h["max_staleness"] for h in result.history) == 2  # the bound is reached, so it binds
    times = [h["virtual_time"] for h in result.history]
    assert times == sorted(times)


def test_offline_workers_are_not_waited_for(task):
    result = run(task, delay="lognormal:0.5+dropout:0.3:1000", iterations=30, max_staleness=2)
    assert max(h["max_staleness_online"] for h in result.history) <= 2
    assert max(h["max_staleness"] for h in result.history) > 2  # someone dropped out and was not waited for


def test_s_equal_r_reproduces_the_synchronous_run(task):
    """Asynchrony changes only the clock: with S = R every iteration hears from everyone."""
    a = run(task, "asyndbt", delay="lognormal:1.0", num_active=R)
    s = run(task, "sync", delay="constant:1")
    strip = lambda h: [{k: v for k, v in r.items() if k != "virtual_time"} for r in h]  # noqa: E731
    assert strip(a.history) == strip(s.history)
    assert a.virtual_time != s.virtual_time


def test_same_seed_same_history_other_seed_differs(task):
    assert run(task).history == run(task).history
    assert run(task).history != run(task, seed=4).history


def test_history_records_required_fields(task, tmp_path):
    path = tmp_path / "h.jsonl"
    result = run(task, history_path=str(path))
    lines = path.read_text().splitlines()
    assert len(lines) == result.iterations
    first, last = result.history[0], result.history[-1]
    for key in ("virtual_time", "arrived", "max_staleness", "mean_loss", "queries", "test_accuracy", "validation_accuracy"):
        assert key in first and key in last
    assert result.queries == sum(h["queries"] for h in result.history) > 0


def test_simulate_batch_reproduces_single_runs_and_varies_the_malicious_set(task):
    """A batch of runs shares the straggler schedule; with the same seeds it equals simulate()."""
    import functools

    from asyndbt_jax.engine import Data
    from asyndbt_jax.oracle import oracle_feedback
    from asyndbt_jax.simulator import simulate_batch

    kw = dict(aggregator="trimmed_mean", trim_fraction=0.4, attack="sign_flip", num_malicious=2)
    single = run(task, seed=3, **kw)
    config = run_planted("asyndbt", task, parse_delay("lognormal:1.0"), iterations=1, num_active=2, max_staleness=3,
                         progress=False, num_samples=4, refresh_every=3, **kw)[1]
    fb = functools.partial(oracle_feedback, task.oracle)
    mal = np.zeros((2, R), bool)
    mal[0, -2:] = True  # run 0: as configured; run 1: attack-free
    batch = simulate_batch(config, fb, Data(task.train, task.validation), task.test, parse_delay("lognormal:1.0"),
                           iterations=12, seeds=[3, 3], malicious=mal, schedule_seed=3, chunk=5, progress=False)
    np.testing.assert_allclose(batch.test_accuracy[0], single.final_test_accuracy, atol=1e-6)
    np.testing.assert_allclose(batch.virtual_time, single.virtual_time)
    clean = run(task, seed=3, **{**kw, "num_malicious": 0})
    np.testing.assert_allclose(batch.test_accuracy[1], clean.final_test_accuracy, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        simulate_batch(config, fb, Data(task.train, task.validation), task.test, parse_delay("lognormal:1.0"),
                       iterations=2, seeds=[0], malicious=mal)
    with pytest.raises(ValueError, match="seeds"):
        simulate_batch(config, fb, Data(task.train, task.validation), task.test, parse_delay("lognormal:1.0"),
                       iterations=2, seeds=[])


def test_progress_line_has_eta_and_the_status_field(task, capsys):
    calls = []

    def status():
        calls.append(1)
        return "prompts=7 cache=50%"

    run_planted("asyndbt", task, parse_delay("constant:1"), iterations=3, num_active=2, max_staleness=3, seed=0,
                progress=True, num_samples=2, status=status)
    err = capsys.readouterr().err
    assert len(calls) == 3 and "[3/3]" in err and "prompts=7 cache=50%" in err and "eta     0s" in err


class Killed(Exception):
    pass


def dies_at(iteration: int):
    """A progress ``status`` that kills the run during iteration ``iteration`` (1-based)."""
    ticks = []

    def status():
        ticks.append(1)
        if len(ticks) == iteration:
            raise Killed
        return ""

    return status


def test_a_resumed_run_ends_exactly_like_an_uninterrupted_one(task, tmp_path):
    """Checkpoint every 3 iterations, die during iteration 8, resume from the checkpoint of
    iteration 6: the final state (every array, the key), the clock, the history file and
    the counters equal the uninterrupted run's, bit for bit."""
    from asyndbt_jax.simulator import load_checkpoint

    kw = dict(iterations=14, eval_every=4, delay="pareto:1.5+dropout:0.2:3")
    whole = run(task, checkpoint=str(tmp_path / "whole.npz"), history_path=str(tmp_path / "whole.jsonl"), **kw)
    ck, hist = str(tmp_path / "ck.npz"), str(tmp_path / "ck.jsonl")
    with pytest.raises(Killed):
        run(task, checkpoint=ck, checkpoint_every=3, history_path=hist, status=dies_at(8), progress=True, **kw)
    assert load_checkpoint(ck, whole.state)[1]["next_iteration"] == 6
    resumed = run(task, checkpoint=ck, checkpoint_every=3, history_path=hist, resume=True, **kw)
    for a, b in zip(jax.tree.leaves(whole.state), jax.tree.leaves(resumed.state)):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert resumed.history == whole.history and resumed.virtual_time == whole.virtual_time
    assert (tmp_path / "ck.jsonl").read_text() == (tmp_path / "whole.jsonl").read_text()
    assert (resumed.final_test_accuracy, resumed.queries) == (whole.final_test_accuracy, whole.queries)
    a, b = load_checkpoint(ck, whole.state)[1], load_checkpoint(str(tmp_path / "whole.npz"), whole.state)[1]
    assert a == b

    with pytest.raises(ValueError, match=r"belongs to another run \(it differs in config\)"):
        run(task, checkpoint=ck, resume=True, num_samples=5, **kw)
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        run(task, checkpoint=str(tmp_path / "none.npz"), resume=True, **kw)


def test_keep_best_delivers_each_workers_best_validation_prompt_and_resumes_exactly(task, tmp_path):
    """Early stopping on validation, per worker: the kept prompt of every worker is the one
    of highest validation accuracy among its evaluated prompts (re-evaluated here), never
    below its final prompt, and the test accuracy is the kept prompts'; a resumed run keeps
    the same prompts."""
    import jax.numpy as jnp

    from asyndbt_jax.engine import decoded_prompts, evaluate_prompts
    from asyndbt_jax.oracle import oracle_feedback

    fb = lambda c, q, active=None: oracle_feedback(task.oracle, c, q)  # noqa: E731
    kw = dict(iterations=14, eval_every=1, keep_best=True)
    args = dict(iterations=12, num_active=2, max_staleness=3, seed=3, progress=False, num_samples=4, refresh_every=3)
    whole, config = run_planted("asyndbt", task, parse_delay("lognormal:1.0"), **{**args, **kw},
                                checkpoint=str(tmp_path / "whole.npz"))
    kept = whole.kept
    accuracy, _ = evaluate_prompts(fb, kept.prompts(), task.validation)
    np.testing.assert_allclose(np.asarray(accuracy), kept.accuracy, atol=1e-6)
    final, _ = evaluate_prompts(fb, decoded_prompts(config, whole.state), task.validation)
    assert (kept.accuracy >= np.asarray(final) - 1e-6).all()
    assert kept.iteration.min() >= 0 and kept.iteration.max() <= 13
    assert "kept_validation_accuracy" in whole.history[-1]
    test = float(jnp.mean(evaluate_prompts(fb, kept.prompts(), task.test)[0]))
    assert whole.final_test_accuracy == pytest.approx(test, abs=1e-6)
    assert whole.final_validation_accuracy == pytest.approx(float(kept.accuracy.mean()), abs=1e-9)
    # some worker's best prompt came before the end (otherwise keeping the best changes nothing)
    assert (kept.iteration < 13).any()

    ck = str(tmp_path / "ck.npz")
    with pytest.raises(Killed):
        run(task, checkpoint=ck, checkpoint_every=3, status=dies_at(8), progress=True, **kw)
    resumed = run(task, checkpoint=ck, checkpoint_every=3, resume=True, **kw)
    for name in ("fragment_words", "demos", "accuracy", "loss", "iteration"):
        np.testing.assert_array_equal(getattr(resumed.kept, name), getattr(kept, name))
    assert resumed.history == whole.history


def test_pooled_pick_gives_every_worker_the_prompt_best_on_all_validation_batches(task):
    """Federated model selection: each worker's kept prompt is scored on every worker's
    validation batch (a NumPy loop here); every worker then delivers the one with the best
    pooled accuracy, the test accuracy is that prompt's, and the R² B queries are counted."""
    import jax.numpy as jnp

    from asyndbt_jax.engine import evaluate_prompts, pooled_scores
    from asyndbt_jax.oracle import oracle_feedback

    fb = lambda c, q, active=None: oracle_feedback(task.oracle, c, q)  # noqa: E731
    own = run(task, iterations=14, eval_every=1, keep_best=True)
    pooled = run(task, iterations=14, eval_every=1, keep_best=True, pick="pooled")
    prompts = own.kept.prompts()
    B = jax.tree.leaves(task.validation)[0].shape[1]
    reference = np.zeros(R)
    for k in range(R):  # prompt k on worker w's batch
        one = jax.tree.map(lambda x: jnp.broadcast_to(x[k], x.shape), prompts)
        reference[k] = np.mean(np.asarray(evaluate_prompts(fb, one, task.validation)[0]))
    scores, _ = pooled_scores(fb, prompts, task.validation, np.ones(R, bool))
    np.testing.assert_allclose(np.asarray(scores), reference, atol=1e-6)
    best = pooled.picked
    assert reference[best] == reference.max()
    assert pooled.history[-1]["picked_worker"] == best
    assert pooled.final_validation_accuracy == pytest.approx(reference.max(), abs=1e-6)
    delivered = pooled.delivered_prompts(None)
    assert (np.asarray(delivered.demos) == np.asarray(prompts.demos[best])).all()
    test = float(evaluate_prompts(fb, jax.tree.map(lambda x: x[best : best + 1], prompts), task.test)[0][0])
    assert pooled.final_test_accuracy == pytest.approx(test, abs=1e-6)
    assert pooled.queries == own.queries + R * R * B
    # the pick is never worse on the pooled batches than the average worker's own prompt
    assert reference.max() >= reference.mean()
    with pytest.raises(ValueError, match="pick must be one of"):
        run(task, pick="vote")
