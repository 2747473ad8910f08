"""Prompt rendering: templates, demonstrations, the fragment slot, the query last.

A prompt is ``header + demo_1 + ... + demo_U + query block`` (the paper's prompt layout): every block is the
task template filled with one example's text fields, followed by the answer cue; a
demonstration block also carries its answer word. The template's slots:

* ``{S1}``, ``{S2}``, ``{TEXT}``, ``{WORD1}`` ... (any name): the example's text fields;
  the block must have at least one (the query slot);
* ``{note}``: ``"Note: w_1 w_2 ... w_M."``, or nothing when the fragment is empty (the
  "manual prompt" and demonstrations-only baselines);
* ``{T}``: the fragment words alone, for templates that phrase the note themselves.

The paper's templates (:data:`PAPER_TEMPLATES`) put the note in every block, so
the fragment follows each example. A user template may put ``{note}`` in ``header``
instead: the fragment then appears once, in front of the demonstrations.

:func:`render` returns the prompt split for shared-prefix scoring: ``prefix`` (header,
demonstrations and the query block up to its first example slot: identical for every
query of one configuration) and one ``query`` text per example (the rest, ending with the
answer cue). ``prefix + query`` is the full prompt.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Mapping, Sequence

FRAGMENT_SLOTS = frozenset({"note", "T"})


def _fields(text: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError as err:
        raise ValueError(f"malformed template {text!r}: {err}") from None


@dataclass(frozen=True)
class Template:
    """How one task's examples become a prompt.

    Attributes:
      block: the text of one example block, with ``{FIELD}`` slots (see the module doc).
      answers: the answer word of each class, in label order (class ``u`` answers
        ``answers[u]``); the model is scored on ``" " + answer`` after the cue.
      header: text put once before the demonstrations (may hold ``{note}`` / ``{T}``).
      cue: the text that ends every block and asks for the answer.
      separator: between blocks.

    Raises:
      ValueError: no example slot in ``block``, an example slot in ``header``, fewer than two
        answers, an empty or repeated answer, or a malformed ``{...}``.
    """

    block: str
    answers: tuple[str, ...]
    header: str = ""
    cue: str = "\nAnswer:"
    separator: str = "\n\n"

    def __post_init__(self):
        object.__setattr__(self, "answers", tuple(self.answers))
        slots = [f for f in _fields(self.block) if f not in FRAGMENT_SLOTS]
        if not slots:
            raise ValueError(f"template block has no query slot (an example field such as {{S1}}): {self.block!r}")
        if any(not f.isidentifier() for f in slots):
            raise ValueError(f"template slots must be plain names like {{S1}}, got {slots} in {self.block!r}")
        stray = [f for f in _fields(self.header) if f not in FRAGMENT_SLOTS]
        if stray:
            raise ValueError(f"the header may only hold {{note}} or {{T}}, got {stray}")
        if len(self.answers) < 2:
            raise ValueError(f"need at least 2 answer words, got {self.answers!r}")
        if any(not a.strip() for a in self.answers):
            raise ValueError(f"answer words must not be empty, got {self.answers!r}")
        if len(set(self.answers)) != len(self.answers):
            raise ValueError(f"answer words must differ, got {self.answers!r}")

    @property
    def slots(self) -> tuple[str, ...]:
        """The example fields the block needs, in order of first use."""
        return tuple(dict.fromkeys(f for f in _fields(self.block) if f not in FRAGMENT_SLOTS))

    @property
    def label_words(self) -> tuple[str, ...]:
        """The strings scored after the cue (the answers with their leading space)."""
        return tuple(" " + a for a in self.answers)

    @staticmethod
    def _fragment_values(fragment: Sequence[str]) -> dict[str, str]:
        words = " ".join(w for w in fragment if w)
        return {"T": words, "note": f"Note: {words}." if words else ""}

    def _fill(self, text: str, example: Mapping[str, str], fragment: Sequence[str]) -> str:
        values = self._fragment_values(fragment)
        values.update((slot, str(example[slot])) for slot in self.slots if slot in example)
        try:
            filled = text.format(**values)
        except KeyError as err:
            raise ValueError(f"example has no field {err.args[0]!r} for the template (has {sorted(example)})") from None
        return filled.rstrip()

    def _head(self, fragment: Sequence[str]) -> str:
        """The query block's text before its first example slot (shared by every query)."""
        values = self._fragment_values(fragment)
        head = []
        for literal, name, spec, conv in string.Formatter().parse(self.block):
            head.append(literal)
            if name is None or name not in FRAGMENT_SLOTS:
                break
            head.append(format(values[name], spec or ""))
        return "".join(head)

    def render(self, demos: Sequence[tuple[Mapping[str, str], int]], fragment: Sequence[str],
               queries: Sequence[Mapping[str, str]]) -> tuple[str, list[str]]:
        """Render one configuration.

        Args:
          demos: ``(example, label)`` pairs, shown in order with their answer words.
          fragment: the fragment's words (empty: no note).
          queries: the examples to ask about.

        Returns:
          ``(prefix, query_texts)``; ``prefix + query_texts[b]`` is query ``b``'s prompt.
        """
        if not queries:
            raise ValueError("no queries to render")
        parts = []
        header = self._fill(self.header, {}, fragment) if self.header else ""
        if header:
            parts.append(header)
        for example, label in demos:
            if not 0 <= int(label) < len(self.answers):
                raise ValueError(f"demonstration label {label} outside 0..{len(self.answers) - 1}")
            parts.append(self._fill(self.block, example, fragment) + self.cue + self.label_words[int(label)])
        head = self._head(fragment)
        prefix = self.separator.join(parts + [head])
        texts = []
        for q in queries:
            block = self._fill(self.block, q, fragment)
            # A query whose text is empty where the block ends ("Review: {S1}" with S1 = "")
            # fills to the head minus its trailing space: it asks with nothing after the head.
            rest = block[len(head):] if block.startswith(head) else ""
            texts.append(rest + self.cue)
        return prefix, texts


