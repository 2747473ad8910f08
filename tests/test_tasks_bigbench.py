"""The four BIG-bench tasks (linzen, qnli, squad-pairs, turk): pair construction on small
hand-made structures shaped like the real members, the one-download build through
``prepare`` on a tiny stand-in archive, and (slow) the real sdist from the registry."""

import hashlib
import io
import json
import tarfile
import time

import numpy as np
import pytest

from asyndbt_jax.llm.prompts import PAPER_TEMPLATES
from asyndbt_jax.tasks import bigbench as bb
from asyndbt_jax.tasks import data as datamod

TASKS = ("linzen", "qnli", "squad-pairs", "turk")

LINZEN = {"name": "tse-easy", "examples": [
    {"input": "the keys to the cabinet ", "target_scores": {"are on the table.": 1, "is on the table.": 0}},
    {"input": "the author   of the books ", "target_scores": {"laughs.": 1, "laugh.": 0}},
]}
UNPAIRED = {"input": "observations on all the radices ", "target_scores": {"wherein both they.": 0}}

# paragraph 0: three sentences starting at 0, 20 and 46 (abbreviations the splitter must keep)
CONTEXT0 = "Paris is in France. It has the Louvre museum. Its mayor lives at No. 5 Main St. in the city."
SQUAD = {"version": "1.1", "data": [{"title": "t", "paragraphs": [
    {"context": CONTEXT0, "qas": [
        {"id": "a", "question": "Where is  Paris?", "answers": [{"answer_start": 12, "text": "France"}]},
        {"id": "b", "question": "Which country has Paris?", "answers": [
            {"answer_start": 12, "text": "france"}, {"answer_start": 12, "text": "France "}]},
        {"id": "c", "question": "Where does the mayor live?", "answers": [
            {"answer_start": 65, "text": "No. 5 Main St."}, {"answer_start": 31, "text": "Louvre"}]},
    ]},
    {"context": "Rome is in Italy.", "qas": [
        {"id": "d", "question": "Where is Rome?", "answers": [{"answer_start": 11, "text": "France"}]},
    ]},
]}]}

TURK = {"name": "turk", "examples": [
    {"input": "The red cat sat on the mat .", "target": [
        "The red cat sat on the mat .", "A red cat sat on a mat .", "The cat sat on the mat .", "A red cat sat on a mat ."]},
    {"input": "The red dog sat on the rug .", "target": ["A red dog sat on a rug .", "The dog sat ."]},
    {"input": "Stocks fell sharply in Tokyo today .", "target": ["Stocks fell in Tokyo .", "Tokyo stocks dropped ."]},
]}


def test_linzen_pairs_each_prefix_with_both_verb_forms():
    examples, labels = bb.linzen_examples(LINZEN)
    assert examples == [{"S1": "the keys to the cabinet are on the table."}, {"S1": "the keys to the cabinet is on the table."},
                        {"S1": "the author of the books laughs."}, {"S1": "the author of the books laugh."}]
    assert labels == [1, 0, 1, 0]
    broken = {"examples": LINZEN["examples"] + [{"input": "x ", "target_scores": {"a": 2, "b": 0}}]}
    with pytest.raises(ValueError, match="linzen2016_english.json: malformed member: example 2"):
        bb.linzen_examples(broken)
    with pytest.raises(ValueError, match="m.json: malformed member: 1 of 3 examples"):  # over 1% unpaired
        bb.linzen_examples({"examples": LINZEN["examples"] + [UNPAIRED]}, member="m.json")
    with pytest.raises(ValueError, match="'examples' list"):
        bb.linzen_examples({"data": []})


def test_linzen_tolerates_one_unpaired_example_in_a_hundred():
    paired = {"input": "they ", "target_scores": {"run.": 1, "runs.": 0}}
    task = {"examples": [paired] * 99 + [UNPAIRED]}
    examples, labels = bb.linzen_examples(task)
    assert len(examples) == 198 and sum(labels) == 99


def _split_at_periods(text):
    """A stand-in splitter: paragraph 0's three sentences."""
    return [text[:20], text[20:46], text[46:]] if text == CONTEXT0 else [text]  # whitespace kept


def test_sentence_spans_tile_the_text_and_reject_an_altered_sentence():
    assert bb.sentence_spans("  A b. C d.", ["A b. ", "", "C d."]) == [(2, 7, "A b."), (7, 11, "C d.")]
    with pytest.raises(ValueError, match="not found in its paragraph"):
        bb.sentence_spans("A b. C d.", ["A b.", "C e."])


