"""FedDTPT's client (Wu et al., arXiv 2411.00985).

A FedDTPT prompt is a short list of **words** (the tuned text the task template puts in its
``{note}`` slot: ``"Note: w_1 w_2 ... w_M."``; no demonstrations). A word is the unit the
clients edit, the server clusters and the communication is counted in.

One client round (:func:`client_round`), from the current (global) prompt:

1. propose ``num_candidates`` edited prompts:

   * ``kind="feedback"`` (FedDTPT): a proposer language model receives an instruction
     (:func:`build_instruction`) with the task, the current prompt and the client's history
     of kept prompts with the accuracies they got (the inference feedback loop), and
     answers with new prompts, one per line (parsed by :func:`parse_candidates`);
   * ``kind="no-feedback"`` (ablation): the same proposer, without the history;
   * ``kind="random"`` (ablation): ``num_edits`` random word replacements from the task's
     word vocabulary (:func:`random_edit`); no proposer, no feedback;

2. score the current prompt and every candidate by the black-box LLM's accuracy on the
   client's local batch plus the shared balanced public set (``evaluate``, given by the
   caller: :class:`~asyndbt_jax.feddtpt.loop.PromptEvaluator` in the federated loop);
3. keep the best (a candidate must be strictly better than the current prompt to replace
   it) and append it with its accuracy to the history.

Proposer answers are parsed robustly: numbering, bullets, ``Note:``-style labels, quotes and
echoed ``accuracy NN%`` tails are stripped; header lines (ending in ``:``) and prose lines
longer than twice ``max_length`` words are rejected, shorter ones are cut to ``max_length``
words. An answer that yields no new prompt (or a proposer call that raises) is a parse
failure (or a proposer error): it is counted and retried with the next seed, up to
``max_retries`` times; candidates still missing then are counted as ``skipped``. A round
never raises because of what the proposer said.

Proposers are callables ``proposer(instruction: str, *, seed: int, max_tokens: int) -> str``
(``max_tokens``: the answer's length cap, what the request needs: :func:`answer_tokens`):
:class:`LocalProposer` (a local causal LM through transformers ``generate``: seeded sampling,
or greedy with ``temperature=0``) and :class:`OpenAIProposer` (any OpenAI-compatible chat or
completions endpoint). Everything a round draws comes from its ``seed``: rounds are
reproducible (for an OpenAI endpoint as far as the server honours ``seed``).
"""

from __future__ import annotations

import logging
import os
import re
import string
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import numpy as np

log = logging.getLogger(__name__)

CLIENTS = ("feedback", "no-feedback", "random")

Words = tuple[str, ...]
History = tuple[tuple[Words, float], ...]


