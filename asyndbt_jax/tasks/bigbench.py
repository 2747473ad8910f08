"""Four real labelled tasks built from the BIG-bench sdist on PyPI.

The sdist ``bigbench==1.0.0`` (358 MB) carries the text of three public corpora as JSON
files. :func:`bigbench_members` downloads it once with pip's ordinary client, checks its
sha256, extracts only the three members below into a shared cache folder
(``cache_root()/data/_bigbench-1.0.0/``) and deletes the archive; every task builds from
those files, so preparing all four fetches the archive once.

Tasks (label 1 answers "Yes" in every template; counts measured on the real files):

* ``linzen`` (CoLA substitute, template ``cola``, slot ``S1``):
  ``subject_verb_agreement/linzen2016_english.json``: 500 real Wikipedia sentence prefixes
  from Linzen et al. (2016), each completed once with the agreeing verb form (label 1,
  acceptable) and once with the agreement broken (label 0). Lower-cased and PTB-tokenised as
  in the source. One example offers a single completion and is skipped: **499 / 499**.
* ``qnli`` (QNLI, template ``qnli``, ``S1`` = question, ``S2`` = sentence, GLUE's column
  order): ``squad_shifts/squaddev_v1.1.json`` (SQuAD v1.1 dev, 2067 paragraphs, 10565
  questions: BIG-bench removed 5 of the 10570). As GLUE built QNLI: every question is paired
  with every sentence of its paragraph (sentences by ``pysbd``, a rule-based splitter:
  10327 sentences); entailment (1) iff the sentence contains the start of a gold answer (of
  any of the up to three annotators, so a sentence holding a valid answer is never a
  negative; with the first answer only it would be 10565 positives). **11401 / 41879**
  (53280 pairs).
* ``squad-pairs`` (QQP substitute, template ``qqp``): from the same file, every unordered
  pair of two questions on one paragraph (in file order); 1 iff they share a gold answer
  (answer texts compared lower-cased with whitespace collapsed). **1349 / 26023**. 36 pairs
  repeat one question text verbatim (35 labelled 1, one 0: the annotators' answers differ).
* ``turk`` (MRPC substitute, template ``mrpc``, ``S1`` = source, ``S2`` = rewrite):
  ``gem/turk/task.json``: 359 Wikipedia sentences, each with 7 crowd-sourced simplifying
  rewrites (TurkCorpus). Positives: a source with each of its distinct rewrites that differ
  from it (86 rewrites copy their source verbatim, some repeat: 2273 remain). Negatives, as
  many per source as it has positives: rewrites of the other sources that are lexically
  closest to it (sources ranked by token-set Jaccard with it, their distinct rewrites taken
  in order). No randomness. **2273 / 2273**.

Each task folder holds ``examples.jsonl`` (one ``{"label": …, "S1": …, …}`` per line, in
the order above); :meth:`BigBenchTask.read` reads it in a fraction of a second. The
construction functions (:func:`linzen_examples`, :func:`qnli_pairs`,
:func:`squad_question_pairs`, :func:`turk_pairs`) take the parsed JSON, so they are tested
without the archive.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .._files import atomic_file
from ..llm.models import cache_root
from ..llm.prompts import PAPER_TEMPLATES
from .data import BUILT, Builder, LabelledData, fetch_package

PACKAGE = "bigbench==1.0.0"
ARCHIVE = "bigbench-1.0.0.tar.gz"
SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
_ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks/"
#: the archive members the tasks need: key -> path inside the sdist
MEMBERS = {
    "linzen": _ROOT + "subject_verb_agreement/linzen2016_english.json",
    "squad": _ROOT + "squad_shifts/squaddev_v1.1.json",
    "turk": _ROOT + "gem/turk/task.json",
}
EXAMPLES_FILE = "examples.jsonl"


def members_dir() -> Path:
    """The shared folder holding the extracted members (``cache_root()/data/_bigbench-1.0.0``)."""
    return cache_root() / "data" / "_bigbench-1.0.0"


@contextmanager
def _locked(folder: Path):
    """Hold an exclusive lock on ``folder`` (where ``fcntl`` exists) so that two processes
    preparing tasks at once download the archive once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def bigbench_members(log=print) -> dict[str, Path]:
    """The extracted member files (key of :data:`MEMBERS` -> path), fetching the sdist only
    when one is missing: pip download, sha256 check, extraction of the members (each written
    to a temporary file and moved into place atomically), then the archive is deleted.

    Raises:
      ConnectionError: the registry is unreachable.
      ValueError: the checksum differs, or a member is missing from the archive.
    """
    folder = members_dir()
    paths = {key: folder / Path(member).relative_to(_ROOT).as_posix().replace("/", "__")
             for key, member in MEMBERS.items()}
    if all(p.exists() for p in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        if all(p.exists() for p in paths.values()):  # another process extracted them meanwhile
            return paths
        with tempfile.TemporaryDirectory(dir=folder) as tmp:  # the archive goes with it
            archive = fetch_package(PACKAGE, ARCHIVE, SHA256, Path(tmp), log,
                                    what="BIG-bench: Linzen 2016 agreement, SQuAD v1.1 dev, TurkCorpus")
            wanted = {member: key for key, member in MEMBERS.items()}
            with tarfile.open(archive) as tar:
                for info in tar:
                    key = wanted.pop(info.name, None)
                    if key is None:
                        continue
                    source = tar.extractfile(info)
                    if source is None:
                        raise ValueError(f"{ARCHIVE}: member {info.name} is not a regular file")
                    with atomic_file(paths[key]) as partial, open(partial, "wb") as out:
                        shutil.copyfileobj(source, out)
                    if not wanted:
                        break
            if wanted:
                raise ValueError(f"{ARCHIVE}: member(s) {sorted(wanted)} not found in the archive")
        log(f"extracted {len(MEMBERS)} BIG-bench files into {folder} (archive deleted)")
    return paths


# ---------------------------------------------------------------------------- construction


def _ws(text: str) -> str:
    return " ".join(text.split())


def _malformed(member: str, what: str) -> ValueError:
    return ValueError(f"{member}: malformed member: {what}")


def _examples_list(task_json, member: str) -> list:
    if not isinstance(task_json, dict) or not isinstance(task_json.get("examples"), list):
        raise _malformed(member, "expected an object with an 'examples' list")
    return task_json["examples"]


def linzen_examples(task_json: dict, member: str = MEMBERS["linzen"]) -> tuple[list[dict], list[int]]:
    """Acceptability pairs from a BIG-bench ``subject_verb_agreement`` task.

    Args:
      task_json: the parsed task, ``{"examples": [{"input": prefix, "target_scores":
        {completion: 1 | 0, ...}}, ...]}``, normally one completion scored 1 (the verb
        agrees) and one scored 0; an example without such a pair is skipped (at most 1%).
      member: the file's name, for error messages.

    Returns:
      ``(examples, labels)``: per source example, ``prefix + completion`` for each
      completion in the file's order, ``{"S1": sentence}``, label 1 = acceptable.

    Raises:
      ValueError: the structure differs or over 1% of the examples lack a pair (names
        ``member`` and the example).
    """
    examples, labels, unpaired = [], [], 0
    items = _examples_list(task_json, member)
    for i, ex in enumerate(items):
        scores = ex.get("target_scores") if isinstance(ex, dict) else None
        if not isinstance(ex, dict) or not isinstance(ex.get("input"), str) or not isinstance(scores, dict):
            raise _malformed(member, f"example {i} lacks 'input' (text) and 'target_scores' (object)")
        if any(s not in (0, 1) or isinstance(s, bool) for s in scores.values()):
            raise _malformed(member, f"example {i}: target_scores must be 0 or 1, got {list(scores.values())}")
        if sorted(scores.values()) != [0, 1]:
            unpaired += 1  # linzen2016_english.json has one such example (a single completion)
            continue
        for completion, score in scores.items():
            examples.append({"S1": _ws(ex["input"] + " " + completion)})
            labels.append(int(score))
    if unpaired > len(items) // 100:
        raise _malformed(member, f"{unpaired} of {len(items)} examples do not score one completion 1 and one 0")
    return examples, labels


def _paragraphs(squad_json, member: str):
    """Yield ``(context, qas)`` of a SQuAD v1.1 file, checking the structure."""
    if not isinstance(squad_json, dict) or not isinstance(squad_json.get("data"), list):
        raise _malformed(member, "expected SQuAD's {'data': [{'paragraphs': [...]}, ...]}")
    for a, article in enumerate(squad_json["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise _malformed(member, f"article {a} has no 'paragraphs' list")
        for p, paragraph in enumerate(paragraphs):
            where = f"article {a}, paragraph {p}"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("context"), str):
                raise _malformed(member, f"{where} has no 'context' text")
            qas = paragraph.get("qas")
            if not isinstance(qas, list):
                raise _malformed(member, f"{where} has no 'qas' list")
            for q, qa in enumerate(qas):
                answers = qa.get("answers") if isinstance(qa, dict) else None
                ok = (isinstance(answers, list) and answers and isinstance(qa.get("question"), str)
                      and all(isinstance(x, dict) and isinstance(x.get("text"), str)
                              and isinstance(x.get("answer_start"), int) for x in answers))
                if not ok:
                    raise _malformed(member, f"{where}, question {q}: needs 'question' and 'answers' "
                                             "[{'text', 'answer_start'}, ...]")
            yield paragraph["context"], qas


def pysbd_splitter() -> Callable[[str], list[str]]:
    """The default sentence splitter: ``pysbd`` (rule-based, pure Python, no data download),
    English, returning the sentences as they appear in the text."""
    try:
        import pysbd
    except ImportError as err:
        raise ModuleNotFoundError('building qnli splits sentences with pysbd: pip install "asyndbt_jax[llm]" '
                                  "(or pip install pysbd)") from err
    return pysbd.Segmenter(language="en", clean=False).segment


def sentence_spans(context: str, sentences: Sequence[str]) -> list[tuple[int, int, str]]:
    """Locate a splitter's sentences in ``context``.

    Returns:
      ``(start, end, text)`` per non-blank sentence, in order: ``start`` where its first
      character is, ``end`` where the next sentence starts (the text's end for the last), so
      the spans tile the context from the first sentence on; ``text`` whitespace-collapsed.

    Raises:
      ValueError: a sentence is not found in order (the splitter altered the text).
    """
    starts, texts, cursor = [], [], 0
    for sentence in sentences:
        stripped = sentence.strip()
        if not stripped:
            continue
        at = context.find(stripped, cursor)
        if at < 0:
            raise ValueError(f"sentence {stripped[:60]!r} not found in its paragraph after offset {cursor}")
        starts.append(at)
        texts.append(_ws(stripped))
        cursor = at + len(stripped)
    ends = starts[1:] + [len(context)]
    return list(zip(starts, ends, texts))


def qnli_pairs(squad_json: dict, split: Callable[[str], Sequence[str]] | None = None,
               member: str = MEMBERS["squad"]) -> tuple[list[dict], list[int]]:
    """QNLI as GLUE built it from SQuAD: (question, sentence of its paragraph) pairs.

    Args:
      squad_json: a parsed SQuAD v1.1 file.
      split: text -> sentences as they appear in it (default :func:`pysbd_splitter`).
      member: the file's name, for error messages.

    Returns:
      ``(examples, labels)``: for each question (file order) and each sentence of its
      paragraph (text order), ``{"S1": question, "S2": sentence}``; label 1 (entailment)
      iff the sentence's span contains the ``answer_start`` of one of its gold answers.

    Raises:
      ValueError: a malformed file (names ``member``), or the splitter altered the text.
    """
    split = split or pysbd_splitter()
    examples, labels = [], []
    for context, qas in _paragraphs(squad_json, member):
        spans = sentence_spans(context, split(context))
        for qa in qas:
            starts = {answer["answer_start"] for answer in qa["answers"]}
            question = _ws(qa["question"])
            for begin, end, sentence in spans:
                examples.append({"S1": question, "S2": sentence})
                labels.append(int(any(begin <= s < end for s in starts)))
    return examples, labels


def _answer_key(text: str) -> str:
    return " ".join(text.lower().split())


def squad_question_pairs(squad_json: dict, member: str = MEMBERS["squad"]) -> tuple[list[dict], list[int]]:
    """Question pairs (a QQP substitute) from SQuAD: two questions asked on one paragraph.

    Returns:
      ``(examples, labels)``: every unordered pair of questions of a paragraph, in file
      order, ``{"S1": earlier, "S2": later}``; label 1 iff they share a gold answer text
      (lower-cased, whitespace collapsed).

    Raises:
      ValueError: a malformed file (names ``member``).
    """
    examples, labels = [], []
    for _, qas in _paragraphs(squad_json, member):
        keyed = [(_ws(qa["question"]), {_answer_key(a["text"]) for a in qa["answers"]}) for qa in qas]
        for (q1, a1), (q2, a2) in itertools.combinations(keyed, 2):
            examples.append({"S1": q1, "S2": q2})
            labels.append(int(bool(a1 & a2)))
    return examples, labels


def _tokens(text: str) -> frozenset:
    return frozenset(re.findall(r"\w+", text.lower()))


def _jaccard(a: frozenset, b: frozenset) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def turk_pairs(task_json: dict, member: str = MEMBERS["turk"]) -> tuple[list[dict], list[int]]:
    """Paraphrase pairs (an MRPC substitute) from TurkCorpus sources and their rewrites.

    Args:
      task_json: the parsed BIG-bench ``gem/turk`` task, ``{"examples": [{"input": source,
        "target": [rewrite, ...]}, ...]}``.
      member: the file's name, for error messages.

    Returns:
      ``(examples, labels)``, per source (file order): its positives ``{"S1": source,
      "S2": rewrite}`` (label 1) for each distinct rewrite that differs from it, then as
      many negatives (label 0): distinct rewrites of the other sources, taken source by
      source from the lexically closest (token-set Jaccard with this source, ties by file
      order), skipping texts equal to this source. Classes are balanced exactly.

    Raises:
      ValueError: a malformed file (names ``member``).
    """
    sources, rewrites = [], []
    for i, ex in enumerate(_examples_list(task_json, member)):
        targets = ex.get("target") if isinstance(ex, dict) else None
        if (not isinstance(ex, dict) or not isinstance(ex.get("input"), str) or not isinstance(targets, list)
                or not all(isinstance(t, str) for t in targets)):
            raise _malformed(member, f"example {i} lacks 'input' (text) and 'target' (list of texts)")
        source = _ws(ex["input"])
        distinct = list(dict.fromkeys(t for t in map(_ws, targets) if t and t != source))
        sources.append(source)
        rewrites.append(distinct)
    tokens = [_tokens(s) for s in sources]
    examples, labels = [], []
    for i, source in enumerate(sources):
        examples += [{"S1": source, "S2": r} for r in rewrites[i]]
        labels += [1] * len(rewrites[i])
        need = len(rewrites[i])
        others = sorted((j for j in range(len(sources)) if j != i), key=lambda j: (-_jaccard(tokens[i], tokens[j]), j))
        taken = set()
        for j in others:
            if need == 0:
                break
            for r in rewrites[j]:
                if need and r != source and r not in taken and r not in rewrites[i]:
                    taken.add(r)
                    examples.append({"S1": source, "S2": r})
                    labels.append(0)
                    need -= 1
        if need:
            raise _malformed(member, f"too few rewrites of other sources for negatives of example {i}")
    return examples, labels


# ---------------------------------------------------------------------------- tasks


def write_examples(path: Path, examples: Sequence[dict], labels: Sequence[int]) -> None:
    """Write ``examples.jsonl`` atomically: one ``{"label": int, **slots}`` per line."""
    with atomic_file(path) as partial, open(partial, "w", encoding="utf-8") as out:
        out.writelines(json.dumps({"label": int(label), **example}, ensure_ascii=False) + "\n"
                       for example, label in zip(examples, labels, strict=True))


class BigBenchTask(Builder):
    """One task built from a BIG-bench member by a construction function.

    Args:
      member_key: the key of :data:`MEMBERS` it reads.
      construct: parsed JSON -> ``(examples, labels)`` (called with ``member=`` the path).
      template: the name in ``PAPER_TEMPLATES``.
    """

    package = PACKAGE

    def __init__(self, member_key: str, construct: Callable, template: str):
        self.member_key = member_key
        self.construct = construct
        self.template = template

    @property
    def source(self) -> str:
        return f"{PACKAGE}:{MEMBERS[self.member_key]}"

    def build(self, folder: Path, log=print) -> None:
        path = bigbench_members(log)[self.member_key]
        member = MEMBERS[self.member_key]
        try:
            parsed = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{member}: malformed member: not JSON ({err})") from None
        examples, labels = self.construct(parsed, member=member)
        slots = set(PAPER_TEMPLATES[self.template].slots)
        if not examples or set(examples[0]) != slots:
            raise ValueError(f"{member}: built no examples with the slots {sorted(slots)} of {self.template!r}")
        write_examples(folder / EXAMPLES_FILE, examples, labels)
        counts = np.bincount(np.asarray(labels, np.int64), minlength=2)
        log(f"built {len(labels)} examples ({counts[1]} positive / {counts[0]} negative) from {member}")

    def read(self, task: str, folder: Path) -> LabelledData:
        path = Path(folder) / EXAMPLES_FILE
        examples, labels = [], []
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                labels.append(row.pop("label"))
                examples.append(row)
        return LabelledData(task, examples, np.array(labels, np.int64), PAPER_TEMPLATES[self.template], self.source)


BUILT.update({
    "linzen": BigBenchTask("linzen", linzen_examples, "cola"),
    "qnli": BigBenchTask("squad", qnli_pairs, "qnli"),
    "squad-pairs": BigBenchTask("squad", squad_question_pairs, "qqp"),
    "turk": BigBenchTask("turk", turk_pairs, "mrpc"),
})