def test_qnli_labels_come_from_the_answer_start():
    examples, labels = bb.qnli_pairs(SQUAD, split=_split_at_periods)
    sentences = ["Paris is in France.", "It has the Louvre museum.", "Its mayor lives at No. 5 Main St. in the city."]
    assert [e["S2"] for e in examples[:3]] == sentences and examples[0]["S1"] == "Where is Paris?"
    assert len(examples) == 3 * 3 + 1
    # a: France in sentence 0; b: same; c: its annotators answered in sentences 2 and 1; d: no answer start inside
    assert labels == [1, 0, 0, 1, 0, 0, 0, 1, 1, 1]
    assert {tuple(e) for e in examples} == {("S1", "S2")} == {tuple(PAPER_TEMPLATES["qnli"].slots)}


def test_qnli_with_the_real_splitter_keeps_abbreviations():
    pytest.importorskip("pysbd")
    examples, labels = bb.qnli_pairs(SQUAD)
    assert [e["S2"] for e in examples[:3]] == [
        "Paris is in France.", "It has the Louvre museum.", "Its mayor lives at No. 5 Main St. in the city."]
    assert labels == [1, 0, 0, 1, 0, 0, 0, 1, 1, 1]


def test_squad_question_pairs_share_an_answer_within_a_paragraph():
    examples, labels = bb.squad_question_pairs(SQUAD)
    assert examples == [{"S1": "Where is Paris?", "S2": "Which country has Paris?"},
                        {"S1": "Where is Paris?", "S2": "Where does the mayor live?"},
                        {"S1": "Which country has Paris?", "S2": "Where does the mayor live?"}]  # d is alone
    assert labels == [1, 0, 0]  # "France" ~ "france" ~ "France " (case and spaces)
    with pytest.raises(ValueError, match="squaddev_v1.1.json: malformed member: article 0, paragraph 0, question 0"):
        bb.squad_question_pairs({"data": [{"paragraphs": [{"context": "x", "qas": [{"question": "q"}]}]}]})


def test_turk_negatives_are_rewrites_of_the_closest_other_source_and_balanced():
    examples, labels = bb.turk_pairs(TURK)
    assert labels.count(1) == labels.count(0) == 2 + 2 + 2
    rewrites = {s["input"]: set(s["target"]) for s in TURK["examples"]}
    for e, label in zip(examples, labels):
        own = rewrites[e["S1"]]
        assert e["S2"] != e["S1"]
        assert (e["S2"] in own) == bool(label)
        if not label:
            assert any(e["S2"] in r for s, r in rewrites.items() if s != e["S1"])
    cat = [e["S2"] for e, label in zip(examples, labels) if e["S1"] == TURK["examples"][0]["input"]]
    # positives: distinct, not the verbatim copy; negatives: both rewrites of the dog sentence (closest)
    assert cat == ["A red cat sat on a mat .", "The cat sat on the mat .", "A red dog sat on a rug .", "The dog sat ."]
    stocks = [e["S2"] for e, label in zip(examples, labels) if e["S1"].startswith("Stocks") and not label]
    assert len(stocks) == 2 and not set(stocks) & rewrites["Stocks fell sharply in Tokyo today ."]
    assert bb.turk_pairs(TURK) == (examples, labels)  # deterministic
    with pytest.raises(ValueError, match="task.json: malformed member: example 0"):
        bb.turk_pairs({"examples": [{"input": "a", "target": "b"}]})


# ---------------------------------------------------------------------------- build through prepare


