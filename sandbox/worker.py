"""A worker, as the supervisor sees it: requests out, answers in, build requests served on the
way, and how it ended, read from where the worker cannot forge it (its parent's wait status,
the cgroup). The loop that answers on the worker's side is sandbox/jail/loop.py; both sandboxes
(sandbox/process.py, sandbox/docker.py) hand out Workers.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from sandbox import binscreen, buildscreen, extension, protocol, stamped
from sandbox.compiler import BuildResult, CompileSpec


class WorkerDied(RuntimeError):
    """The worker is gone (crash, kill, exit) before answering."""


class WorkerTimeout(RuntimeError):
    pass


class WorkerError(RuntimeError):
    """The worker answered with an error (an exception in candidate or task code)."""

    def __init__(self, meta: dict[str, Any]):
        super().__init__(str(meta.get("message", "error")))
        self.meta = meta

    @property
    def error_class(self) -> str:
        return str(self.meta.get("class", "runtime_error"))


class Worker:
    def __init__(self, sandbox: Any, sock: socket.socket, proc: Any):
        """`sandbox` builds kernels (`.build(spec)`); `proc` is a ForkedProcess or the like."""
        self.sandbox, self.sock, self.proc = sandbox, sock, proc
        self.builds: list[BuildResult] = []
        self.notes: list[str] = []
        self.arch_override: str | None = None  # compile-only: build CUDA for this target
        self._closed = False
        self._reader: Any = "unset"  # sandbox/stamped.py's reader, once built

    def proc_cpu_seconds(self) -> float | None:
        """CPU time of everything the worker runs, from outside it; None where not measurable."""
        fn = getattr(self.proc, "cpu_seconds", None)
        return fn() if fn else None

    # --- messages ---
    def call(self, kind: str, meta: Mapping[str, Any] | None = None, tensors: list[Any] | tuple = (),
             deadline: float | None = None) -> tuple[str, dict[str, Any], list[Any]]:
        """Send a request and wait for its answer, serving build requests meanwhile."""
        try:
            protocol.send(self.sock, kind, meta, tensors)
        except OSError:
            raise WorkerDied(self.describe_exit()) from None
        return self.receive(deadline)

    def call_timed(self, kind: str, meta: Mapping[str, Any], deadline: float | None = None
                   ) -> tuple[str, dict[str, Any], list[Any], float]:
        """call, and the round trip in ms by the supervisor's clock: read just before the request
        goes out and, in C without the GIL (sandbox/stamped.py), when the answer is in; a busy
        supervisor (other evaluations' threads) adds nothing to it."""
        if self._reader == "unset":
            self._reader = stamped.reader(self.sandbox)
            self._buf = stamped.buffer(protocol.MAX_HEADER) if self._reader is not None else None
        t0 = time.monotonic_ns()
        try:
            protocol.send(self.sock, kind, meta)
        except OSError:
            raise WorkerDied(self.describe_exit()) from None
        stamp: list[int] = []
        rkind, rmeta, rtensors = self.receive(deadline, stamp)
        return rkind, rmeta, rtensors, (stamp[0] - t0) / 1e6

    def receive(self, deadline: float | None, stamp: list[int] | None = None) -> tuple[str, dict[str, Any], list[Any]]:
        while True:
            try:
                if stamp is None:
                    kind, meta, tensors = protocol.recv(self.sock, deadline)
                else:
                    kind, meta, tensors, at = protocol.recv_stamped(self.sock, deadline, self._reader, self._buf)
                    stamp[:] = [at]
            except protocol.Deadline:
                raise WorkerTimeout("no answer before the deadline") from None
            except protocol.PeerClosed:
                raise WorkerDied(self.describe_exit()) from None
            except (protocol.ProtocolError, OSError) as e:
                raise WorkerDied(f"protocol violation: {e}") from None
            if kind in ("compile", "compile_extension"):  # builds are done here, outside the jail
                self._answer(build_fast_path(self.sandbox, meta, self.arch_override) if kind == "compile"
                             else build_extension(self.sandbox, meta))
                continue
            if kind == "error":
                raise WorkerError(meta)
            return kind, meta, tensors

    def _answer(self, result: BuildResult) -> None:
        self.builds.append(result)
        try:
            protocol.send(self.sock, "compiled", dataclasses.asdict(result))
        except OSError:
            pass

    # --- end of life ---
    def wait_status(self, timeout: float = 2.0) -> int | None:
        """The worker's wait status as its pid-1 parent saw it (None if unknown yet)."""
        return self.proc.wait_status(timeout)

    def describe_exit(self) -> str:
        status = self.wait_status()
        if status is None:
            return "the worker died"
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            extra = " (memory limit)" if self.proc.memory_exceeded() else ""
            return f"the worker was killed by {name}{extra}"
        return f"the worker exited with code {os.WEXITSTATUS(status)} before answering"

    def log_tail(self, limit: int = 4000) -> str:
        return self.proc.log_tail(limit)

    def kill(self) -> None:
        self.proc.kill()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            protocol.send(self.sock, "bye")
        except OSError:
            pass
        self.wait_status(timeout=0.5)
        self.kill()
        self.sock.close()
        self.proc.release()


# --- build requests: compiled here, outside the jail, never loaded here ---------------------------

def build_fast_path(sandbox: Any, meta: dict[str, Any], arch_override: str | None = None) -> BuildResult:
    """A fast-path build request (sandbox/fastpath.py): screened, compiled, binary-screened."""
    def parse() -> tuple[str | None, Callable[[], BuildResult]]:
        spec = CompileSpec(source=str(meta["source"]), lang=str(meta["lang"]),
                           flags=tuple(str(f) for f in meta.get("flags", [])),
                           defines=tuple((str(k), str(v)) for k, v in meta.get("defines", [])),
                           arch=meta.get("arch"), output=str(meta.get("output", "shared")))
        if arch_override and spec.lang == "cuda":
            spec = dataclasses.replace(spec, arch=arch_override)
        why = buildscreen.flag_problem(spec.flags) or buildscreen.source_problem(spec.source)
        # a library that fails the binary screen is never handed to the worker
        return why, lambda: binscreen.screen_build(spec, sandbox.build(spec))
    return _screened_build(parse)


def build_extension(sandbox: Any, meta: dict[str, Any]) -> BuildResult:
    """A load_inline build: compiled here (never loaded here), loaded by the worker from the
    path it is given; the Worker records it in `builds` like a fast-path build (its log for a
    compile error, its path for coverage)."""
    def parse() -> tuple[str | None, Callable[[], BuildResult]]:
        spec = extension.ExtensionSpec.from_meta(meta)
        why = buildscreen.flag_problem(spec.flags()) or buildscreen.source_problem(*spec.cpp_sources,
                                                                                    *spec.cuda_sources)
        return why, lambda: sandbox.build_extension(spec)
    return _screened_build(parse)


def _screened_build(parse: Callable[[], tuple[str | None, Callable[[], BuildResult]]]) -> BuildResult:
    """A build request parsed, screened and built: the compiler runs here, outside the jail, so a
    request that would have it read this machine's files is refused (buildscreen), and a request
    out of shape is a failed build, not an error here."""
    try:
        why, build = parse()
        return BuildResult(False, "", why, 0.0, False, "") if why else build()
    except (KeyError, TypeError, ValueError) as e:
        return BuildResult(False, "", f"bad build request: {e}", 0.0, False, "")