class ClientConfig(NamedTuple):
    """Hyper-parameters of a FedDTPT client.

    Attributes:
        kind: one of :data:`CLIENTS`: ``"feedback"`` (FedDTPT), ``"no-feedback"``,
            ``"random"``.
        num_candidates: ``N``, edited prompts proposed and scored per round (the current
            prompt is scored too).
        max_length: most words in a prompt.
        history_size: most (prompt, accuracy) entries shown to the proposer.
        max_retries: extra proposer calls per round when an answer gave too few prompts.
        num_edits: word replacements per candidate (``kind="random"``).
    """

    kind: str = "feedback"
    num_candidates: int = 4
    max_length: int = 10
    history_size: int = 8
    max_retries: int = 2
    num_edits: int = 1

    def validate(self) -> ClientConfig:
        if self.kind not in CLIENTS:
            raise ValueError(f"client kind must be one of {CLIENTS}, got {self.kind!r}")
        for name in ("num_candidates", "max_length", "num_edits"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("history_size", "max_retries"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        return self


class ClientRound(NamedTuple):
    """What one client round did.

    Attributes:
        prompt: the kept prompt (the client's upload).
        accuracy: its accuracy on the local batch + public set.
        history: the history with the kept prompt appended.
        candidates: every prompt scored, the current prompt first.
        accuracies: their accuracies.
        instruction: the last instruction sent to the proposer (``""`` for ``random``).
        proposer_calls: proposer calls made (retries included).
        parse_failures: proposer answers from which no new prompt could be parsed.
        proposer_errors: proposer calls that raised (counted, then retried).
        skipped: candidates still missing after the retries.
    """

    prompt: Words
    accuracy: float
    history: History
    candidates: tuple[Words, ...]
    accuracies: tuple[float, ...]
    instruction: str
    proposer_calls: int
    parse_failures: int
    proposer_errors: int
    skipped: int


class Proposer(Protocol):
    """Anything that answers an instruction with text, reproducibly for a given seed."""

    def __call__(self, instruction: str, *, seed: int, max_tokens: int) -> str: ...


def answer_tokens(num_candidates: int, max_length: int) -> int:
    """The tokens an answer of ``num_candidates`` notes of at most ``max_length`` words needs:
    about two tokens a word plus four for the numbering, quotes and the line break of each note
    (4 notes of 10 words: 96). A small local model rarely stops by itself, so this cap is most
    of what a proposer call costs."""
    return int(num_candidates) * (2 * int(max_length) + 4)


# ----------------------------------------------------------------------------- text helpers

_WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")
_ENUMERATION = re.compile(r"^\s*(?:[-*•·#>]+|\(?\d{1,3}\s*[.):\]]|\(?[a-hA-H][.)])\s*")
_LABEL = re.compile(r"^\s*(?:\*\*)?(?:new\s+|improved\s+|revised\s+)?(?:note|prompt|version|option|candidate)"
                    r"\s*\d*\s*(?:\*\*)?\s*[:=\-]\s*", re.IGNORECASE)
_QUOTED = re.compile(r"[\"“”«»`]([^\"“”«»`]+)[\"“”«»`]")
_ACCURACY = re.compile(r"[\s,;:\-(\[]*(?:accuracy|acc\.?)\s*[:=]?\s*\d+(?:\.\d+)?\s*%?[)\]]?\s*$", re.IGNORECASE)


def words_of(text: str) -> Words:
    """The words of a text: runs of letters/digits (inner ``'`` and ``-`` kept); punctuation dropped."""
    return tuple(_WORD.findall(text))


def prompt_text(words: Sequence[str]) -> str:
    """The prompt as the LLM sees it in the ``{note}`` slot (without ``Note:`` and the final period)."""
    return " ".join(words)


def vocabulary_words(vocabulary: Sequence[str]) -> Words:
    """The distinct single words of a fragment vocabulary (n-gram entries are split), in order."""
    return tuple(dict.fromkeys(w for entry in vocabulary for w in words_of(str(entry))))


def task_description(template) -> str:
    """The template's example block with its example slots shown as ``[S1]`` and no note: what
    the proposer is told the LLM is asked."""
    values = {name: f"[{name}]" for _, name, _, _ in string.Formatter().parse(template.block) if name}
    values.update(note="", T="")
    return " ".join(template.block.format(**values).split())


def parse_candidates(answer: str, max_length: int) -> list[Words]:
    """The prompts in a proposer's answer, one per line, de-duplicated, in order.

    Per line: numbering (``1.``, ``2)``), bullets and labels (``Note 2:``) are stripped; if
    the line quotes something, the first quoted text is the prompt; an echoed ``accuracy
    NN%`` tail is dropped. Lines ending with ``:`` (headers such as "Here are 4 notes:"),
    lines without words and lines longer than ``2 * max_length`` words (prose) are
    rejected; the rest are cut to ``max_length`` words.
    """
    found: list[Words] = []
    for line in str(answer).splitlines():
        line = line.strip()
        if not line or line.rstrip("*").endswith(":"):
            continue
        for _ in range(3):
            line = _LABEL.sub("", _ENUMERATION.sub("", line, count=1), count=1)
        quoted = _QUOTED.search(line)
        if quoted:
            line = quoted.group(1)
        line = _ACCURACY.sub("", line)
        line = re.sub(r"^\s*note\s*:\s*", "", line, flags=re.IGNORECASE)
        words = words_of(line)
        if not words or len(words) > 2 * max_length:
            continue
        words = words[:max_length]
        if words not in found:
            found.append(words)
    return found


def build_instruction(description: str, prompt: Sequence[str], history: History, *, num_candidates: int,
                      max_length: int, feedback: bool = True, history_size: int = 8) -> str:
    """The proposer's instruction: the task, the current prompt and (``feedback``) the history.

    The history shown is the last ``history_size`` distinct prompts (the latest accuracy of
    each), sorted by accuracy ascending so the best comes last, next to the request.
    """
    lines = []
    if description:
        lines.append(f"A language model answers this question about a text: {description}")
    lines.append(f"A short note of at most {max_length} words is added after the question to help it answer "
                 "correctly.")
    current = prompt_text(prompt)
    lines.append(f'Current note: "{current}"' if current else "Current note: (empty)")
    if feedback and history and history_size > 0:
        latest: dict[Words, float] = {}
        for words, accuracy in history:
            latest.pop(tuple(words), None)
            latest[tuple(words)] = float(accuracy)
        shown = sorted(list(latest.items())[-history_size:], key=lambda kv: kv[1])
        lines.append("Earlier notes and their accuracy (higher is better):")
        lines += [f'"{prompt_text(w) or "(empty)"}" accuracy {100 * a:.0f}%' for w, a in shown]
    lines.append(f"Write {num_candidates} new note{'s' if num_candidates > 1 else ''}, each at most {max_length} "
                 "words, that could help the model more: change, add or remove a few words. Write one note per "
                 "line and nothing else.")
    return "\n".join(lines)


def random_edit(prompt: Sequence[str], words: Sequence[str], rng: np.random.Generator, *, num_edits: int = 1,
                max_length: int = 10) -> Words:
    """FedDTPT's random-token ablation: replace ``num_edits`` random positions of ``prompt`` with
    uniformly drawn ``words`` (an empty prompt gets a word inserted instead)."""
    if not len(words):
        raise ValueError("random token replacement needs a non-empty word vocabulary")
    out = list(prompt)[:max_length]
    for _ in range(num_edits):
        word = words[int(rng.integers(len(words)))]
        if out:
            out[int(rng.integers(len(out)))] = word
        else:
            out.append(word)
    return tuple(out)


# ----------------------------------------------------------------------------- one round


def _propose_random(config: ClientConfig, prompt: Words, words: Sequence[str], rng) -> list[Words]:
    found: list[Words] = []
    for _ in range(20 * config.num_candidates):  # a small vocabulary may not allow N distinct edits
        if len(found) == config.num_candidates:
            break
        edit = random_edit(prompt, words, rng, num_edits=config.num_edits, max_length=config.max_length)
        if edit != prompt and edit not in found:
            found.append(edit)
    return found


def client_round(config: ClientConfig, prompt: Sequence[str], history: History,
                 evaluate: Callable[[Words], float], *, proposer: Proposer | None = None,
                 vocabulary: Sequence[str] = (), description: str = "", seed: int = 0) -> ClientRound:
    """One FedDTPT client round (module docstring): propose, score, keep the best.

    Args:
        config: the client's :class:`ClientConfig`.
        prompt: the current (global) prompt's words (cut to ``config.max_length``).
        history: the client's earlier ``(prompt, accuracy)`` pairs.
        evaluate: accuracy of a prompt on the client's local batch + public set.
        proposer: the proposer (``kind="feedback"``/``"no-feedback"``).
        vocabulary: the words random replacement draws from (``kind="random"``).
        description: the task as the proposer is told it (:func:`task_description`).
        seed: seeds the random edits and the proposer calls (``seed, seed + 1, ...``).

    Returns:
        A :class:`ClientRound`.
    """
    config.validate()
    prompt = tuple(prompt)[: config.max_length]
    history = tuple((tuple(w), float(a)) for w, a in history)
    instruction, calls, failures, errors = "", 0, 0, 0
    if config.kind == "random":
        candidates = _propose_random(config, prompt, vocabulary, np.random.default_rng(seed))
    else:
        if proposer is None:
            raise ValueError(f"a {config.kind!r} client needs a proposer")
        candidates = []
        for attempt in range(config.max_retries + 1):
            missing = config.num_candidates - len(candidates)
            if missing <= 0:
                break
            instruction = build_instruction(description, prompt, history, num_candidates=missing,
                                            max_length=config.max_length, feedback=config.kind == "feedback",
                                            history_size=config.history_size)
            calls += 1
            try:
                answer = proposer(instruction, seed=int(seed) + attempt,
                                  max_tokens=answer_tokens(missing, config.max_length))
            except Exception as err:  # noqa: BLE001 - a failing proposer must not end the run
                errors += 1
                log.warning("proposer call failed (%s: %s); retrying", type(err).__name__, err)
                continue
            parsed = parse_candidates(answer if isinstance(answer, str) else "", config.max_length)
            if not parsed:
                failures += 1
                log.info("no prompt in the proposer's answer %r", str(answer)[:200])
            for words in parsed:
                if words != prompt and words not in candidates and len(candidates) < config.num_candidates:
                    candidates.append(words)
    skipped = config.num_candidates - len(candidates)
    scored = (prompt, *candidates)
    accuracies = tuple(float(evaluate(words)) for words in scored)
    best = int(np.argmax(accuracies))  # first maximum: the current prompt wins ties
    kept, accuracy = scored[best], accuracies[best]
    return ClientRound(kept, accuracy, history + ((kept, accuracy),), scored, accuracies, instruction, calls,
                       failures, errors, skipped)


# ----------------------------------------------------------------------------- proposers


class LocalProposer:
    """A local causal LM as the proposer (transformers ``generate``).

    The instruction goes through the tokenizer's chat template when it has one (an instruct
    model), else it is the plain prompt. ``temperature > 0``: sampling (top-p) seeded by the
    call's ``seed`` (torch's global RNG is forked, so nothing else is disturbed);
    ``temperature = 0``: greedy decoding (retries then repeat the same answer).

    Args:
        model: a :class:`~asyndbt_jax.llm.models.LoadedModel` (e.g. the scorer's ``loaded``,
            to share one model) or a name :func:`~asyndbt_jax.llm.models.load_causal_lm` accepts.
        temperature, top_p: sampling settings (the answer's length cap comes with each call).

    Attributes:
        calls, generated_tokens: counters.
    """

    def __init__(self, model="smollm2-135m", *, temperature: float = 0.8, top_p: float = 0.95):
        from ..llm.models import LoadedModel, load_causal_lm

        self.loaded = model if isinstance(model, LoadedModel) else load_causal_lm(model)
        self.name = self.loaded.name
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.calls = 0
        self.generated_tokens = 0

    def _ids(self, instruction: str):
        tok = self.loaded.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False,
                                           add_generation_prompt=True)
            return tok(text, return_tensors="pt", add_special_tokens=False)
        return tok(instruction + "\n", return_tensors="pt")

    def __call__(self, instruction: str, *, seed: int, max_tokens: int) -> str:
        import torch

        tok, model = self.loaded.tokenizer, self.loaded.model
        inputs = self._ids(instruction)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        settings = {"do_sample": False}
        if self.temperature > 0:
            settings = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(int(seed) % 2**63)
            out = model.generate(**inputs, max_new_tokens=int(max_tokens), pad_token_id=pad, **settings)
        new = out[0, inputs["input_ids"].shape[1]:]
        self.calls += 1
        self.generated_tokens += int(new.shape[0])
        return tok.decode(new, skip_special_tokens=True)


class OpenAIProposer:
    """Any OpenAI-compatible endpoint as the proposer (the ``openai`` client).

    Args:
        model: the model name the server knows.
        base_url: the endpoint; default ``$OPENAI_BASE_URL``, else OpenAI.
        api_key_env: the environment variable holding the key (``"EMPTY"`` when unset).
        api: ``"chat"`` (the instruction as one user message) or ``"completions"``.
        temperature: the sampling temperature; each call sends its ``seed`` and its answer's
            length cap (``max_tokens``) along.
        timeout, max_retries: per request (the client's own retries with backoff).

    Attributes:
        calls, prompt_tokens, completion_tokens: counters.
    """

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 api: str = "chat", temperature: float = 0.8, timeout: float = 60.0,
                 max_retries: int = 3):
        import openai

        if api not in ("chat", "completions"):
            raise ValueError(f'api must be "chat" or "completions", got {api!r}')
        self.model, self.api = model, api
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        self.name = f"{model}@{self.base_url}"
        self.temperature = float(temperature)
        self.client = openai.OpenAI(base_url=self.base_url, api_key=os.environ.get(api_key_env) or "EMPTY",
                                    timeout=timeout, max_retries=max_retries)
        self.calls = self.prompt_tokens = self.completion_tokens = 0

    def __call__(self, instruction: str, *, seed: int, max_tokens: int) -> str:
        settings = {"model": self.model, "max_tokens": int(max_tokens), "temperature": self.temperature,
                    "seed": int(seed) % 2**31}
        if self.api == "chat":
            r = self.client.chat.completions.create(messages=[{"role": "user", "content": instruction}], **settings)
            text = r.choices[0].message.content if r.choices else ""
        else:
            r = self.client.completions.create(prompt=instruction + "\n", **settings)
            text = r.choices[0].text if r.choices else ""
        self.calls += 1
        usage = getattr(r, "usage", None)
        if usage is not None:
            self.prompt_tokens += int(usage.prompt_tokens or 0)
            self.completion_tokens += int(usage.completion_tokens or 0)
        return text or ""
