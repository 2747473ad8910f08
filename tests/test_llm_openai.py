"""The OpenAI backend against a real OpenAI-compatible server: llama.cpp's server
(llama-cpp-python) on 127.0.0.1 serving the SmolLM2 GGUF, with a fault-injecting proxy in
front for the retry test. No mock anywhere."""

import asyncio
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asyndbt_jax.llm import LLMFeedback, OpenAIScorer, PromptTask, ResponseCache, Template
from asyndbt_jax.llm.openai_backend import BudgetExceeded
from asyndbt_jax.selection import Configuration

from llm_servers import FaultProxy, LlamaServer, smollm2_gguf

pytestmark = pytest.mark.slow

PREFIX = "Classify each movie review as positive or negative.\n\n"
REVIEWS = ["a moving, beautifully acted film", "dull, predictable and far too long", "I loved every minute",
           "a boring mess", "gorgeous and funny", "the worst film of the year", "a triumph", "tedious and empty"]
QUERIES = [f"Review: {r}\nSentiment:" for r in REVIEWS]
LABELS = [" negative", " positive"]


@pytest.fixture(scope="module")
def server():
    with LlamaServer(smollm2_gguf()) as srv:
        yield srv


def scorer(base_url, **kw):
    kw.setdefault("backoff", (0.01, 0.05))
    return OpenAIScorer("smollm2", base_url=base_url, **kw)


def test_label_logprobs_match_the_model_run_in_process(server):
    """The server's top-k label log-probs, renormalised, equal those of the same GGUF run
    in process by llama.cpp's Python API (the next-token distribution after the prompt)."""
    import llama_cpp

    s = scorer(server.base_url, top_logprobs=20)
    queries = [QUERIES[b] for b in (0, 1, 3)]  # (in QUERIES[2], " negative" is not among the top 20)
    got = s.score(PREFIX, queries, LABELS)
    assert got.shape == (3, 2)
    assert np.allclose(np.exp(got).sum(1), 1.0)
    assert s.stats.calls == 3 and s.stats.prompt_tokens > 0 and s.stats.completion_tokens == 3

    assert s.stats.floored == 0, "both labels should be in the top 20 for these prompts"
    llm = llama_cpp.Llama(str(smollm2_gguf()), n_ctx=512, logits_all=True, verbose=False)
    label_ids = [llm.tokenize(lab.encode(), add_bos=False, special=False) for lab in LABELS]
    assert all(len(t) == 1 for t in label_ids)
    for b, q in enumerate(queries):
        llm.reset()
        llm.eval(llm.tokenize((PREFIX + q).encode(), add_bos=True, special=False))
        logits = np.asarray(llm.scores[llm.n_tokens - 1], np.float64)
        raw = logits[[t[0] for t in label_ids]]
        expected = raw - np.logaddexp.reduce(raw)
        np.testing.assert_allclose(got[b], expected, atol=2e-3)


def test_cache_makes_a_rerun_free_and_dry_run_projects(server, tmp_path):
    cache = ResponseCache(tmp_path / "r.sqlite")
    first = scorer(server.base_url)
    a = first.score(PREFIX, QUERIES + QUERIES[:2], LABELS, cache=cache)  # 2 duplicates: asked once
    assert len(QUERIES) <= first.stats.calls <= len(QUERIES) + 1  # + a one-off echo check, if a label was missing
    again = scorer(server.base_url)
    b = again.score(PREFIX, QUERIES, LABELS, cache=cache)
    assert again.stats.calls == 0 and cache.hits == len(QUERIES)
    np.testing.assert_array_equal(a[: len(QUERIES)], b)

    dry = scorer(server.base_url, dry_run=True)
    new = [q.replace("Review:", "Film review:") for q in QUERIES]
    out = dry.score(PREFIX, new + QUERIES, LABELS, cache=cache)
    assert dry.stats.calls == 0 and dry.stats.projected_calls == len(new)
    np.testing.assert_allclose(out[: len(new)], np.log(0.5))
    assert f"{len(new)} calls" in dry.projection()
    task = PromptTask(Template("Review: {S1}", answers=("negative", "positive"), cue="\nSentiment:"),
                      [{"S1": r} for r in REVIEWS], np.array([1, 0] * 4), np.array([[1], [0]]), ["w"])
    fb = LLMFeedback(task, scorer(server.base_url, dry_run=True))
    fb.host(np.zeros((2, 3, 1), int), np.zeros((2, 3, 2), int), np.array([[0, 1], [2, 3]]))
    assert fb.scorer.stats.calls == 0 and "dry run on smollm2@" in fb.summary() and "4 calls" in fb.summary()


