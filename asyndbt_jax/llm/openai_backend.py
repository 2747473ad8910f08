"""Label scoring on any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama ...).

:class:`OpenAIScorer` has the same ``score(prefix, queries, labels, cache=)`` as the local
scorer and returns the same ``[B, U]`` label log-probs (log-softmax over the labels).

How a prompt is scored (one request per distinct prompt, many in flight at once):

1. ask for one token with the ``top_logprobs`` most likely next tokens (``api="completions"``:
   ``logprobs=k``; ``api="chat"``: the prompt as one user message, ``logprobs=True,
   top_logprobs=k``). A label is found when a top token equals it up to surrounding
   whitespace (several such tokens: their probabilities add).
2. a label not found there (below the top k, or longer than one token) is scored by
   **echo** where the server supports it (completions API: ``prompt + label`` with
   ``echo=True``, and the label's tokens' log-probs are summed, as the local scorer does).
   Echo is trusted only after a check, once per scorer: the echo of the most likely next
   token must give its top-k log-prob (llama-cpp-python 0.3 returns echo log-probs shifted
   by one token, its issue #1983; llama.cpp's own server returns none);
3. where echo is unsupported (chat, or a server that refuses it or fails the check), a
   label longer than one token is scored by the top tokens that begin it (``" Ter"`` for
   ``" Terrible"``: an upper bound on its probability), and a label with no such token gets
   a **floor**: the smallest top-k log-prob (it ranks below all of them, so its log-prob
   is at most that), or ``floor_logprob`` when the server gave no top tokens. Every
   fallback is counted (``stats.echoed``, ``stats.first_token``, ``stats.floored``).

Reliability: requests run concurrently (``concurrency`` at a time, asyncio); a 429, a
5xx, a timeout, a dropped connection or a malformed body is retried with exponential
backoff and full jitter (honouring ``Retry-After``), up to ``max_retries`` times. A per-run
budget (``max_calls``, ``max_tokens``) stops cleanly with :class:`BudgetExceeded` before
the first request past it. Every answer goes to the response cache the moment it
arrives, so a failure or a stop loses nothing already paid for. ``dry_run=True`` makes no
request: it counts the calls and prompt tokens the run would need (after the cache) and
returns uniform label log-probs, so a whole experiment can be projected before it costs
anything (:meth:`OpenAIScorer.projection`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import os
import random
from typing import Sequence

import numpy as np

from .cache import split_cached

log = logging.getLogger(__name__)

API_KINDS = ("completions", "chat")
ECHO_TOLERANCE = 0.05  # nats between a token's echo and top-k log-probs on one server


class BudgetExceeded(RuntimeError):
    """The run's call or token budget is spent. Answers obtained so far are in the cache."""


@dataclasses.dataclass
class Stats:
    """What a scorer has spent and how often it had to fall back or retry."""

    calls: int = 0  # requests that got an answer (retries not counted)
    retries: int = 0  # failed attempts that were retried
    prompt_tokens: int = 0
    completion_tokens: int = 0
    echoed: int = 0  # labels scored by echo
    first_token: int = 0  # labels scored by the top tokens that begin them (no echo)
    floored: int = 0  # labels given the floor log-prob
    projected_calls: int = 0  # dry run: requests that would have been made
    projected_prompt_tokens: int = 0  # dry run: about 4 characters per token

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class _Retryable(Exception):
    pass


def _match(token: str, label: str) -> bool:
    return token.strip() == label.strip()


def _first_token_scores(top: dict[str, float], labels: Sequence[str]) -> np.ndarray:
    """Per label, the summed probability of the top tokens that begin it (``" Ter"`` begins
    ``" Terrible"``), as a log-prob: an upper bound on the label's probability. A token that
    begins several labels is credited to none."""
    out = np.full(len(labels), -np.inf)
    for token, lp in top.items():
        t = token.strip()
        owners = [u for u, label in enumerate(labels) if t and label.strip().startswith(t)]
        if len(owners) == 1:
            out[owners[0]] = np.logaddexp(out[owners[0]], lp)
    return out


