"""The local LLM layer on the embedded gemma-3-270m: loading and its dense cache, the three
scoring modes agreeing, bad input, and the response cache."""

import multiprocessing

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from asyndbt_jax.llm import LocalScorer, ResponseCache, load_causal_lm  # noqa: E402

INSTRUCTION = "Classify the sentiment of each movie review as positive or negative."
PREFIX = (
    f"{INSTRUCTION}\n\nReview: A warm, funny and beautifully acted film.\nSentiment: positive\n\n"
    "Review: Dull, predictable and far too long.\nSentiment: negative\n\n"
    "Note: weigh the overall tone of the text rather than single words.\n\n"
)
QUERIES = [
    "Review: An absolute delight from start to finish.\nSentiment:",
    "Review: I fell asleep halfway through this boring mess.\nSentiment:",
    "Review: Gorgeous visuals and a moving soundtrack.\nSentiment:",
]


@pytest.fixture(scope="module")
def scorer():
    torch.set_num_threads(2)
    return LocalScorer(load_causal_lm("gemma3-270m"))


@pytest.mark.slow
def test_the_first_load_reads_the_gguf_and_the_dense_cache_gives_identical_logits(tmp_path, monkeypatch):
    """On a fresh cache the first load dequantises the GGUF file and writes dense weights; the
    second load reads those and computes the same logits bit for bit. (SmolLM2: the same
    loader, dequantised in 40 s where gemma takes 100 s; gemma's own dense cache is written
    by whichever test loads it first.)"""
    monkeypatch.setenv("ASYNDBT_CACHE", str(tmp_path))
    stale = tmp_path / "models" / "smollm2-135m"  # what a crash before the marker leaves
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{half written")
    first = load_causal_lm("smollm2-135m")
    assert first.source == "gguf" and (stale / ".complete").exists()
    assert not list(stale.parent.glob("*.tmp*")), "the per-process build folder is left behind"
    again = load_causal_lm("smollm2-135m")
    assert again.source == "cache"
    ids = torch.tensor([first.tokenizer(PREFIX + QUERIES[0])["input_ids"]])
    with torch.inference_mode():
        assert torch.equal(first.model(input_ids=ids).logits, again.model(input_ids=ids).logits)


@pytest.mark.slow
@pytest.mark.parametrize("labels", [(" positive", " negative"), (" thumbs up", " thumbs down", " meh")])
def test_modes_agree_and_the_prefix_cache_is_not_mutated(scorer, labels):
    naive = scorer.score(PREFIX, QUERIES, labels, mode="naive")
    padded = scorer.score(PREFIX, QUERIES, labels, mode="padded")
    shared = scorer.score(PREFIX, QUERIES, labels)
    assert naive.shape == (len(QUERIES), len(labels))
    np.testing.assert_allclose(np.exp(naive).sum(1), 1.0, atol=1e-9)
    assert np.abs(naive - padded).max() <= 1e-4 and np.abs(naive - shared).max() <= 1e-4
    np.testing.assert_array_equal(shared, scorer.score(PREFIX, QUERIES, labels))
    if len(labels) == 2:  # the model does read the reviews: clear cases go the right way
        assert naive[0].argmax() == 0 and naive[1].argmax() == 1


@pytest.mark.slow
def test_label_tokens_sum_over_a_multi_token_label(scorer):
    """Against a hand-made teacher-forced sum of the label's tokens' log-probs."""
    labels = (" thumbs up", " thumbs down")
    got = scorer.score(PREFIX, QUERIES[:1], labels)
    tok = scorer.tokenizer
    prompt = tok(PREFIX)["input_ids"] + tok(QUERIES[0], add_special_tokens=False)["input_ids"]
    raw = []
    with torch.inference_mode():
        for label in labels:
            t = tok(label, add_special_tokens=False)["input_ids"]
            logp = torch.log_softmax(scorer.model(input_ids=torch.tensor([prompt + t])).logits[0].double(), -1)
            raw.append(sum(float(logp[len(prompt) - 1 + j, tid]) for j, tid in enumerate(t)))
    want = np.asarray(raw) - np.logaddexp.reduce(raw)
    np.testing.assert_allclose(got[0], want, atol=1e-4)


@pytest.mark.slow
def test_bad_input_is_a_clear_error(scorer, monkeypatch):
    with pytest.raises(ValueError, match="same tokens"):
        scorer.score(PREFIX, QUERIES, (" positive", " positive"))
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        scorer.score(PREFIX, QUERIES, (" positive", ""))
    with pytest.raises(ValueError, match="at least 2 label"):
        scorer.score(PREFIX, QUERIES, (" positive",))
    with pytest.raises(ValueError, match="mode must be"):
        scorer.score(PREFIX, QUERIES, (" positive", " negative"), mode="fast")
    monkeypatch.setattr(scorer, "context_window", 40)
    with pytest.raises(ValueError, match=r"prompt too long .* > context window 40"):
        scorer.score(PREFIX, QUERIES, (" positive", " negative"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_causal_lm("/nonexistent/model.gguf")
    with pytest.raises(ValueError, match="not a .gguf"):
        load_causal_lm(__file__)


@pytest.mark.slow
def test_a_rerun_makes_no_model_call_and_duplicates_run_once(scorer, tmp_path):
    cache = ResponseCache(tmp_path / "responses.sqlite")
    labels = (" positive", " negative")
    calls = scorer.forward_calls
    first = scorer.score(PREFIX, QUERIES + QUERIES[:1], labels, cache=cache)
    assert scorer.forward_calls - calls == 2  # the prefix, then one batch of the 3 distinct queries
    np.testing.assert_array_equal(first[0], first[3])
    assert (cache.hits, cache.misses, len(cache)) == (0, 4, 3)
    calls = scorer.forward_calls
    again = scorer.score(PREFIX, QUERIES, labels, cache=ResponseCache(tmp_path / "responses.sqlite"))
    assert scorer.forward_calls == calls
    np.testing.assert_array_equal(again, first[:3])


def _writer(path, worker):
    cache = ResponseCache(path)
    for i in range(40):
        cache.put("local", "m", [f"prompt {worker} {i}"], ["a", "b"], np.array([[-0.1 * worker, -float(i)]]))


def test_response_cache_takes_concurrent_writers(tmp_path):
    path = tmp_path / "shared.sqlite"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    cache = ResponseCache(path)
    assert len(cache) == 160
    got = cache.get("local", "m", ["prompt 3 7", "prompt 9 9"], ["a", "b"])
    np.testing.assert_array_equal(got[0], [-0.30000000000000004, -7.0])
    assert got[1] is None and (cache.hits, cache.misses) == (1, 1)
    assert cache.get("local", "m", ["prompt 3 7"], ["b", "a"]) == [None]  # the label words are part of the key
    with pytest.raises(ValueError, match="shape"):
        cache.put("local", "m", ["p"], ["a", "b"], np.zeros((1, 3)))


@pytest.mark.slow
def test_llm_feedback_on_gemma_with_the_paper_template(scorer, tmp_path):
    """Sampled configurations → the paper's SST-2 prompts → gemma → losses, inside jit as
    the engine calls it; a rerun is free. (gemma-3-270m is near chance on this template:
    only the bookkeeping is checked, not its accuracy.)"""
    import jax
    import jax.numpy as jnp

    from asyndbt_jax.llm import PAPER_TEMPLATES, LLMFeedback, PromptTask
    from asyndbt_jax.selection import Configuration

    reviews = ["A warm, funny and beautifully acted film.", "Dull, predictable and far too long.",
               "An absolute delight from start to finish.", "I fell asleep halfway through this boring mess.",
               "Gorgeous visuals and a moving soundtrack.", "Two hours of my life I will never get back."]
    task = PromptTask(PAPER_TEMPLATES["sst2"], [{"S1": r} for r in reviews], np.array([1, 0, 1, 0, 1, 0]),
                      candidates=np.array([[1, 5], [0, 4]]), vocabulary=["tone", "overall", "judge", "review"])
    fb = LLMFeedback(task, scorer, cache=ResponseCache(tmp_path / "r.sqlite"))
    config = Configuration(fragment_words=jnp.array([[[0, 1, 2], [3, -1, -1]]]), demos=jnp.array([[[0, 0], [1, 1]]]))
    queries = jnp.array([[2, 3]])
    out = jax.jit(fb)(config, queries)
    assert out.losses.shape == (1, 2, 2) and bool(jnp.all(out.losses > 0))
    np.testing.assert_array_equal(out.correct, out.losses < np.log(2))  # binary: right iff p(true) > 1/2
    calls = scorer.forward_calls
    again = fb.host(config.fragment_words, config.demos, queries)
    assert scorer.forward_calls == calls and fb.cache.hits == 4
    np.testing.assert_array_equal(again[0], np.asarray(out.losses))
