"""Prompt rendering (the paper's six templates and user templates) and the feedback
adapter's bookkeeping, on a deterministic scorer (the real backends are tested in
test_llm_local.py and test_llm_openai.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asyndbt_jax.llm import (CONTENT_FREE, FITTED_TEMPLATES, NO_DEMONSTRATION, PAPER_TEMPLATES, LLMFeedback, PromptTask,
                             Template, calibrate)
from asyndbt_jax.selection import Configuration

FIELDS = {"S1": "the cat sat", "S2": "a cat was sitting", "WORD1": "PDCP", "WORD2": "RLC", "TEXT": "layer 2"}


@pytest.mark.parametrize("name", sorted(PAPER_TEMPLATES))
def test_paper_templates_render_as_the_paper_writes_them(name):
    t = PAPER_TEMPLATES[name]
    prefix, texts = t.render([(FIELDS, 0), (FIELDS, 1)], ["alpha", "beta"], [FIELDS, FIELDS])
    full = prefix + texts[0]
    blocks = full.split(t.separator)
    assert len(blocks) == 3
    for block, answer in zip(blocks, t.answers):
        assert block.endswith(f'Note: alpha beta.\nAnswer: {answer}')
    assert blocks[2].endswith("Note: alpha beta.\nAnswer:")
    assert 'Respond ONLY with "' in blocks[2]
    for slot in t.slots:
        assert FIELDS[slot] in blocks[2]
    assert texts[0] == texts[1]  # the same example twice: same query text
    assert t.label_words == tuple(" " + a for a in t.answers)


def test_sst2_text_exactly():
    t = PAPER_TEMPLATES["sst2"]
    prefix, (q,) = t.render([({"S1": "dull"}, 0)], ["w"], [{"S1": "a joy"}])
    assert prefix + q == (
        'How is the sentiment of the sentence "dull"? Respond ONLY with "Great" or "Terrible". Note: w.\n'
        'Answer: Terrible\n\nHow is the sentiment of the sentence "a joy"? Respond ONLY with "Great" or '
        '"Terrible". Note: w.\nAnswer:'
    )
    assert q.startswith('a joy"?')  # everything before the query's text is shared


def test_empty_fragment_drops_the_note_and_header_fragment_is_shared():
    t = PAPER_TEMPLATES["cola"]
    prefix, (q,) = t.render([], [], [{"S1": "x"}])
    assert "Note" not in prefix + q and (prefix + q).endswith('correct? Respond ONLY with "Yes" or "No".\nAnswer:')
    u = Template("Review: {S1}", answers=("bad", "good"), header="Judge reviews. {note}")
    prefix, (q,) = u.render([({"S1": "meh"}, 0)], ["tone", "", "care"], [{"S1": "wow"}])
    assert prefix == "Judge reviews. Note: tone care.\n\nReview: meh\nAnswer: bad\n\nReview: "
    assert q == "wow\nAnswer:"


@pytest.mark.parametrize("kwargs, match", [
    (dict(block="no query here {note}", answers=("a", "b")), "no query slot"),
    (dict(block="{S1}", answers=("a",)), "at least 2"),
    (dict(block="{S1}", answers=("a", "a")), "must differ"),
    (dict(block="{S1}", answers=("a", " ")), "must not be empty"),
    (dict(block="{S1", answers=("a", "b")), "malformed"),
    (dict(block="{S1}", answers=("a", "b"), header="{S1}"), "header may only"),
])
def test_bad_templates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Template(**kwargs)


def test_missing_field_and_bad_demo_label():
    t = PAPER_TEMPLATES["mrpc"]
    with pytest.raises(ValueError, match="no field 'S2'"):
        t.render([], [], [{"S1": "only one"}])
    with pytest.raises(ValueError, match="outside 0..1"):
        t.render([(FIELDS, 2)], [], [FIELDS])


class HashScorer:
    """Deterministic label log-probs from the prompt text (stands in for a model)."""

    def __init__(self):
        self.prompts = []

    def score(self, prefix, queries, labels, cache=None):
        out = []
        for q in queries:
            self.prompts.append(prefix + q)
            rng = np.random.default_rng(abs(hash(prefix + q)) % 2**32)
            raw = rng.normal(size=len(labels))
            out.append(raw - np.logaddexp.reduce(raw))
        return np.array(out)


def _task():
    examples = [{"S1": f"review {i}"} for i in range(6)]
    return PromptTask(PAPER_TEMPLATES["sst2"], examples, np.array([0, 1, 0, 1, 0, 1]),
                      candidates=np.array([[0, 2], [1, 3]]), vocabulary=["a", "b", "c"])


def test_adapter_losses_are_cross_entropy_of_the_true_label():
    task = _task()
    scorer = HashScorer()
    fb = LLMFeedback(task, scorer)
    frag = np.array([[[0, 1], [2, -1]], [[0, 1], [0, 1]]])
    demos = np.array([[[0, 1], [1, -1]], [[0, 1], [0, 1]]])
    queries = np.array([[4, 5, 4], [5, 4, 5]])
    losses, correct = fb.host(frag, demos, queries)
    assert losses.shape == correct.shape == (2, 2, 3)
    for r in range(2):
        for i in range(2):
            prefix, texts = task.render(demos[r, i], frag[r, i], queries[r])
            lp = HashScorer().score(prefix, texts, task.template.label_words)
            y = task.labels[queries[r]]
            np.testing.assert_allclose(losses[r, i], -lp[np.arange(3), y], rtol=1e-6)
            np.testing.assert_array_equal(correct[r, i], lp.argmax(1) == y)
    # a configuration repeated within one call is scored once
    assert len(scorer.prompts) == 3 * 3
    assert "review 3" not in task.render([1, -1], [2], [4])[0]  # -1: no demonstration of class 1
    assert fb.configurations == 4 and fb.prompts == 12


def test_adapter_under_jit_and_vmap_matches_the_host_call():
    fb = LLMFeedback(_task(), HashScorer())
    config = Configuration(fragment_words=jnp.array([[[0, 1]], [[2, 2]]]), demos=jnp.array([[[0, 1]], [[1, 0]]]))
    queries = jnp.array([[4, 5], [5, 4]])
    host = fb.host(config.fragment_words, config.demos, queries)
    out = jax.jit(fb)(config, queries)
    np.testing.assert_allclose(out.losses, host[0])
    batched = jax.vmap(fb, in_axes=(Configuration(0, 0), 0))(
        jax.tree.map(lambda a: a[None], config), queries[None])
    np.testing.assert_allclose(batched.losses[0], host[0])


def test_prompt_task_validation():
    t = PAPER_TEMPLATES["sst2"]
    ex = [{"S1": "x"}, {"S1": "y"}]
    with pytest.raises(ValueError, match="has label"):
        PromptTask(t, ex, np.array([0, 1]), candidates=np.array([[1], [0]]), vocabulary=["w"])
    with pytest.raises(ValueError, match=r"shape \[U=2, V\]"):
        PromptTask(t, ex, np.array([0, 1]), candidates=np.array([[0, 1]]), vocabulary=["w"])
    with pytest.raises(ValueError, match="fields"):
        PromptTask(t, [{"S2": "x"}, {"S2": "y"}], np.array([0, 1]), candidates=np.array([[0], [1]]), vocabulary=["w"])
    with pytest.raises(ValueError, match="vocabulary is empty"):
        PromptTask(t, ex, np.array([0, 1]), candidates=np.array([[0], [1]]), vocabulary=[])
    fb = LLMFeedback(PromptTask(t, ex, np.array([0, 1]), candidates=np.array([[0], [1]]), vocabulary=["w"]), HashScorer())
    with pytest.raises(ValueError, match="point into"):
        fb.host(np.zeros((1, 1, 1), int), np.zeros((1, 1, 2), int), np.array([[5]]))


def test_only_the_replied_workers_are_scored():
    """The engine passes the arrived workers to the feedback: an LLM backend asks nothing
    for the others (their rows are ignored)."""
    from asyndbt_jax.engine import init_state, method_config, worker_reply

    task = _task()
    scorer = HashScorer()
    fb = LLMFeedback(task, scorer)
    losses, correct = fb.host(np.zeros((2, 1, 2), int), np.zeros((2, 1, 2), int), np.array([[4, 5], [4, 5]]),
                              active=np.array([False, True]))
    assert len(scorer.prompts) == 2 and not losses[0].any() and not correct[0].any() and losses[1].all()

    config = method_config("asyndbt", num_workers=3, num_active=2, max_staleness=4, num_fragment_words=2,
                           vocab_size=3, num_classes=2, num_candidates=2, num_samples=2)
    state = init_state(config, jax.random.key(0))
    fb = LLMFeedback(task, HashScorer())
    replied = jnp.array([True, False, True])
    queries = jnp.array([[4, 5], [5, 4], [4, 4]])
    new, _ = jax.jit(worker_reply, static_argnums=(0, 1))(config, fb, state.workers, 0.0, replied, queries,
                                                          jax.random.key(1), jnp.zeros(3, bool))
    assert fb.configurations == 2 * 2  # two replied workers × I = 2, none for worker 1
    np.testing.assert_array_equal(new.selection.demo_probs[1], state.workers.selection.demo_probs[1])


def test_status_reports_prompts_and_the_cache_hit_rate(tmp_path):
    from asyndbt_jax.llm import ResponseCache

    task = _task()

    class CachingHashScorer(HashScorer):
        def score(self, prefix, queries, labels, cache=None):
            cache.get("hash", "m", [prefix + q for q in queries], labels)  # counts misses
            return super().score(prefix, queries, labels)

    fb = LLMFeedback(task, CachingHashScorer(), cache=ResponseCache(tmp_path / "r.sqlite"))
    assert fb.status() == "prompts=0"
    fb.host(np.zeros((1, 1, 1), int), np.zeros((1, 1, 2), int), np.array([[4, 5]]))
    assert fb.status() == "prompts=2 cache=0%"


def test_a_query_with_empty_text_at_the_end_of_the_block_renders():
    t = FITTED_TEMPLATES["sst2"]
    prefix, (empty, full) = t.render([({"S1": "dull"}, 0)], [], [{"S1": ""}, {"S1": "a joy"}])
    assert prefix == "Review: dull\nSentiment: negative\n\nReview: "
    assert empty == "\nSentiment:" and full == "a joy\nSentiment:"


def test_fitted_sentiment_template_puts_the_fragment_once_in_the_header():
    t = FITTED_TEMPLATES["sst2"]
    prefix, (q,) = t.render([({"S1": "dull"}, 0), ({"S1": "fun"}, 1)], ["tone", "care"], [{"S1": "a joy"}])
    assert prefix + q == ("Note: tone care.\n\nReview: dull\nSentiment: negative\n\nReview: fun\nSentiment: positive"
                          "\n\nReview: a joy\nSentiment:")
    assert t.label_words == (" negative", " positive")


def _numpy_calibration(logp, content_free):
    """Zhao et al. (2021) as written: p_cal ∝ p / mean_c p_cf(c), per label."""
    p, p_cf = np.exp(logp), np.exp(content_free).mean(axis=0)
    q = p / p_cf
    return q / q.sum(axis=-1, keepdims=True)


def test_calibration_matches_the_numpy_reference_and_removes_a_constant_bias():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(5, 3))
    logp = raw - np.logaddexp.reduce(raw, axis=-1, keepdims=True)
    cf_raw = rng.normal(size=(2, 3))
    content_free = cf_raw - np.logaddexp.reduce(cf_raw, axis=-1, keepdims=True)
    np.testing.assert_allclose(np.exp(calibrate(logp, content_free)), _numpy_calibration(logp, content_free), rtol=1e-10)
    # a prompt that adds the same bias b to every answer's logit (its content-free input's
    # too) is undone exactly with one content-free input
    bias = np.array([2.0, 0.0, -1.0])
    skew = lambda x: (x + bias) - np.logaddexp.reduce(x + bias, axis=-1, keepdims=True)  # noqa: E731
    one = content_free[:1]
    np.testing.assert_allclose(calibrate(skew(logp), skew(one)), calibrate(logp, one), atol=1e-12)
    # uniform content-free answers change nothing
    np.testing.assert_allclose(calibrate(logp, np.log(np.full((2, 3), 1 / 3))), logp, atol=1e-12)


def test_calibrated_feedback_asks_the_content_free_inputs_on_the_same_prefix():
    task = _task()
    scorer = HashScorer()
    fb = LLMFeedback(task, scorer, calibrate=True)
    demos, frag, queries = np.array([[[0, 1]]]), np.array([[[0, 1]]]), np.array([[4, 5]])
    losses, correct = fb.host(frag, demos, queries)
    prefix, texts = task.render(demos[0, 0], frag[0, 0], queries[0], task.content_free())
    assert len(texts) == 2 + len(CONTENT_FREE) and all(p.startswith(prefix) for p in scorer.prompts)
    assert any("N/A" in p for p in scorer.prompts) and any("[MASK]" in p for p in scorer.prompts)
    lp = HashScorer().score(prefix, texts, task.template.label_words)
    expected = calibrate(lp[:2], lp[2:])
    y = task.labels[queries[0]]
    np.testing.assert_allclose(losses[0, 0], -expected[np.arange(2), y], rtol=1e-6)
    np.testing.assert_array_equal(correct[0, 0], expected.argmax(1) == y)
    assert fb.prompts == 2 + len(CONTENT_FREE)  # the content-free inputs are prompts the user pays for
    raw_losses, _ = LLMFeedback(task, HashScorer()).host(frag, demos, queries)
    assert not np.allclose(raw_losses, losses)


def test_k_demonstrations_per_class_fill_class_interleaved_slots():
    examples = [{"S1": f"review {i}"} for i in range(8)]
    task = PromptTask(FITTED_TEMPLATES["sst2"], examples, np.array([0, 1] * 4),
                      candidates=np.array([[0, 2, 4], [1, 3, 5]]), vocabulary=[""], demos_per_class=2)
    assert task.num_slots == 4
    prefix, _ = task.render([2, 0, 1, 2], [], [6])  # slots: class 0, class 1, class 0, class 1
    shown = [b.split("\n")[0] for b in prefix.split("\n\n")[:-1]]
    assert shown == ["Review: review 4", "Review: review 1", "Review: review 2", "Review: review 5"]
    assert prefix.count("negative") == 2 and prefix.count("positive") == 2
    prefix, _ = task.render([1, 0, 1, -1], [], [6])  # a candidate drawn twice is shown once; -1 shows none
    assert [b.split("\n")[0] for b in prefix.split("\n\n")[:-1]] == ["Review: review 2", "Review: review 1"]
    with pytest.raises(ValueError, match="demos_per_class must be an integer between 1 and the 3"):
        PromptTask(FITTED_TEMPLATES["sst2"], examples, np.array([0, 1] * 4), candidates=np.array([[0, 2, 4], [1, 3, 5]]),
                   vocabulary=[""], demos_per_class=4)


def test_the_no_demonstration_candidate_leaves_its_slot_empty():
    examples = [{"S1": f"review {i}"} for i in range(6)]
    task = PromptTask(FITTED_TEMPLATES["sst2"], examples, np.array([0, 1] * 3),
                      candidates=np.array([[NO_DEMONSTRATION, 0, 2], [NO_DEMONSTRATION, 1, 3]]), vocabulary=[""])
    assert task.render([0, 0], [], [4]) == task.render([-1, -1], [], [4])  # the manual prompt
    assert task.render([0, 0], [], [4])[0] == "Review: "
    prefix, _ = task.render([2, 0], [], [4])
    assert prefix == "Review: review 2\nSentiment: negative\n\nReview: "
    with pytest.raises(ValueError, match="point into examples"):
        PromptTask(FITTED_TEMPLATES["sst2"], examples, np.array([0, 1] * 3), candidates=np.array([[-2, 0], [1, 3]]),
                   vocabulary=[""])
