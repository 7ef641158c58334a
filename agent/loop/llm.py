"""The LLM client: one chat completion per call against any OpenAI-compatible endpoint.

Retries are ours (tenacity), not the openai package's, so that every attempt is counted and
a Retry-After header is honoured. `complete` never raises for API failures: the loop gets a
`Completion` whose `error` says what went wrong, and records it like any other call.
"""
from __future__ import annotations

import dataclasses
import email.utils
import json
import logging
import random
import threading
import time
import types
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

import openai
from tenacity import Retrying, retry_if_exception, stop_after_attempt

_log = logging.getLogger(__name__)

# Passed explicitly so the openai package never falls back to OPENAI_BASE_URL from the environment.
OPENAI_BASE_URL = "https://api.openai.com/v1"
# Local servers (vLLM, llama.cpp) ignore the key, but the openai package insists on one.
NO_KEY = "EMPTY"

# USD per 1M (input, output) tokens. List prices copied by hand; they may be out of date, and
# cached-input or batch discounts are not modelled. Pass LLMConfig.prices to override.
DEFAULT_PRICES: Mapping[str, tuple[float, float]] = types.MappingProxyType({
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "o3": (2.00, 8.00),
    "o4-mini": (1.10, 4.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "deepseek-chat": (0.27, 1.10),
    "deepseek-reasoner": (0.55, 2.19),
})


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    model: str
    base_url: str | None = None  # None: the OpenAI API
    api_key: str = ""
    timeout_s: float = 120.0  # per attempt
    max_attempts: int = 6
    max_concurrency: int = 4  # requests in flight at once, over all threads using one client
    temperature: float = 0.8
    max_tokens: int = 8192
    prices: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=lambda: DEFAULT_PRICES, hash=False)
    extra_body: Mapping[str, Any] | None = dataclasses.field(default=None, hash=False)  # e.g. vLLM options
    backoff_base_s: float = 1.0  # first wait; doubles per attempt, plus up to this much jitter
    backoff_max_s: float = 60.0
    retry_after_max_s: float = 120.0  # a server asking for longer gets this much
    worst_prompt_tokens: int = 40_000  # the largest prompt expected, for budget reservations only


@dataclasses.dataclass(frozen=True)
class LLMSpec:
    """A run's LLM as stored with the run; the key is read from `api_key_env` where a client is
    made (the CLI, or a batch worker from its own environment) and never stored."""

    model: str
    base_url: str | None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 2

    def config(self, environ: Mapping[str, str]) -> LLMConfig:
        """The client's configuration; local servers (a --base-url) need no key."""
        key = environ.get(self.api_key_env, "")
        if not key and self.base_url is None:
            raise ValueError(f"--model {self.model}: no API key in ${self.api_key_env} "
                             "(and no --base-url for a local server)")
        return LLMConfig(model=self.model, base_url=self.base_url, api_key=key or "none",
                         max_concurrency=self.concurrency)


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str
    model: str  # as the server named it; the requested model when there was no answer
    tokens_in: int
    tokens_out: int
    latency_s: float  # wall time of the whole call, retries and waits included
    cost_usd: float
    attempts: int
    error: str | None = None  # one line; None when there is an answer
    finish_reason: str | None = None  # "stop", "length" (cut off by max_tokens), ...
    cost_known: bool = True  # False: the model has no price in LLMConfig.prices, cost_usd is 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def price_of(model: str, prices: Mapping[str, tuple[float, float]]) -> tuple[float, float] | None:
    """The price of a model, or of the longest priced name it starts with ("gpt-4o-2024-08-06")."""
    if model in prices:
        return prices[model]
    prefixes = [name for name in prices if model.startswith(name + "-")]
    return prices[max(prefixes, key=len)] if prefixes else None


def cost_usd(model: str, tokens_in: int, tokens_out: int,
             prices: Mapping[str, tuple[float, float]]) -> tuple[float, bool]:
    price = price_of(model, prices)
    if price is None:
        return 0.0, False
    return (tokens_in * price[0] + tokens_out * price[1]) / 1e6, True


def describe_endpoint(cfg: LLMConfig) -> str:
    """`model @ url` for a banner; credentials in the URL and the key are never shown."""
    parts = urlsplit(cfg.base_url or OPENAI_BASE_URL)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return f"{cfg.model} @ {urlunsplit((parts.scheme, host, parts.path, '', ''))}"


# --- retry policy ------------------------------------------------------------------------

class _Malformed(Exception):
    """The server answered 2xx with a body that is not a chat completion (a broken proxy)."""


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, (openai.APIConnectionError, _Malformed)):  # timeouts are connection errors
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 429) or exc.status_code >= 500
    return False


def retry_after_s(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (retry-after-ms, or Retry-After in seconds or as a date)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        if (ms := headers.get("retry-after-ms")) is not None:
            return max(0.0, float(ms) / 1000)
        raw = headers.get("retry-after")
        if raw is None:
            return None
        try:
            return max(0.0, float(raw))
        except ValueError:
            when = email.utils.parsedate_to_datetime(raw)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):  # an unreadable header: fall back to our own backoff
        return None


def backoff_s(attempt: int, cfg: LLMConfig) -> float:
    """Exponential backoff after the given attempt (1-based), with jitter so that threads spread out."""
    exponential = cfg.backoff_base_s * 2 ** (attempt - 1)
    return min(cfg.backoff_max_s, exponential + random.uniform(0, cfg.backoff_base_s))


