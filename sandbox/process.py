"""The process sandbox, supervisor side: start workers from the fork server and end them
(sandbox/worker.py talks to them).

A worker lives for one evaluation (or one reference session). What the verdict depends on
comes from sources the worker cannot forge: the exit status from its pid-1 parent (the
keeper, sandbox/jail/forkserver.py), its cgroup, the supervisor's clock and builds.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from sandbox import cpus as placement
from sandbox import env as envmod
from sandbox import extension
from sandbox.compiler import BuildResult, CompilerConfig, CompileSpec, build
from sandbox.limits import Cgroup, total_memory
from sandbox.worker import Worker, WorkerDied, WorkerTimeout

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    cache_dir: Path
    root: Path = Path(tempfile.gettempdir()) / "kernelwright"
    memory_bytes: int | None = None  # None: half of this machine's memory
    max_pids: int = 2048  # tasks (threads count): torch.compile's workers and CUDA's threads need room
    max_file_bytes: int = 4 << 30
    threads: int = os.cpu_count() or 1
    isolate: bool = True  # namespaces (network, pid, read-only mounts) where the OS allows
    device: str = "cpu"
    compile_timeout_s: float = 120.0
    extension_timeout_s: float = 600.0  # a load_inline build: tens of seconds on an idle machine, more with CUDA
    handler: str = "evaluator.jail.probe:Probe"
    warm_modules: tuple[str, ...] = ("torch", "evaluator.jail.probe", "?triton")  # "?": if installed
    timing_cpus: tuple[int, ...] = ()  # sandbox/cpus.py: cores kept for timing phases; () none

    @classmethod
    def partitioned(cls, cache_dir: Path, device: str = "cpu", spec: str = "auto", **kw: Any) -> SandboxConfig:
        """The CLI's default: timing cores apart (sandbox/cpus.py), one thread per timing core."""
        timing = placement.partition(spec, device)
        return cls(cache_dir=cache_dir, device=device, timing_cpus=timing,
                   threads=len(timing) or (os.cpu_count() or 1), **kw)

    def cpu_args(self, lent: bool = False) -> dict[str, Any]:
        """What a worker needs to move onto the timing cores and off them again. A worker the
        supervisor cannot follow (no cgroup: not `lent`) stays off the timing cores from the start."""
        if not self.timing_cpus:
            return {}
        return {"timing_cpus": list(self.timing_cpus), "rest_cpus": list(placement.rest_of(self.timing_cpus)),
                "pin_at_start": not lent}

    @property
    def memory_limit(self) -> int:
        return self.memory_bytes or total_memory() // 2

    @property
    def compiler(self) -> CompilerConfig:
        return CompilerConfig(cache_dir=self.cache_dir / "fastpath", timeout_s=self.compile_timeout_s)

    @property
    def extensions(self) -> CompilerConfig:
        """load_inline's extensions (sandbox/extension.py): built here, read-only to workers."""
        return CompilerConfig(cache_dir=self.cache_dir / "extensions", timeout_s=self.extension_timeout_s)


SHARED_CACHES = ("torch_ext", "triton", "inductor")


