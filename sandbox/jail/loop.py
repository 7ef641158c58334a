"""The worker's request loop: the supervisor asks, a handler object answers.

Runs inside the sandbox, next to untrusted code. It only reports raw data; the supervisor
decides what any of it means. Builds requested by the fast path and by load_inline are
forwarded to the supervisor, which compiles them outside the sandbox and owns the cache.
"""
from __future__ import annotations

import importlib
import os
import socket
import traceback
from typing import Any

from sandbox import fastpath, protocol
from sandbox.compiler import BuildResult, CompileSpec
from sandbox.extension import ExtensionSpec

MAX_TRACE = 8000


class CompileFailure(Exception):
    """A kernel build failed; carries the compiler's log."""

    def __init__(self, log: str):
        super().__init__(log)
        self.log = log


class Rpc:
    """Requests from the worker to the supervisor (only builds, for now: fast-path libraries and
    load_inline's extensions)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def build(self, spec: CompileSpec) -> BuildResult:
        protocol.send(self.sock, "compile", {
            "source": spec.source, "lang": spec.lang, "flags": list(spec.flags),
            "defines": [list(d) for d in spec.defines], "arch": spec.arch, "output": spec.output,
        })
        return self._result()

    def build_extension(self, spec: ExtensionSpec) -> BuildResult:
        """A load_inline extension (sandbox/extension.py), built by the supervisor."""
        protocol.send(self.sock, "compile_extension", spec.to_meta())
        return self._result()

    def _result(self) -> BuildResult:
        kind, meta, _ = protocol.recv(self.sock)
        if kind != "compiled":
            raise protocol.ProtocolError(f"expected a build result, got {kind!r}")
        return BuildResult(bool(meta["ok"]), str(meta["path"]), str(meta["log"]),
                           float(meta["seconds"]), bool(meta["cached"]), str(meta["key"]))


def _error_meta(e: BaseException) -> dict[str, Any]:
    trace = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    if len(trace) > MAX_TRACE:
        trace = trace[:MAX_TRACE // 2] + "\n[...]\n" + trace[-MAX_TRACE // 2:]
    kind = "compile_error" if isinstance(e, (CompileFailure, fastpath.CompileError)) else "runtime_error"
    message = f"{type(e).__name__}: {e}".strip()
    log = getattr(e, "log", "")
    return {"class": kind, "type": type(e).__name__, "message": message[:2000], "traceback": trace,
            "log": log[-MAX_TRACE:] if isinstance(log, str) else ""}


def serve(sock: socket.socket, req: dict[str, Any], notes: list[str]) -> None:
    module, _, cls = req["handler"].partition(":")
    rpc = Rpc(sock)
    fastpath.set_builder(rpc.build)
    handler = getattr(importlib.import_module(module), cls)(rpc, req.get("handler_args", {}))
    protocol.send(sock, "hello", {"pid": os.getpid(), "notes": notes})
    while True:
        try:
            kind, meta, tensors = protocol.recv(sock)
        except (protocol.PeerClosed, OSError):
            return
        if kind == "bye":
            return
        method = getattr(handler, f"do_{kind}", None)
        if method is None:
            protocol.send(sock, "error", {"class": "protocol", "message": f"unknown request {kind!r}"})
            continue
        try:
            rkind, rmeta, rtensors = method(meta, tensors)
        except BaseException as e:  # noqa: BLE001 - candidate code may raise anything, SystemExit too
            protocol.send(sock, "error", _error_meta(e))
            continue
        protocol.send(sock, rkind, rmeta, rtensors)
