"""FedDTPT's client (asyndbt_jax/feddtpt/client.py): parsing, the instruction and its feedback
history, the random-replacement ablation, retries on proposer garbage, and the proposers."""

import http.server
import json
import threading
from typing import ClassVar

import numpy as np
import pytest

from asyndbt_jax.feddtpt import (
    ClientConfig,
    OpenAIProposer,
    answer_tokens,
    build_instruction,
    client_round,
    parse_candidates,
    random_edit,
    task_description,
    vocabulary_words,
    words_of,
)
from asyndbt_jax.llm import PAPER_TEMPLATES

PLANTED = ("alpha", "beta", "gamma")


def planted_accuracy(words) -> float:
    """A stand-in for the LLM: accuracy grows with the planted words the prompt holds."""
    return (1 + sum(w in words for w in PLANTED)) / 4


class ScriptedProposer:
    """Answers with a fixed script (one answer per call, the last repeated); records instructions
    and seeds. An ``Exception`` in the script is raised instead."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.instructions, self.seeds, self.max_tokens = [], [], []

    def __call__(self, instruction, *, seed, max_tokens):
        self.instructions.append(instruction)
        self.seeds.append(seed)
        self.max_tokens.append(max_tokens)
        answer = self.answers[min(len(self.seeds) - 1, len(self.answers) - 1)]
        if isinstance(answer, Exception):
            raise answer
        return answer


def current_note(instruction: str):
    line = next(l for l in instruction.splitlines() if l.startswith("Current note:"))
    return () if "(empty)" in line else words_of(line.split(":", 1)[1])


class PlantingProposer:
    """Proposes the current note plus each planted word it lacks (deterministic)."""

    def __init__(self):
        self.instructions = []

    def __call__(self, instruction, *, seed, max_tokens):
        self.instructions.append(instruction)
        note = current_note(instruction)
        lines = ["Here are some notes:"] + [f'{k + 1}. "{" ".join(note + (w,))}"' for k, w in
                                           enumerate(p for p in PLANTED if p not in note)]
        return "\n".join(lines + ["I hope this helps!!! :)"])


# ----------------------------------------------------------------------------- parsing


def test_parse_candidates_strips_numbering_labels_quotes_and_rejects_prose():
    answer = (
        'Sure! Here are 4 new notes:\n'
        '1. "Focus on the tone, not the plot."\n'
        '2) Note: weigh adjectives\n'
        '- **Note 3:** look at the ending\n'
        '"Read the text" accuracy 60%\n'
        '4. focus on the tone not the plot\n'  # case differs from line 1: another prompt
        '\n'
        'This is a long piece of prose that rambles on far beyond what any note could ever hold in twenty words.\n'
        '### ???\n'
    )
    assert parse_candidates(answer, 10) == [
        ("Focus", "on", "the", "tone", "not", "the", "plot"),
        ("weigh", "adjectives"),
        ("look", "at", "the", "ending"),
        ("Read", "the", "text"),
        ("focus", "on", "the", "tone", "not", "the", "plot"),
    ]


@pytest.mark.parametrize("garbage", ["", "   \n\n", "Here you go:", "!!! ??? ...", "1.\n2.\n3.", None, "```\n```"])
def test_parse_candidates_finds_nothing_in_garbage(garbage):
    assert parse_candidates(garbage or "", 10) == []


def test_parse_candidates_cuts_to_max_length_but_rejects_over_twice():
    assert parse_candidates("a b c d e f", 4) == [("a", "b", "c", "d")]
    assert parse_candidates("a b c d e f g h i", 4) == []


def test_words_and_vocabulary_words():
    assert words_of("Don't over-think it, café!") == ("Don't", "over-think", "it", "café")
    assert vocabulary_words(["not only", "great", "only", "a film"]) == ("not", "only", "great", "a", "film")


def test_task_description_shows_slots_and_no_note():
    text = task_description(PAPER_TEMPLATES["mrpc"])
    assert "[S1]" in text and "[S2]" in text and "note" not in text.lower() and "{" not in text


# ----------------------------------------------------------------------------- instruction


def test_instruction_shows_recent_distinct_history_best_last_and_only_with_feedback():
    history = ((("a",), 0.5), (("b",), 0.9), (("c",), 0.3), (("a",), 0.7), (("d",), 0.6))
    text = build_instruction("Q?", ("cur", "rent"), history, num_candidates=3, max_length=5, history_size=3)
    assert 'Current note: "cur rent"' in text and "Write 3 new notes" in text and "Q?" in text
    shown = [l for l in text.splitlines() if "accuracy" in l and l.startswith('"')]
    # the last 3 distinct prompts (c, a with its latest accuracy, d), sorted by accuracy
    assert shown == ['"c" accuracy 30%', '"d" accuracy 60%', '"a" accuracy 70%']
    plain = build_instruction("Q?", ("cur", "rent"), history, num_candidates=3, max_length=5, feedback=False)
    assert "accuracy" not in plain and "Earlier" not in plain
    assert "Current note: (empty)" in build_instruction("Q?", (), (), num_candidates=1, max_length=5)


# ----------------------------------------------------------------------------- one round


def test_feedback_round_sends_history_and_keeps_the_best():
    proposer = PlantingProposer()
    config = ClientConfig(num_candidates=3, max_length=6)
    first = client_round(config, ("be", "careful"), (), planted_accuracy, proposer=proposer, seed=1)
    assert first.candidates[0] == ("be", "careful") and len(first.candidates) == 4
    assert first.prompt == ("be", "careful", "alpha") and first.accuracy == 0.5  # first of the tied best
    assert first.history == ((("be", "careful", "alpha"), 0.5),)
    assert (first.proposer_calls, first.parse_failures, first.skipped) == (1, 0, 0)
    assert "Earlier notes" not in proposer.instructions[0]

    second = client_round(config, first.prompt, first.history, planted_accuracy, proposer=proposer, seed=2)
    assert '"be careful alpha" accuracy 50%' in proposer.instructions[1]
    assert second.prompt == ("be", "careful", "alpha", "beta") and second.accuracy == 0.75
    assert len(second.history) == 2


def test_no_feedback_round_never_shows_history():
    proposer = PlantingProposer()
    config = ClientConfig(kind="no-feedback", num_candidates=2)
    history = (((("x",)), 0.4),)
    out = client_round(config, ("x",), history, planted_accuracy, proposer=proposer, seed=0)
    assert "accuracy" not in proposer.instructions[0] and out.prompt == ("x", "alpha")
    assert out.history[-1] == (("x", "alpha"), 0.5)


def test_current_prompt_is_kept_unless_a_candidate_is_strictly_better():
    proposer = ScriptedProposer("1. plain words\n2. other words")
    out = client_round(ClientConfig(num_candidates=2), ("alpha",), (), planted_accuracy, proposer=proposer)
    assert out.prompt == ("alpha",) and out.accuracies == (0.5, 0.25, 0.25)


def test_parse_failures_are_retried_then_skipped_and_counted():
    proposer = ScriptedProposer("Sorry, I cannot help with that:", "1. alpha first\n2. beta second")
    out = client_round(ClientConfig(num_candidates=2, max_retries=2), (), (), planted_accuracy, proposer=proposer,
                       seed=10)
    assert (out.proposer_calls, out.parse_failures, out.skipped) == (2, 1, 0)
    assert proposer.seeds == [10, 11] and out.prompt == ("alpha", "first")

    hopeless = ScriptedProposer("???", RuntimeError("server down"), "")
    out = client_round(ClientConfig(num_candidates=3, max_retries=2), ("x",), (), planted_accuracy, proposer=hopeless)
    assert (out.proposer_calls, out.parse_failures, out.proposer_errors, out.skipped) == (3, 2, 1, 3)
    assert out.candidates == (("x",),) and out.prompt == ("x",)


def test_partial_answers_ask_again_for_the_missing_candidates_only():
    proposer = ScriptedProposer("1. one\n2. one", "1. two\n2. three\n3. four")
    out = client_round(ClientConfig(num_candidates=3), (), (), planted_accuracy, proposer=proposer)
    assert "Write 3 new notes" in proposer.instructions[0] and "Write 2 new notes" in proposer.instructions[1]
    # each call's answer is capped at what it asks for: two tokens a word, four more a note
    assert proposer.max_tokens == [answer_tokens(3, 10), answer_tokens(2, 10)] == [72, 48]
    assert out.candidates == ((), ("one",), ("two",), ("three",)) and out.skipped == 0


def test_random_client_replaces_words_from_the_vocabulary_reproducibly():
    vocab = ("alpha", "beta", "gamma", "delta", "eps")
    prompt = ("w0", "w1", "w2", "w3")
    config = ClientConfig(kind="random", num_candidates=4, num_edits=1)
    out = client_round(config, prompt, (), planted_accuracy, vocabulary=vocab, seed=3)
    assert len(out.candidates) == 5 and len(set(out.candidates)) == 5 and out.proposer_calls == 0
    for cand in out.candidates[1:]:
        changed = [i for i in range(4) if cand[i] != prompt[i]]
        assert len(cand) == 4 and len(changed) == 1 and cand[changed[0]] in vocab
    again = client_round(config, prompt, (), planted_accuracy, vocabulary=vocab, seed=3)
    other = client_round(config, prompt, (), planted_accuracy, vocabulary=vocab, seed=4)
    assert again.candidates == out.candidates and other.candidates != out.candidates
    assert out.accuracy == max(out.accuracies) and out.history == ((out.prompt, out.accuracy),)


def test_random_edit_inserts_into_an_empty_prompt_and_needs_words():
    rng = np.random.default_rng(0)
    assert random_edit((), ("a", "b"), rng, num_edits=1) in {("a",), ("b",)}
    with pytest.raises(ValueError, match="vocabulary"):
        random_edit(("x",), (), rng)


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="needs a proposer"):
        client_round(ClientConfig(), ("x",), (), planted_accuracy)
    with pytest.raises(ValueError, match="kind"):
        client_round(ClientConfig(kind="llm"), ("x",), (), planted_accuracy)
    with pytest.raises(ValueError, match="num_candidates"):
        ClientConfig(num_candidates=0).validate()


# ----------------------------------------------------------------------------- OpenAI proposer


class _ChatStub(http.server.BaseHTTPRequestHandler):
    requests: ClassVar[list] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        content = f"1. answer for seed {body.get('seed')}"
        reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
                 "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_openai_proposer_sends_the_instruction_and_seed():
    pytest.importorskip("openai")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ChatStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        proposer = OpenAIProposer("tiny", base_url=f"http://127.0.0.1:{server.server_port}/v1", max_retries=0)
        out = client_round(ClientConfig(num_candidates=1), ("x",), ((("x",), 0.5),), planted_accuracy,
                           proposer=proposer, description="Q?", seed=5)
    finally:
        server.shutdown()
    path, body = _ChatStub.requests[-1]
    assert path.endswith("/chat/completions") and body["seed"] == 5 and body["model"] == "tiny" and body["max_tokens"] == 24
    assert '"x" accuracy 50%' in body["messages"][0]["content"]
    assert out.candidates[1] == ("answer", "for", "seed", "5")
    assert (proposer.calls, proposer.prompt_tokens, proposer.completion_tokens) == (1, 7, 5)
