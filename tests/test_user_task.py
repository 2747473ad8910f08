"""The user's own task from CSV/TSV/JSONL files: parsing, up-front errors that
name the file, row and field, and ``asyndbt run --train-file`` end to end."""

import json

import numpy as np
import pytest

from asyndbt_jax.cli import main
from asyndbt_jax.job import read_config_file
from asyndbt_jax.tasks.files import load_user_task


def write(path, text):
    path.write_text(text)
    return path


def test_three_formats_read_alike(tmp_path):
    csv = write(tmp_path / "t.csv", 'question,sentence,label\n"Who, then?",It was him.,yes\nWhy?,No reason.,no\n')
    tsv = write(tmp_path / "t.tsv", "question\tsentence\tlabel\nWho, then?\tIt was him.\tyes\nWhy?\tNo reason.\tno\n")
    jsonl = write(tmp_path / "t.jsonl", '{"question": "Who, then?", "sentence": "It was him.", "label": "yes"}\n\n'
                                        '{"question": "Why?", "sentence": "No reason.", "label": "no", "x": 1}\n')
    for path in (csv, tsv, jsonl):
        data, test = load_user_task(path, fields="question,sentence", label_words="no=No,yes=Yes")
        assert test is None and data.labels.tolist() == [1, 0] and data.template.answers == ("No", "Yes")
        assert data.examples[0] == {"question": "Who, then?", "sentence": "It was him."}
        assert data.template.block == "question: {question}\nsentence: {sentence} {note}"
    data, test = load_user_task(csv, fields=["sentence"], label_words={"no": "No", "yes": "Yes"}, test_file=jsonl,
                                template='Is "{sentence}" true? {note}')
    assert test.tolist() == [2, 3] and len(data.examples) == 4 and data.source == f"{csv} + {jsonl}"


@pytest.mark.parametrize("content, kwargs, match", [
    ("text,label\nfine,pos\n", dict(fields="review"), r"t.csv row 2: no field 'review' \(the row has \['label', 'text'\]\)"),
    ("text,label\nfine,pos\nbad,meh\n", {}, r"t.csv row 3: label 'meh' in field 'label' has no answer word "
                                           r"\(label_words names \['neg', 'pos'\]\)"),
    ("text,label\nfine,pos\n,neg\n", {}, r"t.csv row 3: field 'text' is empty"),
    ("text,label\n", {}, r"t.csv holds no examples"),
    ("text,label\nfine,pos\n", dict(label_words="neg=Terrible"), r"need answer words for at least 2 labels"),
    ("text,label\nfine,pos\n", dict(label_words="neg:Terrible"), r"label words must look like 'neg=Terrible,pos=Great'"),
    ("text,label\nfine,pos\n", dict(template="{review} {note}"), r"the template uses \['review'\], which are not among"),
])
def test_bad_files_are_named_with_row_and_field(tmp_path, content, kwargs, match):
    args = dict(fields="text", label_words="neg=Terrible,pos=Great") | kwargs
    with pytest.raises(ValueError, match=match):
        load_user_task(write(tmp_path / "t.csv", content), **args)


def test_bad_jsonl_and_formats(tmp_path):
    words = dict(fields="text", label_words="neg=Terrible,pos=Great")
    with pytest.raises(ValueError, match=r"t.jsonl line 2: invalid JSON"):
        load_user_task(write(tmp_path / "t.jsonl", '{"text": "a", "label": "pos"}\n{"text": \n'), **words)
    with pytest.raises(ValueError, match=r"t.jsonl line 1: expected a JSON object, got list"):
        load_user_task(write(tmp_path / "t.jsonl", '["a", "pos"]\n'), **words)
    with pytest.raises(ValueError, match=r"t.jsonl line 1: field 'text' is 3"):
        load_user_task(write(tmp_path / "t.jsonl", '{"text": 3, "label": "pos"}\n'), **words)
    with pytest.raises(ValueError, match=r"unknown format '.xlsx'; use one of \['.csv', '.tsv', '.jsonl'\]"):
        load_user_task(tmp_path / "t.xlsx", **words)
    with pytest.raises(FileNotFoundError, match=r"nope.csv does not exist"):
        load_user_task(tmp_path / "nope.csv", **words)


def test_toml_lists_and_tables_for_a_user_task(tmp_path):
    toml = write(tmp_path / "job.toml", 'train-file = "a.csv"\nfields = ["question", "sentence"]\n'
                                        'label_words = {no = "No", yes = "Yes"}\n')
    assert read_config_file(str(toml)) == {"train_file": "a.csv", "fields": "question,sentence",
                                           "label_words": "no=No,yes=Yes"}


def test_job_errors_for_user_tasks(tmp_path):
    with pytest.raises(SystemExit, match=r"needs --label-words"):
        main(["run", "--train-file", str(tmp_path / "a.csv"), "--out", str(tmp_path / "o")])
    small = write(tmp_path / "small.csv", "text,label\n" + "".join(f"t{i},{'pos' if i % 2 else 'neg'}\n" for i in range(40)))
    with pytest.raises(SystemExit, match=r"small: class 0 \('Terrible'\) has 20 examples; the split needs 80"):
        main(["run", "--train-file", str(small), "--label-words", "neg=Terrible,pos=Great", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match=r"--test-file goes with --train-file"):
        main(["run", "--test-file", str(small), "--out", str(tmp_path / "p")])


@pytest.mark.slow
def test_run_on_the_users_files(tmp_path, capsys):
    """Write MR sentences as the user's CSV (training) and JSONL (test), then run the job."""
    from asyndbt_jax.tasks import prepare

    mr = prepare("mr", log=lambda m: None)
    rng = np.random.default_rng(0)
    pick = {u: rng.permutation(np.flatnonzero(mr.labels == u)) for u in (0, 1)}
    name = {0: "neg", 1: "pos"}
    train = [(mr.examples[i]["S1"], name[u]) for u in (0, 1) for i in pick[u][:80]]
    test = [(mr.examples[i]["S1"], name[u]) for u in (0, 1) for i in pick[u][80:83]]
    import csv

    with open(tmp_path / "reviews.csv", "w", newline="") as f:
        csv.writer(f).writerows([("review", "sentiment"), *train])
    (tmp_path / "held.jsonl").write_text("".join(json.dumps({"review": t, "sentiment": s}) + "\n" for t, s in test))
    assert main(["run", "--json", "--method", "manual", "--train-file", str(tmp_path / "reviews.csv"),
                 "--test-file", str(tmp_path / "held.jsonl"), "--fields", "review", "--label-field", "sentiment",
                 "--label-words", "neg=Terrible,pos=Great", "--template",
                 'Review: "{review}" Respond ONLY with "Great" or "Terrible". {note}',
                 "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "r.sqlite")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "reviews" and out["test_examples"] == 6
    assert out["llm_prompts_by_method"] == {"manual": 6 + 2, "random-icl": 6 + 2}  # + the content-free inputs
    assert "held.jsonl" in out["source"]


def test_a_task_is_named_after_its_folder_where_the_file_only_names_a_split(tmp_path):
    from asyndbt_jax.tasks.files import task_name

    assert task_name(tmp_path / "reviews.csv") == "reviews"
    (tmp_path / "imdb").mkdir()
    assert task_name(tmp_path / "imdb" / "train.csv") == "imdb-train"
    assert task_name(tmp_path / "imdb" / "Test.jsonl") == "imdb-Test"