def _paper(block: str, answers=("No", "Yes")) -> Template:
    return Template(block=block, answers=answers)


#: The six templates of the paper (its experiments section). Label 0 is the negative class.
PAPER_TEMPLATES: dict[str, Template] = {
    "5g": _paper('In 5G network, whether {WORD1} related to {WORD2}? Some contextual information: {TEXT}. '
                 'Respond ONLY with "Yes" or "No". {note}'),
    "cola": _paper('Is this sentence "{S1}" grammatically correct? Respond ONLY with "Yes" or "No". {note}'),
    "sst2": _paper('How is the sentiment of the sentence "{S1}"? Respond ONLY with "Great" or "Terrible". {note}',
                   answers=("Terrible", "Great")),
    "mrpc": _paper('Whether sentence "{S1}" and sentence "{S2}" are semantically the same? '
                   'Respond ONLY with "Yes" or "No". {note}'),
    "qqp": _paper('Whether sentence "{S1}" and sentence "{S2}" are paraphrased from each other? '
                  'Respond ONLY with "Yes" or "No". {note}'),
    "qnli": _paper('Whether sentence "{S1}" and sentence "{S2}" have semantic entailment relations? '
                   'Respond ONLY with "Yes" or "No". {note}'),
}


#: Templates the small embedded models answer better than the paper's, chosen on validation
#: examples (``benchmarks/templates.py``; docs/results.md has the measurements). The
#: fragment is a single note in the header, in front of the demonstrations. Label 0 is the
#: negative class, as in :data:`PAPER_TEMPLATES`.
FITTED_TEMPLATES: dict[str, Template] = {
    "sst2": Template(block="Review: {S1}", answers=("negative", "positive"), header="{note}", cue="\nSentiment:"),
}