class OpenAIScorer:
    """Scores label words after prompts on an OpenAI-compatible endpoint.

    Args:
      model: the model name the server knows.
      base_url: the endpoint (``http://127.0.0.1:8080/v1`` ...); default: ``$OPENAI_BASE_URL``,
        else OpenAI.
      api_key_env: the environment variable holding the key (``"EMPTY"`` is sent when it is
        unset, which local servers accept).
      api: ``"completions"`` (echo fallback available) or ``"chat"``.
      top_logprobs: how many next tokens to ask for (OpenAI allows up to 20).
      concurrency: requests in flight at once.
      max_retries: retries of one request before its error is raised.
      timeout: seconds per request.
      backoff: ``(first, longest)`` delay in seconds; attempt ``a`` waits a uniform draw in
        ``[0, min(longest, first * 2**a)]``.
      max_calls, max_tokens: the run's budget (``None``: unlimited).
      price_per_million: ``(prompt, completion)`` dollars per million tokens, for :attr:`cost`.
      floor_logprob: the floor when the server returned no top tokens.
      dry_run: make no request (see the module doc).
      seed: seeds the jitter.
    """

    backend = "openai"

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 api: str = "completions", top_logprobs: int = 5, concurrency: int = 8, max_retries: int = 6,
                 timeout: float = 60.0, backoff: tuple[float, float] = (0.5, 30.0), max_calls: int | None = None,
                 max_tokens: int | None = None, price_per_million: tuple[float, float] | None = None,
                 floor_logprob: float = -30.0, dry_run: bool = False, seed: int = 0):
        if api not in API_KINDS:
            raise ValueError(f"api must be one of {API_KINDS}, got {api!r}")
        if concurrency < 1 or top_logprobs < 1 or max_retries < 0:
            raise ValueError("concurrency and top_logprobs must be >= 1 and max_retries >= 0")
        self.model = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        self.api_key = os.environ.get(api_key_env) or "EMPTY"
        self.api = api
        self.name = f"{model}@{self.base_url}"  # cache key: the same name on another server is another model
        self.top_logprobs = int(top_logprobs)
        self.concurrency = int(concurrency)
        self.max_retries = int(max_retries)
        self.timeout = float(timeout)
        self.backoff = tuple(map(float, backoff))
        self.max_calls = max_calls
        self.max_tokens = max_tokens
        self.price_per_million = price_per_million
        self.floor_logprob = float(floor_logprob)
        self.dry_run = bool(dry_run)
        self._in_flight = 0
        # echo: None = not checked yet (completions), True = checked and trusted, False = unavailable
        self._echo: bool | None = None if api == "completions" else False
        self.stats = Stats()
        self._rng = random.Random(seed)

    # ------------------------------------------------------------------ public

    @property
    def echo_supported(self) -> bool:
        """False once echo scoring is known to be unavailable or untrustworthy on this server."""
        return self._echo is not False

    @property
    def cost(self) -> float | None:
        """Dollars spent so far, when prices were given."""
        if self.price_per_million is None:
            return None
        pin, pout = self.price_per_million
        return (self.stats.prompt_tokens * pin + self.stats.completion_tokens * pout) / 1e6

    def projection(self) -> str:
        """The dry run's projection, one line."""
        line = (f"dry run on {self.name}: {self.stats.projected_calls} calls, "
                f"~{self.stats.projected_prompt_tokens} prompt tokens (plus echo fallbacks, if any)")
        if self.price_per_million is not None:
            line += f", ~${self.stats.projected_prompt_tokens * self.price_per_million[0] / 1e6:.2f}"
        return line

    def score(self, prefix: str, queries: Sequence[str], labels: Sequence[str], *, cache=None) -> np.ndarray:
        """Label log-probs ``[B, U]`` of ``prefix + queries[b]`` (see the module doc)."""
        labels = list(labels)
        if len(labels) < 2:
            raise ValueError(f"need at least 2 label words, got {labels!r}")
        if any(not lab.strip() for lab in labels) or len({lab.strip() for lab in labels}) != len(labels):
            raise ValueError(f"label words must be non-empty and differ beyond whitespace, got {labels!r}")
        prompts = [prefix + q for q in queries]
        if not prompts:
            raise ValueError("no queries to score")
        out, todo = split_cached(cache, self.backend, self.name, prompts, labels)
        unique = list(dict.fromkeys(prompts[b] for b in todo))
        if not unique:
            return out
        if self.dry_run:
            self.stats.projected_calls += len(unique)
            self.stats.projected_prompt_tokens += sum(len(p) for p in unique) // 4
            for b in todo:
                out[b] = -np.log(len(labels))
            return out
        answers = _run_coroutine(self._score_all(unique, labels, cache))
        for b in todo:
            out[b] = answers[prompts[b]]
        return out

    # ------------------------------------------------------------------ requests

    async def _score_all(self, prompts: list[str], labels: list[str], cache) -> dict[str, np.ndarray]:
        import openai

        client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=self.timeout)
        sem = asyncio.Semaphore(self.concurrency)
        self._echo_lock = asyncio.Lock()
        answers: dict[str, np.ndarray] = {}

        async def one(prompt: str):
            async with sem:
                raw = await self._score_prompt(client, prompt, labels)
            lp = raw - np.logaddexp.reduce(raw)
            answers[prompt] = lp
            if cache is not None:  # stored at once: a later failure loses nothing
                cache.put(self.backend, self.name, [prompt], labels, lp[None])

        pending = {asyncio.ensure_future(one(p)) for p in prompts}
        errors: list[BaseException] = []
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                errors += [t.exception() for t in done if t.exception() is not None]
                if any(not isinstance(e, BudgetExceeded) for e in errors):
                    # a request failed for good: stop the rest (a spent budget instead lets the
                    # requests in flight finish, since they are paid for)
                    for t in pending:
                        t.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
                    break
        finally:
            await client.close()
        if errors:
            budget = [e for e in errors if isinstance(e, BudgetExceeded)]
            raise (budget or errors)[0]
        return answers

    def _reserve(self) -> None:
        if self.max_calls is not None and self.stats.calls + self._in_flight >= self.max_calls:
            raise BudgetExceeded(f"call budget spent: {self.stats.calls} of max_calls={self.max_calls} calls made "
                                 f"({self.stats.tokens} tokens); answers so far are in the response cache")
        if self.max_tokens is not None and self.stats.tokens >= self.max_tokens:
            raise BudgetExceeded(f"token budget spent: {self.stats.tokens} of max_tokens={self.max_tokens} tokens "
                                 f"({self.stats.calls} calls); answers so far are in the response cache")

    async def _request(self, client, **kwargs):
        """One request with retries; returns the parsed response."""
        import openai

        for attempt in range(self.max_retries + 1):
            self._reserve()
            self._in_flight += 1  # counted against max_calls while it runs: concurrency never overshoots
            try:
                if self.api == "chat":
                    response = await client.chat.completions.create(model=self.model, **kwargs)
                else:
                    response = await client.completions.create(model=self.model, **kwargs)
                if not getattr(response, "choices", None):
                    raise _Retryable(f"malformed response without choices: {str(response)[:200]}")
                self.stats.calls += 1
                usage = getattr(response, "usage", None)
                if usage is not None:
                    self.stats.prompt_tokens += int(usage.prompt_tokens or 0)
                    self.stats.completion_tokens += int(usage.completion_tokens or 0)
                return response
            except openai.APIConnectionError as err:  # includes timeouts
                if attempt == self.max_retries:
                    raise ConnectionError(f"cannot reach {self.base_url} after {attempt + 1} attempts: {err}") from err
                retry_after = None
            except (openai.RateLimitError, openai.InternalServerError, openai.APIResponseValidationError,
                    json.JSONDecodeError, _Retryable) as err:
                if attempt == self.max_retries:
                    raise
                response = getattr(err, "response", None)
                retry_after = _retry_after(response)
            except openai.APIStatusError as err:
                if err.status_code < 500 and err.status_code not in (408, 409, 429):
                    raise
                if attempt == self.max_retries:
                    raise
                retry_after = _retry_after(err.response)
            finally:
                self._in_flight -= 1
            self.stats.retries += 1
            first, longest = self.backoff
            delay = self._rng.uniform(0, min(longest, first * 2**attempt))
            await asyncio.sleep(max(delay, retry_after or 0.0))
        raise AssertionError("unreachable")

    async def _score_prompt(self, client, prompt: str, labels: list[str]) -> np.ndarray:
        top = await self._top_tokens(client, prompt)
        raw = np.full(len(labels), -np.inf)
        for token, lp in top.items():
            for u, label in enumerate(labels):
                if _match(token, label):
                    raw[u] = np.logaddexp(raw[u], lp)
        floor = min(top.values()) if top else self.floor_logprob
        missing = np.flatnonzero(~np.isfinite(raw))
        if len(missing) and self._echo is None and top:
            async with self._echo_lock:
                if self._echo is None:
                    self._echo = await self._verify_echo(client, prompt, top)
        first = None
        for u in missing:
            echoed = await self._echo_score(client, prompt, labels[u]) if self._echo else None
            if echoed is not None:
                self.stats.echoed += 1
                raw[u] = echoed
                continue
            if first is None:
                first = _first_token_scores(top, labels)
            if np.isfinite(first[u]):
                self.stats.first_token += 1
                raw[u] = first[u]
            else:
                self.stats.floored += 1
                raw[u] = floor
        return raw

    async def _verify_echo(self, client, prompt: str, top: dict[str, float]) -> bool:
        """Echo the most likely next token and compare with its top-k log-prob: some servers
        return echo log-probs shifted by one token (llama-cpp-python, its issue #1983), and
        such numbers must not be mixed with the top-k ones."""
        token, expected = max(top.items(), key=lambda kv: kv[1])
        got = await self._echo_score(client, prompt, token) if token.strip() else None
        ok = got is not None and abs(got - expected) <= ECHO_TOLERANCE
        if not ok:
            log.warning("echo log-probs from %s disagree with its top_logprobs (%s vs %.4f for %r): echo scoring "
                        "disabled, labels missing from the top %d get first-token or floor scores", self.base_url,
                        "none" if got is None else f"{got:.4f}", expected, token, self.top_logprobs)
        return ok

    async def _top_tokens(self, client, prompt: str) -> dict[str, float]:
        """The top next tokens and their log-probs (empty when the server gave none)."""
        if self.api == "chat":
            r = await self._request(client, messages=[{"role": "user", "content": prompt}], max_tokens=1,
                                    temperature=0, logprobs=True, top_logprobs=self.top_logprobs)
            content = (r.choices[0].logprobs.content or []) if r.choices[0].logprobs else []
            return {t.token: float(t.logprob) for t in content[0].top_logprobs} if content else {}
        r = await self._request(client, prompt=prompt, max_tokens=1, temperature=0, logprobs=self.top_logprobs)
        lp = r.choices[0].logprobs
        tops = (lp.top_logprobs or []) if lp else []
        return {t: float(v) for t, v in (tops[0] or {}).items()} if tops else {}

    async def _echo_score(self, client, prompt: str, label: str) -> float | None:
        """Sum of the label's token log-probs by echo, or ``None`` where echo is unsupported
        (then no further echo is tried on this scorer)."""
        import openai

        try:
            r = await self._request(client, prompt=prompt + label, max_tokens=1, temperature=0, logprobs=0, echo=True)
        except openai.BadRequestError as err:
            log.warning("echo scoring refused by %s (%s); missing labels get first-token or floor scores",
                        self.base_url, err)
            self._echo = False
            return None
        lp = r.choices[0].logprobs
        if lp is None or not lp.text_offset:
            self._echo = False
            return None
        start, end = len(prompt), len(prompt) + len(label)
        total, found = 0.0, False
        for offset, token, value in zip(lp.text_offset, lp.tokens, lp.token_logprobs):
            if offset < start < offset + len(token):  # a token spans the prompt/label boundary
                return None
            if start <= offset < end:
                if value is None:
                    return None
                total += float(value)
                found = True
        return total if found else None


def _retry_after(response) -> float | None:
    try:
        value = response.headers.get("retry-after") if response is not None else None
        return min(float(value), 60.0) if value is not None else None
    except (TypeError, ValueError):
        return None


def _run_coroutine(coro):
    """``asyncio.run``, also from code already inside an event loop (notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
