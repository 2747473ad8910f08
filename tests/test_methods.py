"""Every method comes close to its optimum on a small planted task (R = 8 workers).

The task is IID across workers (``dirichlet_alpha`` large): each worker tunes its own
demonstrations on its own data, so under strongly non-IID data a worker's best
demonstrations differ from the uniform-test optimum and no distributed method can reach
it (benchmarks/methods_planted.py measures that case). Methods that tune one level are
judged against the optimum of that level alone.
"""

import jax
import jax.numpy as jnp
import pytest

from asyndbt_jax.engine import METHODS
from asyndbt_jax.harness import make_planted_task, run_planted
from asyndbt_jax.oracle import accuracy, restricted_optimum
from asyndbt_jax.simulator import parse_delay

SHAPES = dict(num_fragment_words=8, vocab_size=20, num_candidates=20, dirichlet_alpha=1000.0)
LEVELS = {  # (use_fragment, use_demos) each method tunes
    "asyndbt": (True, True),
    "sync": (True, True),
    "cendbt": (True, True),
    "bdpl": (True, False),
    "fedone": (True, False),
    "demos-only": (False, True),
    "joint": (True, True),
}


@pytest.fixture(scope="module")
def task():
    return make_planted_task(jax.random.key(0), num_workers=8, **SHAPES)


@pytest.fixture(scope="module")
def results(task):
    out = {}
    for method in METHODS:
        result, _ = run_planted(
            method, task, parse_delay("lognormal:1.0"), iterations=400, num_active=4, max_staleness=5,
            progress=False, num_samples=10, lr_fragment=0.05, lr_demos=0.05, eval_every=400,
        )
        out[method] = result.final_test_accuracy
    return out


def optimum(task, use_fragment, use_demos):
    types = task.oracle.demo_utility.shape[-1]
    config = restricted_optimum(task.oracle, jnp.full((types,), 1.0 / types), use_fragment=use_fragment, use_demos=use_demos)
    return float(accuracy(task.oracle, config, task.test))


@pytest.mark.parametrize("method", METHODS)
def test_each_method_reaches_90_percent_of_its_optimum(task, results, method):
    """90 %, not more: the sampled estimates keep the two-level distributed methods moving
    around their optimum (0.952 here). Measured at 400 iterations over seeds 0 and 1:
    AsynDBT 0.896 and 0.921, sync 0.875 and 0.899; at 800 iterations no higher (0.910 and
    0.871, 0.855 and 0.869). A method that stops learning scores near chance (0.5–0.6)."""
    target = optimum(task, *LEVELS[method])
    assert results[method] >= 0.90 * target, (method, results[method], target)


def test_the_task_is_bilevel_and_bilevel_methods_beat_single_level_ones(task, results):
    both = optimum(task, True, True)
    assert both > optimum(task, False, True) + 0.05 and both > optimum(task, True, False) + 0.05
    for method in ("asyndbt", "sync", "cendbt"):
        assert results[method] > results["demos-only"] + 0.05, results
        assert results[method] > results["bdpl"] + 0.05, results
