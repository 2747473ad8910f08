"""The user's own task: labelled examples in CSV, TSV or JSONL files, no code.

A task is described by

* ``fields``: the text column(s) the prompt shows, e.g. ``["review"]`` or
  ``["question", "sentence"]``;
* ``label_field``: the column holding the label (default ``label``);
* ``label_words``: file label → answer word, in class order, e.g.
  ``{"neg": "Terrible", "pos": "Great"}`` (a label in the file that is not named is an
  error, so nothing is silently dropped);
* ``template``: the example block with ``{field}`` slots and optionally ``{note}`` (where
  the tuned fragment goes), e.g. ``'Review: "{review}" Respond with "Great" or
  "Terrible". {note}'``; default: one ``field: {field}`` line per field, then ``{note}``.

The format follows the file's suffix: ``.csv``, ``.tsv`` (both with a header row) or
``.jsonl`` (one JSON object per line). Every problem is reported up front with the file,
the row and the field.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..llm.prompts import Template
from .data import LabelledData

FORMATS = (".csv", ".tsv", ".jsonl")


def parse_label_words(spec: str | Mapping[str, str]) -> dict[str, str]:
    """``"neg=Terrible,pos=Great"`` (or a mapping) → ``{"neg": "Terrible", "pos": "Great"}``."""
    if isinstance(spec, Mapping):
        words = {str(k): str(v) for k, v in spec.items()}
    else:
        words = {}
        for part in spec.split(","):
            label, sep, word = part.partition("=")
            if not sep or not label.strip() or not word.strip():
                raise ValueError(f"label words must look like 'neg=Terrible,pos=Great', got {spec!r}")
            words[label.strip()] = word.strip()
    if len(words) < 2:
        raise ValueError(f"need answer words for at least 2 labels, got {words}")
    return words


def parse_fields(spec: str | Sequence[str]) -> list[str]:
    """``"question,sentence"`` (or a list) → ``["question", "sentence"]``."""
    fields = [f.strip() for f in (spec.split(",") if isinstance(spec, str) else spec)]
    if not fields or not all(fields):
        raise ValueError(f"fields must name the text column(s), e.g. 'sentence' or 'question,sentence'; got {spec!r}")
    return fields


def _rows(path: Path):
    """``(where, record)`` pairs of a CSV/TSV/JSONL file; ``where`` names the file and the
    row (CSV/TSV: the line where the row ends) or line (JSONL) as an editor shows it."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: unknown format {suffix!r}; use one of {list(FORMATS)}")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    with open(path, encoding="utf-8-sig", newline="") as f:
        if suffix == ".jsonl":
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path} line {n}: invalid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{path} line {n}: expected a JSON object, got {type(record).__name__}")
                yield f"{path} line {n}", record
        else:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            for record in reader:
                yield f"{path} row {reader.line_num}", record


def read_examples(path: str | Path, fields: Sequence[str], label_field: str, label_words: Mapping[str, str]):
    """``(examples, labels)`` of one file: the text ``fields`` of every row and its class
    (the position of its label in ``label_words``)."""
    path = Path(path)
    classes = {label: u for u, label in enumerate(label_words)}
    examples, labels = [], []
    for where, record in _rows(path):
        for name in (*fields, label_field):
            if name not in record:
                raise ValueError(f"{where}: no field {name!r} (the row has {sorted(record)})")
        label = record[label_field]
        label = str(label).strip() if label is not None else ""
        if label not in classes:
            raise ValueError(f"{where}: label {label!r} in field {label_field!r} has no answer word "
                             f"(label_words names {list(classes)})")
        texts = {}
        for name in fields:
            value = record[name]
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{where}: field {name!r} is {'empty' if value in ('', None) else repr(value)}; "
                                 "text fields must be non-empty strings")
            texts[name] = value.strip()
        examples.append(texts)
        labels.append(classes[label])
    if not examples:
        raise ValueError(f"{path} holds no examples")
    return examples, np.asarray(labels, np.int64)


def default_block(fields: Sequence[str]) -> str:
    return "\n".join(f"{name}: {{{name}}}" for name in fields) + " {note}"


def load_user_task(train_file, *, fields, label_words, label_field: str = "label", template: str | None = None,
                   test_file=None) -> tuple[LabelledData, np.ndarray | None]:
    """The task of the user's files: ``(data, test)``, where ``test`` indexes the examples
    of ``test_file`` inside ``data`` (``None`` without one: the split draws test from the
    training file)."""
    fields, label_words = parse_fields(fields), parse_label_words(label_words)
    block = template or default_block(fields)
    tpl = Template(block, tuple(label_words.values()))
    unknown = [s for s in tpl.slots if s not in fields]
    if unknown:
        raise ValueError(f"the template uses {unknown}, which are not among the fields {fields}")
    examples, labels = read_examples(train_file, fields, label_field, label_words)
    test = None
    if test_file:
        more, more_labels = read_examples(test_file, fields, label_field, label_words)
        test = np.arange(len(examples), len(examples) + len(more))
        examples, labels = examples + more, np.concatenate([labels, more_labels])
    source = str(train_file) + (f" + {test_file}" if test_file else "")
    return LabelledData(task_name(train_file), tuple(examples), labels, tpl, source), test


#: file names that say which split a file is, not which task: such a task is named after its folder too
_SPLIT_NAMES = frozenset({"train", "training", "dev", "valid", "validation", "test", "data", "dataset", "all"})


def task_name(train_file) -> str:
    """The name of a task read from ``train_file``: its stem (``reviews.csv`` → ``reviews``), with
    its folder in front where the stem only names a split (``reviews/train.csv`` → ``reviews-train``)."""
    path = Path(train_file)
    folder = path.resolve().parent.name
    return f"{folder}-{path.stem}" if path.stem.lower() in _SPLIT_NAMES and folder else path.stem
