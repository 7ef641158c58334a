"""The LLM client through the real openai package, over real HTTP, against the fake server."""
from __future__ import annotations

import dataclasses
import socket
import threading
import time

import pytest

from agent.loop.llm import (
    DEFAULT_PRICES,
    LLMClient,
    LLMConfig,
    backoff_s,
    cost_usd,
    describe_endpoint,
    price_of,
    retry_after_s,
)
from tests.agent.fake_openai import (
    FakeOpenAI,
    Request,
    empty_body,
    error,
    malformed,
    ok,
    rate_limited,
    server_error,
    slow,
)

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "write a kernel"}]


def config(server: FakeOpenAI, **overrides) -> LLMConfig:
    """Short timeouts and tiny backoff so retries cost milliseconds."""
    base = {"model": "fake-model", "base_url": server.url, "api_key": "test-key", "timeout_s": 2.0, "max_attempts": 4,
                "backoff_base_s": 0.01, "backoff_max_s": 0.05, "retry_after_max_s": 5.0,
                "prices": {"fake-model": (1.0, 2.0)}}
    return LLMConfig(**{**base, **overrides})


def test_normal_answer_carries_text_tokens_and_cost(fake_openai):
    fake_openai.push(ok("hello kernel", tokens_in=1000, tokens_out=500, finish_reason="length"))
    cfg = config(fake_openai, temperature=0.3, max_tokens=777, extra_body={"top_k": 20})
    with LLMClient(cfg) as client:
        c = client.complete(MESSAGES)
    assert c.ok and c.error is None
    assert c.text == "hello kernel"
    assert (c.tokens_in, c.tokens_out, c.attempts) == (1000, 500, 1)
    assert c.cost_usd == pytest.approx(1000 * 1.0 / 1e6 + 500 * 2.0 / 1e6)
    assert c.cost_known
    assert c.finish_reason == "length"
    assert c.model == "fake-model"
    assert c.latency_s > 0
    [req] = fake_openai.requests
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer test-key"
    assert req.body["model"] == "fake-model"
    assert req.body["messages"] == MESSAGES
    assert req.body["temperature"] == 0.3
    assert req.body["max_tokens"] == 777
    assert req.body["top_k"] == 20  # extra_body passed through


def test_missing_usage_counts_zero_tokens(fake_openai):
    fake_openai.push(ok("x", tokens_in=None, tokens_out=None))
    c = LLMClient(config(fake_openai)).complete(MESSAGES)
    assert c.ok and (c.tokens_in, c.tokens_out, c.cost_usd) == (0, 0, 0.0)


def test_unknown_model_costs_zero_and_is_flagged(fake_openai):
    fake_openai.push(ok("x", tokens_in=1000, tokens_out=1000))
    c = LLMClient(config(fake_openai, model="local-llama", prices=DEFAULT_PRICES)).complete(MESSAGES)
    assert c.ok and c.cost_usd == 0.0 and not c.cost_known


def test_dated_model_name_takes_its_family_price():
    assert price_of("gpt-4o-2024-08-06", DEFAULT_PRICES) == DEFAULT_PRICES["gpt-4o"]
    assert price_of("gpt-4o-mini", DEFAULT_PRICES) == DEFAULT_PRICES["gpt-4o-mini"]  # longest prefix wins
    assert price_of("gpt-4omega", DEFAULT_PRICES) is None
    assert cost_usd("gpt-4o", 2_000_000, 0, {"gpt-4o": (2.5, 10.0)}) == (5.0, True)


def test_retry_after_429_waits_as_told(fake_openai):
    fake_openai.push(rate_limited(retry_after=1), ok("after the wait"))
    c = LLMClient(config(fake_openai)).complete(MESSAGES)
    assert c.ok and c.text == "after the wait" and c.attempts == 2
    first, second = fake_openai.requests
    gap = second.at - first.at
    assert 0.9 <= gap < 3.0, gap  # our own backoff would have waited ~0.01 s


def test_retry_after_is_capped(fake_openai):
    fake_openai.push(rate_limited(retry_after=3600), ok("soon"))
    start = time.monotonic()
    c = LLMClient(config(fake_openai, retry_after_max_s=0.2)).complete(MESSAGES)
    assert c.ok and c.attempts == 2
    assert time.monotonic() - start < 2.0


def test_429_without_header_uses_backoff(fake_openai):
    fake_openai.push(rate_limited(retry_after=None), rate_limited(retry_after="not-a-number"), ok("fine"))
    start = time.monotonic()
    c = LLMClient(config(fake_openai)).complete(MESSAGES)
    assert c.ok and c.attempts == 3
    assert time.monotonic() - start < 1.5


def test_server_error_is_retried(fake_openai):
    fake_openai.push(server_error(500), server_error(503), ok("recovered"))
    c = LLMClient(config(fake_openai)).complete(MESSAGES)
    assert c.ok and c.text == "recovered" and c.attempts == 3
    assert len(fake_openai.requests) == 3


def test_timeout_then_success(fake_openai):
    fake_openai.push(slow(3.0), ok("in time"))
    c = LLMClient(config(fake_openai, timeout_s=0.4)).complete(MESSAGES)
    assert c.ok and c.text == "in time" and c.attempts == 2
    assert len(fake_openai.requests) == 2


def test_exhausted_timeouts_are_an_error_value(fake_openai):
    fake_openai.push(slow(3.0), slow(3.0))
    c = LLMClient(config(fake_openai, timeout_s=0.3, max_attempts=2)).complete(MESSAGES)
    assert not c.ok and c.error.startswith("timed out after 2 attempts")
    assert c.text == "" and c.attempts == 2