class ForkedProcess:
    """What a Worker needs to know about the process behind its socket, for a fork-server worker:
    the exit status from its pid-1 parent, its cgroup, its log file. Other sandboxes (sandbox/
    docker.py) give a Worker an object with the same five methods."""

    def __init__(self, pid: int, status_r: int, workdir: Path, log_path: Path, cgroup: Cgroup | None,
                 lender: Any = None):
        self.pid, self.status_r, self.workdir, self.log_path, self.cgroup = pid, status_r, workdir, log_path, cgroup
        self.lender = lender  # sandbox.cpus.Lender following this worker's threads, if any
        self._wait_status: int | None = None

    def wait_status(self, timeout: float) -> int | None:
        if self._wait_status is None:
            ready, _, _ = select.select([self.status_r], [], [], timeout)
            if ready:
                try:
                    data = os.read(self.status_r, 4096)
                    self._wait_status = int(json.loads(data)["wait_status"]) if data else None
                except (OSError, ValueError, KeyError, TypeError):
                    pass
        return self._wait_status

    def memory_exceeded(self) -> bool:
        return bool(self.cgroup and self.cgroup.memory_exceeded())

    def worker_pid(self) -> int | None:
        """The worker's pid as this process sees it: the keeper's grandchild (keeper -> pid 1 of
        the namespace -> worker, sandbox/jail/forkserver.py); None once it is gone."""
        pid = self.pid
        for _ in range(2):
            try:
                kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                return None
            if not kids:
                return None
            pid = int(kids[0])
        return pid

    def cgroup_dir(self) -> Path | None:
        """The worker's cgroup v2 directory, where it has one (the sampler follows it there)."""
        if self.cgroup and self.cgroup.dirs and (self.cgroup.dirs[0] / "cgroup.controllers").exists():
            return self.cgroup.dirs[0]
        return None

    def cpu_seconds(self) -> float | None:
        return self.cgroup.cpu_seconds() if self.cgroup else None

    def log_tail(self, limit: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - limit))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        for target in (lambda: os.killpg(self.pid, signal.SIGKILL), lambda: os.kill(self.pid, signal.SIGKILL)):
            try:
                target()
            except (ProcessLookupError, PermissionError):
                pass
        if self.cgroup:
            self.cgroup.kill_all()

    def release(self) -> None:
        """After kill: free what the process held."""
        os.close(self.status_r)
        if self.cgroup:
            if self.lender:
                self.lender.remove_cgroup(self.cgroup)
            self.cgroup.remove()
        shutil.rmtree(self.workdir, ignore_errors=True)