@pytest.mark.parametrize("concurrency", [1, 4])
def test_budget_stops_cleanly_and_keeps_what_was_paid_for(server, tmp_path, concurrency):
    cache = ResponseCache(tmp_path / "r.sqlite")
    s = scorer(server.base_url, max_calls=3, concurrency=concurrency)
    with pytest.raises(BudgetExceeded, match="max_calls=3"):
        s.score(PREFIX, QUERIES, LABELS, cache=cache)
    assert s.stats.calls == 3
    kept = len(cache)
    assert kept >= 2  # every prompt answered before the stop is in the cache
    rest = scorer(server.base_url)
    rest.score(PREFIX, QUERIES, LABELS, cache=cache)
    assert cache.hits == kept and len(cache) == len(QUERIES)


def test_faults_are_retried_to_the_same_answers(server):
    """10 % of the requests fail (429, 500, a stall past the timeout, a body that is not
    JSON, in turn): the scores equal the fault-free ones and every fault cost one retry."""
    queries = [f"Review: film number {i} was {'great' if i % 2 else 'awful'}\nSentiment:" for i in range(40)]
    clean = scorer(server.base_url, concurrency=4).score(PREFIX, queries, LABELS)
    with FaultProxy(server.base_url, rate=0.1, stall_s=6.0) as proxy:
        s = scorer(proxy.base_url, concurrency=4, timeout=3.0)
        noisy = s.score(PREFIX, queries, LABELS)
    assert all(n >= 1 for n in proxy.faults.values()), proxy.faults
    assert s.stats.retries == proxy.total_faults
    np.testing.assert_array_equal(noisy, clean)


def test_unreachable_endpoint_is_a_clear_error():
    s = OpenAIScorer("m", base_url="http://127.0.0.1:9/v1", max_retries=1, backoff=(0.01, 0.01), timeout=2.0)
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="cannot reach http://127.0.0.1:9/v1 after 2 attempts"):
        s.score("p", ["q"], LABELS)
    assert time.monotonic() - start < 30


def test_chat_api_and_first_token_fallback(server):
    """Chat completions with top_logprobs; " Terrible" is two SmolLM2 tokens (" Ter" "rible"),
    so without trustworthy echo it is scored by the top tokens that begin it."""
    s = scorer(server.base_url, api="chat", top_logprobs=10)
    out = s.score(PREFIX, QUERIES[:3], [" Terrible", " Great"])
    assert out.shape == (3, 2) and np.isfinite(out).all()
    assert s.stats.first_token + s.stats.floored + s.stats.echoed >= 1
    comp = scorer(server.base_url, top_logprobs=10)
    comp.score(PREFIX, QUERIES[:3], [" Terrible", " Great"])
    assert comp.stats.echoed == 0 and comp.echo_supported is False  # llama-cpp-python's echo fails the check


def test_scoring_inside_a_running_event_loop(server):
    async def inside():
        return scorer(server.base_url).score(PREFIX, QUERIES[:2], LABELS)

    assert asyncio.run(inside()).shape == (2, 2)


def test_llm_feedback_end_to_end_under_jit(server, tmp_path):
    """Sampled configurations → prompts → the real server → losses and correctness, called
    inside jit as the engine does."""
    examples = [{"S1": r} for r in REVIEWS]
    labels = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    task = PromptTask(Template("Review: {S1}\n{note}", answers=("negative", "positive"), cue="\nSentiment:"),
                      examples, labels, candidates=np.array([[1, 3], [0, 2]]), vocabulary=["tone", "overall", "words"])
    cache = ResponseCache(tmp_path / "r.sqlite")
    fb = LLMFeedback(task, scorer(server.base_url), cache=cache)
    config = Configuration(fragment_words=jnp.array([[[0, 1], [2, -1]]]), demos=jnp.array([[[0, 1], [1, -1]]]))
    queries = jnp.array([[4, 5, 6]])
    out = jax.jit(fb)(config, queries)
    assert out.losses.shape == (1, 2, 3) and out.losses.dtype == jnp.float32 and out.correct.dtype == jnp.bool_
    assert bool(jnp.all(out.losses > 0))
    direct = fb.host(config.fragment_words, config.demos, queries)
    np.testing.assert_allclose(direct[0], out.losses)
    assert fb.scorer.stats.calls > 0 and cache.hits >= 6  # the second call was answered from the cache
    assert "cache" in fb.summary()
