"""A small OpenAI-compatible HTTP server for tests: real sockets, scripted answers.

    with FakeOpenAI([rate_limited(1.0), ok("```python ...```")]) as server:
        LLMClient(LLMConfig(model="m", base_url=server.url, ...)).complete(messages)
        server.requests[0].body["messages"]

Each POST /v1/chat/completions takes the next queued step; when the queue is empty the
responder (a function of the request) answers, and without one the server replies 500 so a
test that runs out of script fails loudly. Every request is recorded.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable


@dataclasses.dataclass(frozen=True)
class Step:
    """One scripted reply. Build them with the helpers below."""

    status: int = 200
    text: str = ""
    tokens_in: int | None = 10  # None: no usage block in the answer
    tokens_out: int | None = 20
    finish_reason: str = "stop"
    model: str | None = None  # None: echo the requested model
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0  # sleep before answering
    raw: bytes | None = None  # sent as the body instead of a completion


def ok(text: str, tokens_in: int | None = 10, tokens_out: int | None = 20, *, finish_reason: str = "stop",
       model: str | None = None, delay_s: float = 0.0) -> Step:
    return Step(text=text, tokens_in=tokens_in, tokens_out=tokens_out, finish_reason=finish_reason,
                model=model, delay_s=delay_s)


def rate_limited(retry_after: float | str | None = 1) -> Step:
    headers = () if retry_after is None else (("Retry-After", str(retry_after)),)
    return error(429, "Rate limit reached", headers=headers)


def server_error(status: int = 500) -> Step:
    return error(status, "The server had an error while processing your request")


def error(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Step:
    body = {"error": {"message": message, "type": "fake_error", "code": str(status)}}
    return Step(status=status, headers=(("Content-Type", "application/json"), *headers),
                raw=json.dumps(body).encode())


def slow(delay_s: float, text: str = "late") -> Step:
    return ok(text, delay_s=delay_s)


def malformed(body: bytes = b'{"id": "chatcmpl-1", "choices": [') -> Step:
    return Step(headers=(("Content-Type", "application/json"),), raw=body)


def empty_body() -> Step:
    return malformed(b"")


@dataclasses.dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # the decoded JSON, or None
    at: float  # time.monotonic() when it arrived

    @property
    def prompt(self) -> str:
        """All message contents, joined: what a responder usually looks at."""
        messages = (self.body or {}).get("messages", [])
        return "\n".join(str(m.get("content", "")) for m in messages)


Responder = Callable[[Request], Step]


class FakeOpenAI:
    def __init__(self, script: Iterable[Step] = (), responder: Responder | None = None):
        self._script: deque[Step] = deque(script)
        self.responder = responder
        self.requests: list[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # wakes slow replies at shutdown
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def push(self, *steps: Step) -> None:
        with self._lock:
            self._script.extend(steps)

    def start(self) -> FakeOpenAI:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = False  # server_close joins every handler thread
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next_step(self, request: Request) -> Step:
        with self._lock:
            if self._script:
                return self._script.popleft()
        if self.responder is not None:
            return self.responder(request)
        return error(500, "fake server: no scripted reply left")

    def _enter(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAI
    protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive threads at shutdown

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> None:
        try:
            self.send_response(status)
            names = set()
            for name, value in headers:
                self.send_header(name, value)
                names.add(name.lower())
            if "content-type" not in names:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
            pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            models = {"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0,
                                                  "owned_by": "fake"}]}
            self._send(200, json.dumps(models).encode())
        else:
            self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())

    def do_POST(self) -> None:
        fake = self.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = Request(path=self.path, headers={k.lower(): v for k, v in self.headers.items()}, body=body,
                          at=time.monotonic())
        fake._enter(request)
        try:
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())
                return
            step = fake._next_step(request)
            if step.delay_s and fake._stopping.wait(step.delay_s):
                return  # shutting down: drop the answer
            self._send(step.status, step.raw if step.raw is not None else self._completion(step, body),
                       step.headers)
        finally:
            fake._leave()

    def _completion(self, step: Step, body: Any) -> bytes:
        model = step.model or (body or {}).get("model") or "fake-model"
        answer: dict[str, Any] = {
            "id": f"chatcmpl-fake-{next(self.fake._ids)}", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": step.text},
                         "finish_reason": step.finish_reason, "logprobs": None}],
        }
        if step.tokens_in is not None and step.tokens_out is not None:
            answer["usage"] = {"prompt_tokens": step.tokens_in, "completion_tokens": step.tokens_out,
                               "total_tokens": step.tokens_in + step.tokens_out}
        return json.dumps(answer).encode()