def _archive(members: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, payload in [("bigbench-1.0.0/README.md", b"x")] + list(members.items()):
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def fake_registry(monkeypatch, tmp_cache):
    """Serve a tiny stand-in sdist through the real ``fetch_package`` (checksum included);
    returns the list of fetches and a function to set the archive's members."""
    fetched, state = [], {}

    def serve(members):
        state["bytes"] = _archive(members)
        monkeypatch.setattr(bb, "SHA256", hashlib.sha256(state["bytes"]).hexdigest())

    real = bb.fetch_package

    def fetch(package, filename, sha256, into, log=print, what=""):
        fetched.append(package)
        (into / filename).write_bytes(state["bytes"])
        return real(package, filename, sha256, into, log, what)

    monkeypatch.setattr(bb, "fetch_package", fetch)
    serve({bb.MEMBERS["linzen"]: LINZEN, bb.MEMBERS["squad"]: SQUAD, bb.MEMBERS["turk"]: TURK})
    return fetched, serve


def test_prepare_fetches_the_archive_once_for_all_four_tasks(fake_registry, tmp_cache):
    fetched, _ = fake_registry
    logs = []
    data = {task: datamod.prepare(task, log=logs.append) for task in TASKS}
    assert fetched == ["bigbench==1.0.0"]
    assert sorted(p.name for p in bb.members_dir().iterdir() if not p.name.startswith(".")) == [
        "gem__turk__task.json", "squad_shifts__squaddev_v1.1.json", "subject_verb_agreement__linzen2016_english.json"]
    assert not list(tmp_cache.rglob("*.tar.gz")) and not list(tmp_cache.rglob("*.partial"))
    assert data["linzen"].class_counts().tolist() == [2, 2] and data["turk"].class_counts().tolist() == [6, 6]
    assert data["qnli"].class_counts().tolist() == [5, 5] and data["squad-pairs"].class_counts().tolist() == [2, 1]
    for task, d in data.items():
        assert d.template is PAPER_TEMPLATES[bb.BUILT[task].template]
        assert all(set(e) == set(d.template.slots) for e in d.examples)
        assert d.source.startswith("bigbench==1.0.0:bigbench-1.0.0/bigbench/benchmark_tasks/")
        assert (datamod.data_dir(task) / ".complete").exists()
    assert data["squad-pairs"].examples[0] == {"S1": "Where is Paris?", "S2": "Which country has Paris?"}
    again = datamod.prepare("qnli", log=logs.append)  # read from the cache: no fetch, same order
    assert fetched == ["bigbench==1.0.0"] and again.examples == data["qnli"].examples
    assert np.array_equal(again.labels, data["qnli"].labels)


def test_prepare_rejects_a_wrong_checksum_and_a_malformed_member(fake_registry, monkeypatch, tmp_cache):
    fetched, serve = fake_registry
    good = bb.SHA256
    monkeypatch.setattr(bb, "SHA256", "0" * 64)
    with pytest.raises(ValueError, match="sha256 .* is not the expected 0000"):
        datamod.prepare("turk", log=lambda m: None)
    assert not (datamod.data_dir("turk") / ".complete").exists()
    monkeypatch.setattr(bb, "SHA256", good)

    serve({bb.MEMBERS["linzen"]: LINZEN, bb.MEMBERS["squad"]: SQUAD, bb.MEMBERS["turk"]: {"examples": [{"x": 1}]}})
    with pytest.raises(ValueError, match="gem/turk/task.json: malformed member"):
        datamod.prepare("turk", log=lambda m: None)
    assert not datamod.data_dir("turk").exists()
    assert datamod.prepare("linzen", log=lambda m: None).class_counts().tolist() == [2, 2]  # members already there
    assert len(fetched) == 2

    for path in bb.members_dir().glob("*.json"):
        path.unlink()
    serve({bb.MEMBERS["linzen"]: LINZEN, bb.MEMBERS["turk"]: TURK})
    with pytest.raises(ValueError, match="squaddev_v1.1.json'] not found in the archive"):
        datamod.prepare("qnli", log=lambda m: None)

    (bb.members_dir() / "squad_shifts__squaddev_v1.1.json").write_text("{not json")
    with pytest.raises(ValueError, match="squaddev_v1.1.json: malformed member: not JSON"):
        datamod.prepare("squad-pairs", log=lambda m: None)


# ---------------------------------------------------------------------------- the real sdist

# the registry route (measured; see asyndbt_jax/tasks/bigbench.py): (negatives, positives)
REAL_COUNTS = {"linzen": [499, 499], "qnli": [41879, 11401], "squad-pairs": [26023, 1349], "turk": [2273, 2273]}


@pytest.mark.slow
def test_prepare_the_four_tasks_from_the_real_sdist(tmp_cache, monkeypatch):
    """Downloads the 358 MB sdist once (~30 s here), builds all four (~20 s)."""
    fetched = []
    real = bb.fetch_package

    def counting(*args, **kwargs):
        fetched.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(bb, "fetch_package", counting)
    try:
        data = {task: datamod.prepare(task, log=lambda m: None) for task in TASKS}
    except ConnectionError as exc:  # any other download failure still fails the test
        if "No matching distribution found for bigbench==1.0.0" in str(exc):
            pytest.skip("this machine's package registry does not carry bigbench==1.0.0 (pip sees other versions only)")
        raise
    assert fetched == ["bigbench==1.0.0"]
    assert not list(tmp_cache.rglob("*.tar.gz"))
    for task, d in data.items():
        assert d.class_counts().tolist() == REAL_COUNTS[task], task
        assert all(set(e) == set(d.template.slots) and all(e.values()) for e in d.examples), task
    start = time.perf_counter()
    again = datamod.prepare("qnli", log=lambda m: None)
    read_s = time.perf_counter() - start
    assert fetched == ["bigbench==1.0.0"] and again.examples == data["qnli"].examples
    assert read_s < 5, read_s  # about 0.3 s measured; generous for a loaded machine
    assert data["qnli"].examples[0] == {
        "S1": "Which NFL team represented the AFC at Super Bowl 50?",
        "S2": "Super Bowl 50 was an American football game to determine the champion of the National Football "
              "League (NFL) for the 2015 season."}
    assert data["qnli"].labels[:2].tolist() == [0, 1]