def _describe_failure(exc: BaseException, attempts: int, cfg: LLMConfig) -> str:
    after = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
    if isinstance(exc, openai.APITimeoutError):
        return f"timed out {after} ({cfg.timeout_s:g} s each)"
    if isinstance(exc, openai.APIConnectionError):
        return f"connection failed {after}: {_one_line(str(exc.__cause__ or exc))}"
    if isinstance(exc, _Malformed):
        return f"malformed response {after}: {_one_line(str(exc))}"
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        if code == 429:
            return f"rate limited {after}"
        if code >= 500 or code == 408:
            return f"server error (HTTP {code}) {after}: {_one_line(exc.message)}"
        return f"HTTP {code} (not retried): {_one_line(exc.message)}"
    return f"{type(exc).__name__} {after}: {_one_line(str(exc))}"


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --- the client --------------------------------------------------------------------------

class LLMClient:
    """Thread-safe: the loop may call `complete` from several threads at once."""

    def __init__(self, cfg: LLMConfig):
        if cfg.max_attempts < 1 or cfg.max_concurrency < 1:
            raise ValueError("max_attempts and max_concurrency must be at least 1")
        self.cfg = cfg
        self._client = openai.OpenAI(base_url=cfg.base_url or OPENAI_BASE_URL, api_key=cfg.api_key or NO_KEY,
                                     timeout=cfg.timeout_s, max_retries=0)
        self._slots = threading.BoundedSemaphore(cfg.max_concurrency)

    def worst_case_cost(self, prompt_tokens: int | None = None) -> float:
        """USD that one call can cost at most: a full prompt and max_tokens of answer (0.0 when unpriced).

        Failed attempts are not billed by the APIs, so retries do not multiply it."""
        tokens_in = self.cfg.worst_prompt_tokens if prompt_tokens is None else prompt_tokens
        return cost_usd(self.cfg.model, tokens_in, self.cfg.max_tokens, self.cfg.prices)[0]

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wait(self, state: Any) -> float:
        asked = retry_after_s(state.outcome.exception()) if state.outcome else None
        if asked is not None:
            return min(asked, self.cfg.retry_after_max_s)
        return backoff_s(state.attempt_number, self.cfg)

    def complete(self, messages: list[dict]) -> Completion:
        cfg = self.cfg
        start = time.monotonic()
        attempts = 0

        def attempt() -> Any:
            nonlocal attempts
            with self._slots:  # held per request, so one call's backoff does not block the others
                attempts += 1
                try:
                    response = self._client.chat.completions.create(
                        model=cfg.model, messages=messages, temperature=cfg.temperature, max_tokens=cfg.max_tokens,  # type: ignore[arg-type]
                        extra_body=dict(cfg.extra_body) if cfg.extra_body else None)
                except json.JSONDecodeError as exc:  # the openai package lets this through
                    raise _Malformed(f"body is not JSON ({exc.msg})") from exc
            if not isinstance(getattr(response, "choices", None), list):
                raise _Malformed("JSON without choices")
            return response

        retrying = Retrying(stop=stop_after_attempt(cfg.max_attempts), wait=self._wait,
                            retry=retry_if_exception(_retryable), reraise=True,
                            before_sleep=lambda st: _log.debug("LLM request failed (%s); attempt %d of %d next",
                                                               type(st.outcome.exception() if st.outcome else None).__name__,
                                                               st.attempt_number + 1, cfg.max_attempts))
        _log.debug("LLM request to %s: %d messages, %d characters", cfg.model, len(messages),
                   sum(len(str(m.get("content", ""))) for m in messages))
        try:
            response = retrying(attempt)
        except (openai.APIError, _Malformed) as exc:
            return Completion(text="", model=cfg.model, tokens_in=0, tokens_out=0,
                              latency_s=time.monotonic() - start, cost_usd=0.0, attempts=attempts,
                              error=_describe_failure(exc, attempts, cfg),
                              cost_known=price_of(cfg.model, cfg.prices) is not None)
        done = self._completion(response, attempts, time.monotonic() - start)
        _log.debug("LLM answer from %s: %d tokens in, %d out, %.2f s, %d attempt(s)", done.model, done.tokens_in,
                   done.tokens_out, done.latency_s, attempts)
        return done

    def _completion(self, response: Any, attempts: int, latency_s: float) -> Completion:
        cfg = self.cfg
        usage = getattr(response, "usage", None)
        tokens_in = int(getattr(usage, "prompt_tokens", 0) or 0)
        tokens_out = int(getattr(usage, "completion_tokens", 0) or 0)
        model = getattr(response, "model", None) or cfg.model
        # Priced by the requested name first: servers answer with dated or local names.
        price_model = cfg.model if price_of(cfg.model, cfg.prices) else model
        cost, known = cost_usd(price_model, tokens_in, tokens_out, cfg.prices)
        choice = response.choices[0] if response.choices else None
        if choice is None:
            return Completion(text="", model=model, tokens_in=tokens_in, tokens_out=tokens_out, latency_s=latency_s,
                              cost_usd=cost, attempts=attempts, error="empty response: no choices",
                              cost_known=known)
        message = getattr(choice, "message", None)
        text = getattr(message, "content", None) or ""
        return Completion(text=text, model=model, tokens_in=tokens_in, tokens_out=tokens_out, latency_s=latency_s,
                          cost_usd=cost, attempts=attempts, error=None,
                          finish_reason=getattr(choice, "finish_reason", None), cost_known=known)