class ProcessSandbox:
    """Starts workers as forks of one warm fork server; one per supervisor process."""

    def __init__(self, cfg: SandboxConfig, parent_env: dict[str, str] | None = None):
        self.cfg = cfg
        self.parent_env = dict(parent_env if parent_env is not None else os.environ)
        self._forkserver: subprocess.Popen | None = None
        self._ctrl: socket.socket | None = None
        self._lock = threading.Lock()
        self.run_dir = cfg.root / f"run-{uuid.uuid4().hex[:10]}"
        self.isolate = cfg.isolate
        self.notes: list[str] = []  # about the sandbox as a whole; shown with every verdict
        self.description = "process"  # stored in every evaluation's fingerprint
        self.lender = placement.Lender(cfg.timing_cpus) if cfg.timing_cpus else None

    def build(self, spec: CompileSpec) -> BuildResult:
        result = build(spec, self.cfg.compiler)
        _log.debug("build %s (%s): %s, %s in %.2f s", result.key[:12], spec.lang, "ok" if result.ok else "failed",
                   "cached" if result.cached else "compiled", result.seconds)
        return result

    def build_extension(self, spec: extension.ExtensionSpec) -> BuildResult:
        result = extension.build(spec, self.cfg.extensions)
        _log.debug("extension %s (%s): %s, %s in %.2f s", spec.name, result.key[:12], "ok" if result.ok else "failed",
                   "cached" if result.cached else "compiled", result.seconds)
        return result

    def _start_forkserver(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for sub in SHARED_CACHES:
            (self.cfg.cache_dir / sub).mkdir(parents=True, exist_ok=True)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = envmod.worker_env(self.parent_env, str(self.run_dir), self.cfg.threads)
        log = open(self.run_dir / "forkserver.log", "ab")
        env["PYTHONPATH"] = os.pathsep.join(p for p in [_project_root(), env.get("PYTHONPATH", "")] if p)
        self._forkserver = subprocess.Popen(
            [sys.executable, "-m", "sandbox.jail.forkserver", str(theirs.fileno()), *self.cfg.warm_modules],
            pass_fds=[theirs.fileno()], env=env, start_new_session=True, cwd=str(self.run_dir),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        theirs.close()
        log.close()
        ours.settimeout(120)
        try:
            hello = ours.recv(4096)
        except TimeoutError:
            hello = b""
        if not hello:
            err = (self.run_dir / "forkserver.log").read_text(errors="replace")
            raise RuntimeError(f"the fork server failed to start: {err.strip()[-500:]}")
        ours.settimeout(None)
        self._ctrl = ours
        if self.lender:
            self.lender.add_pid(self._forkserver.pid)  # its forks inherit where it is
        if self.cfg.device == "cuda" and self.isolate:
            self._check_cuda_in_jail()

    def _check_cuda_in_jail(self) -> None:
        """Some machines refuse CUDA inside the namespaces (seen on an H100 VM: error 304 at
        cudaGetDeviceCount). Then run without them, and say so with every verdict."""
        worker = self._spawn_locked(60.0, None, None)
        try:
            worker.receive(time.monotonic() + 60)
        except (WorkerDied, WorkerTimeout) as e:
            tail = [ln for ln in worker.log_tail(2000).splitlines() if ln.strip()]
            self.isolate = False
            self.notes.append(f"no namespaces: CUDA does not start inside them here ({(tail or [str(e)])[-1][:160]})")
        finally:
            worker.close()

    def spawn(self, hard_timeout_s: float, handler_args: dict[str, Any] | None = None,
              files: dict[str, str] | None = None) -> Worker:
        with self._lock:
            if self._ctrl is None:
                self._start_forkserver()
            return self._spawn_locked(hard_timeout_s, handler_args, files)

    def _spawn_locked(self, hard_timeout_s: float, handler_args: dict[str, Any] | None,
                      files: dict[str, str] | None) -> Worker:
        assert self._ctrl is not None
        name = uuid.uuid4().hex[:12]
        workdir = self.run_dir / f"w-{name}"
        (workdir / "tmp").mkdir(parents=True)
        for fname, text in (files or {}).items():
            (workdir / fname).write_text(text)
        log_path = workdir / "worker.log"
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        status_r, status_w = os.pipe()
        memory = self.cfg.memory_limit
        cgroup = Cgroup.create(f"w-{name}", memory + (256 << 20), self.cfg.max_pids) if self.isolate else None
        extra = {"KERNELWRIGHT_SANDBOX": "1"}
        env = envmod.worker_env(self.parent_env, str(workdir), self.cfg.threads, extra)
        # caches workers write themselves (torch extensions, Triton, inductor): shared across
        # candidates so a rebuild is paid once; fast-path builds stay supervisor-only
        env["TORCH_EXTENSIONS_DIR"] = str(self.cfg.cache_dir / "torch_ext")
        env["TRITON_CACHE_DIR"] = str(self.cfg.cache_dir / "triton")
        env["TORCHINDUCTOR_CACHE_DIR"] = str(self.cfg.cache_dir / "inductor")
        req = {
            "workdir": str(workdir), "env": env, "handler": self.cfg.handler,
            "handler_args": {**(handler_args or {}), "device": self.cfg.device, "threads": self.cfg.threads,
                             **self.cfg.cpu_args(lent=bool(self.lender and cgroup))},
            "memory_bytes": memory if self.cfg.device == "cpu" else None,  # RLIMIT_AS breaks CUDA
            "max_file_bytes": self.cfg.max_file_bytes, "hard_timeout_s": hard_timeout_s,
            "cgroup": [str(d) for d in cgroup.dirs] if cgroup else [],
            "isolate": {"net": self.isolate, "pid": self.isolate, "mount": self.isolate},
            "writable": [str(workdir), *(str(self.cfg.cache_dir / sub) for sub in SHARED_CACHES)],
        }
        try:
            socket.send_fds(self._ctrl, [json.dumps(req).encode()], [theirs.fileno(), log_fd, status_w])
            reply = self._ctrl.recv(4096)
        finally:
            theirs.close()
            os.close(log_fd)
            os.close(status_w)
        if not reply:
            raise RuntimeError("the fork server died")
        pid = int(json.loads(reply)["pid"])
        _log.debug("worker %s: pid %d, %s, cgroup %s, timeout %.0f s", name, pid,
                   "namespaces" if self.isolate else "no namespaces", "yes" if cgroup else "no", hard_timeout_s)
        lender = self.lender if cgroup else None
        if lender:
            lender.add_cgroup(cgroup)
        return Worker(self, ours, ForkedProcess(pid, status_r, workdir, log_path, cgroup, lender))

    def confine(self, on: bool) -> None:
        """A timing phase begins (on) or ends: see sandbox/cpus.py."""
        if self.lender:
            self.lender.confine(on)

    def close(self) -> None:
        if self._ctrl is not None:
            self._ctrl.close()
            self._ctrl = None
        if self._forkserver is not None:
            try:
                self._forkserver.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._forkserver.kill()
                self._forkserver.wait()
            self._forkserver = None
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> ProcessSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _project_root() -> str:
    return str(Path(__file__).resolve().parent.parent)