def test_exhausted_rate_limits_are_an_error_value(fake_openai):
    fake_openai.responder = lambda req: rate_limited(retry_after=0)
    c = LLMClient(config(fake_openai, max_attempts=3)).complete(MESSAGES)
    assert c.error == "rate limited after 3 attempts"
    assert c.attempts == 3 and len(fake_openai.requests) == 3
    assert (c.tokens_in, c.tokens_out, c.cost_usd) == (0, 0, 0.0)


def test_exhausted_server_errors_are_an_error_value(fake_openai):
    fake_openai.responder = lambda req: server_error(502)
    c = LLMClient(config(fake_openai, max_attempts=3)).complete(MESSAGES)
    assert c.error.startswith("server error (HTTP 502) after 3 attempts")
    assert "\n" not in c.error
    assert len(fake_openai.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_errors_are_not_retried(fake_openai, status):
    fake_openai.push(error(status, "Incorrect API key provided" if status == 401 else "bad"), ok("never sent"))
    c = LLMClient(config(fake_openai)).complete(MESSAGES)
    assert not c.ok and c.error.startswith(f"HTTP {status} (not retried)")
    assert c.attempts == 1 and len(fake_openai.requests) == 1


@pytest.mark.parametrize("bad", [malformed(), empty_body(), malformed(b"{}")], ids=["cut-json", "empty", "no-choices"])
def test_malformed_body_is_retried(fake_openai, bad):
    fake_openai.push(bad, ok("good"))
    c = LLMClient(config(fake_openai)).complete(MESSAGES)
    assert c.ok and c.text == "good" and c.attempts == 2


def test_malformed_body_every_time_is_an_error_value(fake_openai):
    fake_openai.responder = lambda req: malformed()
    c = LLMClient(config(fake_openai, max_attempts=2)).complete(MESSAGES)
    assert c.error.startswith("malformed response after 2 attempts")


def test_connection_refused_is_an_error_value():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = LLMConfig(model="m", base_url=f"http://127.0.0.1:{port}/v1", timeout_s=1, max_attempts=2,
                    backoff_base_s=0.01, backoff_max_s=0.02)
    c = LLMClient(cfg).complete(MESSAGES)
    assert c.error.startswith("connection failed after 2 attempts") and c.attempts == 2


def test_concurrency_is_bounded_across_threads(fake_openai):
    fake_openai.responder = lambda req: slow(0.3, "done")
    client = LLMClient(config(fake_openai, max_concurrency=2))
    results = []
    threads = [threading.Thread(target=lambda: results.append(client.complete(MESSAGES))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(results) == 6 and all(r.ok for r in results)
    assert fake_openai.max_in_flight == 2  # 6 would arrive at once without the bound


def test_responder_answers_from_the_prompt(fake_openai):
    def answer(req: Request):
        return ok("FAST" if "Candidate 1" in req.prompt else "FIRST")
    fake_openai.responder = answer
    client = LLMClient(config(fake_openai))
    assert client.complete(MESSAGES).text == "FIRST"
    assert client.complete([{"role": "user", "content": "### Candidate 1: 1.2x"}]).text == "FAST"


def test_fake_server_lists_models(fake_openai):
    import openai
    models = openai.OpenAI(base_url=fake_openai.url, api_key="k", max_retries=0).models.list()
    assert [m.id for m in models.data] == ["fake-model"]


def test_fake_server_stops_while_an_answer_is_pending():
    server = FakeOpenAI([slow(30.0)]).start()
    client = LLMClient(LLMConfig(model="m", base_url=server.url, timeout_s=0.2, max_attempts=1))
    assert client.complete(MESSAGES).error.startswith("timed out")
    start = time.monotonic()
    server.stop()
    assert time.monotonic() - start < 2.0


def test_describe_endpoint_never_shows_secrets():
    cfg = LLMConfig(model="qwen", base_url="http://user:hunter2@gpu-node:8000/v1?key=abc", api_key="sk-secret")
    text = describe_endpoint(cfg)
    assert text == "qwen @ http://gpu-node:8000/v1"
    assert describe_endpoint(dataclasses.replace(cfg, base_url=None)) == "qwen @ https://api.openai.com/v1"


def test_retry_after_header_forms():
    class Response:
        def __init__(self, headers):
            self.headers = headers

    class Exc(Exception):
        def __init__(self, headers):
            self.response = Response(headers)

    assert retry_after_s(Exc({"retry-after": "2.5"})) == 2.5
    assert retry_after_s(Exc({"retry-after-ms": "1500", "retry-after": "9"})) == 1.5
    assert retry_after_s(Exc({"retry-after": "soon"})) is None
    assert retry_after_s(Exc({})) is None
    assert retry_after_s(ValueError()) is None
    assert 50 < retry_after_s(Exc({"retry-after": _http_date(60)})) <= 61


def _http_date(seconds_ahead: float) -> str:
    import email.utils
    return email.utils.formatdate(time.time() + seconds_ahead, usegmt=True)


def test_backoff_grows_and_is_capped():
    cfg = LLMConfig(model="m", backoff_base_s=1.0, backoff_max_s=10.0)
    assert 1.0 <= backoff_s(1, cfg) <= 2.0
    assert 4.0 <= backoff_s(3, cfg) <= 5.0
    assert backoff_s(10, cfg) == 10.0


def test_worst_case_cost_bounds_one_call():
    client = LLMClient(LLMConfig(model="m", max_tokens=1000, worst_prompt_tokens=10_000, prices={"m": (1.0, 4.0)}))
    assert client.worst_case_cost() == pytest.approx((10_000 * 1.0 + 1000 * 4.0) / 1e6)
    assert client.worst_case_cost(prompt_tokens=0) == pytest.approx(1000 * 4.0 / 1e6)
    assert LLMClient(LLMConfig(model="unpriced", prices={})).worst_case_cost() == 0.0
