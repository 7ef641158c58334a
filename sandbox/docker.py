"""The docker sandbox: each worker in a container of its own, through the docker Python SDK.

The evaluator sees what ProcessSandbox offers (`spawn`, `build`, `close`, `cfg`, `notes`) and
gets the same Worker: the protocol runs over a UNIX socket that the supervisor listens on in
a directory mounted into the container (the only way out of a container with no network).

A container gets: no network, a read-only root (the image of sandbox/image.py), a tmpfs work
directory, memory, pids and CPU limits, no capabilities, no-new-privileges, the supervisor's
own uid, the build caches (fast path, load_inline) and kernelwright's packages read-only, GPUs by device request
with device cuda. It gets no writable host path and no environment but the scrubbed one.
Its pid 1 (sandbox/jail/container.py) reports the worker's exit through `docker wait`; killing it
is `docker kill`, and nothing the candidate started outlives the container.

Starting a container and importing torch in it takes seconds, so `pool` containers are kept
started and waiting, torch imported; a spawn takes a ready one, and the next one starts
when a worker's container goes away (between evaluations, not during one). That warm-up
burns CPU, so when `device_lock` is set (the evaluator's DeviceLock) it runs as shared device
work, never while a candidate is being timed; so does the removal of finished containers.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import importlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from sandbox import env as envmod
from sandbox import extension, protocol
from sandbox.compiler import BuildResult, CompileSpec, build
from sandbox.process import SandboxConfig
from sandbox.worker import Worker

WORKDIR = "/kw/work"
SOCKDIR = "/kw/sock"
APPDIR = "/kw/app"
PACKAGES = ("sandbox", "evaluator", "tasks")  # what a worker imports of kernelwright
LABEL = "org.kernelwright.sandbox"


class DockerUnavailable(RuntimeError):
    """No docker daemon answers, or the image is missing."""


@dataclasses.dataclass(frozen=True)
class DockerConfig:
    image: str
    pool: int = 1  # containers started ahead, waiting with torch imported
    work_bytes: int = 1 << 30  # the tmpfs work directory (counts against the memory limit)
    start_timeout_s: float = 180.0  # container start and warm imports


def client_or_raise() -> Any:
    try:
        import docker

        client = docker.from_env(timeout=120)
        client.ping()
        return client
    except Exception as e:  # noqa: BLE001 - the SDK raises many kinds; all mean "not usable"
        raise DockerUnavailable(f"no docker daemon answers ({str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__})") from None


def _exit_to_wait_status(code: int) -> int:
    """docker's exit code (128 + signal for a killed worker) as an os.wait status."""
    if 128 < code < 128 + 65 and (code - 128) in signal.Signals._value2member_map_:
        return code - 128
    return (code & 0xFF) << 8


class ContainerProcess:
    """The container behind a Worker's socket: what sandbox.worker.Worker asks of a process."""

    def __init__(self, sandbox: DockerSandbox, container: Any, hostdir: Path):
        self.sandbox, self.container, self.hostdir = sandbox, container, hostdir
        self._wait_status: int | None = None

    def wait_status(self, timeout: float) -> int | None:
        if self._wait_status is None:
            try:
                code = self.container.wait(timeout=max(timeout, 0.05))["StatusCode"]
                self._wait_status = _exit_to_wait_status(int(code))
            except Exception:  # noqa: BLE001 - still running (read timeout) or already gone
                return None
        return self._wait_status

    def memory_exceeded(self) -> bool:
        try:
            self.container.reload()
            return bool(self.container.attrs["State"].get("OOMKilled"))
        except Exception:  # noqa: BLE001
            return False

    def worker_pid(self) -> int | None:
        """The worker's pid on this host (the coverage sampler's target): the only child of the
        container's pid 1, the keeper (sandbox/jail/container.py); None where it cannot be seen."""
        try:
            self.container.reload()
            keeper = int(self.container.attrs["State"]["Pid"])
            kids = Path(f"/proc/{keeper}/task/{keeper}/children").read_text().split()
        except Exception:  # noqa: BLE001 - gone, or the engine runs on another machine
            return None
        return int(kids[0]) if keeper and kids else None

    def log_tail(self, limit: int) -> str:
        try:
            return self.container.logs(stdout=True, stderr=True, tail=400).decode(errors="replace")[-limit:]
        except Exception:  # noqa: BLE001
            return ""

    def kill(self) -> None:
        try:
            self.container.kill()
        except Exception:  # noqa: BLE001 - it has exited already
            pass

    def release(self) -> None:
        self.sandbox._release(self.container, self.hostdir)


@dataclasses.dataclass
class _Started:
    container: Any
    listener: socket.socket
    hostdir: Path


@dataclasses.dataclass
class _Ready:
    container: Any
    conn: socket.socket
    hostdir: Path


class DockerSandbox:
    """Starts one container per worker; the same interface as ProcessSandbox."""

    def __init__(self, cfg: SandboxConfig, docker_cfg: DockerConfig, parent_env: dict[str, str] | None = None,
                 client: Any = None):
        self.cfg, self.docker_cfg = cfg, docker_cfg
        self.parent_env = dict(parent_env if parent_env is not None else os.environ)
        self.client = client or client_or_raise()
        try:
            self.client.images.get(docker_cfg.image)
        except Exception:  # noqa: BLE001
            raise DockerUnavailable(f"no docker image {docker_cfg.image!r} here "
                                    "(build one with `kernelwright sandbox build-image`)") from None
        self.run_id = uuid.uuid4().hex[:10]
        self._sweep()
        self.run_dir = cfg.root.resolve() / f"docker-{self.run_id}"  # docker mounts need absolute paths
        # a UNIX socket's path has room for about 100 bytes: a deep work directory gets its
        # sockets' directories under the temp dir instead
        self.sock_root = self.run_dir if len(str(self.run_dir)) < 60 else \
            Path(tempfile.mkdtemp(prefix=f"kwd-{self.run_id}-")).resolve()
        self.isolate = True
        self.notes: list[str] = []
        self.description = f"docker {docker_cfg.image}"  # stored in every evaluation's fingerprint
        self._lock = threading.Lock()
        self.device_lock: Any = None  # evaluator.devicelock.DeviceLock, set by whoever shares the device
        self._pool: list[tuple[concurrent.futures.Future, threading.Event]] = []
        self._bg = concurrent.futures.ThreadPoolExecutor(max_workers=max(2, docker_cfg.pool + 1),
                                                         thread_name_prefix="kw-docker")
        self._removals: list[concurrent.futures.Future] = []
        self._spawned = False
        self._closed = False

    def _sweep(self) -> None:
        """Remove exited workers' containers a killed supervisor left behind (it could not remove
        them itself); a live sandbox removes its own as they exit, so only leftovers are found."""
        try:
            for c in self.client.containers.list(all=True, filters={"label": LABEL, "status": "exited"}):
                c.remove(force=True)
        except Exception:  # noqa: BLE001 - removed meanwhile, or the engine refused: not this run's concern
            pass

    def build(self, spec: CompileSpec) -> BuildResult:
        return build(spec, self.cfg.compiler)

    def build_extension(self, spec: extension.ExtensionSpec) -> BuildResult:
        """load_inline's extensions too are built here (the image holds no compiler)."""
        return extension.build(spec, self.cfg.extensions)

    # --- containers ------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = envmod.worker_env(self.parent_env, WORKDIR, self.cfg.threads, {"KERNELWRIGHT_SANDBOX": "1"})
        env["PYTHONPATH"] = APPDIR
        return env

    def _mounts(self, hostdir: Path) -> dict[str, dict[str, str]]:
        volumes = {str(hostdir): {"bind": SOCKDIR, "mode": "ro"}}
        for cache in (self.cfg.compiler.cache_dir, self.cfg.extensions.cache_dir):  # fast path, load_inline
            cache.mkdir(parents=True, exist_ok=True)  # builds name the caches' paths as given:
            volumes[str(cache.resolve())] = {"bind": os.path.abspath(cache), "mode": "ro"}
        top = self.cfg.handler.partition(":")[0].split(".")[0]
        for name in dict.fromkeys([*PACKAGES, top]):
            pkg = Path(importlib.import_module(name).__file__ or "").resolve().parent
            volumes[str(pkg)] = {"bind": f"{APPDIR}/{name}", "mode": "ro"}
        return volumes

    def _tmpfs(self) -> dict[str, str]:
        mounts = {WORKDIR: f"rw,exec,nosuid,nodev,size={self.docker_cfg.work_bytes},mode=1777"}
        if not any(Path(p).resolve().is_relative_to("/tmp") for p in (sys.prefix, sys.base_prefix)):
            mounts["/tmp"] = "rw,nosuid,nodev,size=64m,mode=1777"  # (it would hide an interpreter kept there)
        return mounts

    def _start(self) -> _Started:
        """Create and start one container; it connects once its imports are done."""
        from docker.types import DeviceRequest, LogConfig, Ulimit

        name = uuid.uuid4().hex[:12]
        hostdir = self.sock_root / f"c-{name}"
        hostdir.mkdir(parents=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(hostdir / "kw.sock"))
        listener.listen(1)
        cuda = self.cfg.device == "cuda"
        memory = self.cfg.memory_limit
        try:
            container = self.client.containers.run(
                self.docker_cfg.image,
                [sys.executable, "-m", "sandbox.jail.container", f"{SOCKDIR}/kw.sock", *self.cfg.warm_modules],
                detach=True, name=f"kw-{self.run_id}-{name}", labels={LABEL: self.run_id},
                environment=self._env(), working_dir=WORKDIR, user=f"{os.getuid()}:{os.getgid()}",
                network_mode="none", read_only=True, volumes=self._mounts(hostdir),
                tmpfs=self._tmpfs(),
                mem_limit=memory + (512 << 20), memswap_limit=memory + (512 << 20),
                pids_limit=self.cfg.max_pids, nano_cpus=int(self.cfg.threads * 1e9),
                cap_drop=["ALL"], security_opt=["no-new-privileges"],
                ulimits=[Ulimit(name="memlock", soft=-1, hard=-1)] if cuda else None,
                device_requests=[DeviceRequest(count=-1, capabilities=[["gpu"]])] if cuda else None,
                log_config=LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
            )
        except Exception as e:  # noqa: BLE001 - the SDK's APIError and the like
            listener.close()
            shutil.rmtree(hostdir, ignore_errors=True)
            raise RuntimeError(f"docker could not start a sandbox container: {str(e).strip()[:300]}") from None
        return _Started(container, listener, hostdir)

    def _connect(self, started: _Started) -> socket.socket:
        """Accept the container's one connection, then close the door behind it."""
        deadline = time.monotonic() + self.docker_cfg.start_timeout_s
        started.listener.settimeout(0.5)
        try:
            while True:
                try:
                    conn, _ = started.listener.accept()
                    conn.settimeout(None)
                    return conn
                except TimeoutError:
                    pass
                started.container.reload()
                if started.container.status not in ("created", "running") or time.monotonic() > deadline:
                    tail = ContainerProcess(self, started.container, started.hostdir).log_tail(600).strip()
                    self._discard(started.container, started.hostdir)
                    raise RuntimeError(f"the sandbox container did not start ({started.container.status}): {tail}")
        finally:
            started.listener.close()
            try:
                os.unlink(started.hostdir / "kw.sock")
            except OSError:
                pass

    def _warm(self) -> _Ready:
        started = self._start()
        if self._closed:  # close() came while docker was starting it
            started.listener.close()
            self._discard(started.container, started.hostdir)
            raise RuntimeError("the docker sandbox is closed")
        return _Ready(started.container, self._connect(started), started.hostdir)

    def _warm_pooled(self, begun: threading.Event) -> _Ready:
        lock = self.device_lock
        with lock.shared() if lock is not None else contextlib.nullcontext():
            begun.set()
            return self._warm()

    def _take(self) -> concurrent.futures.Future | None:
        """A pooled container that is ready or warming up. Never one still waiting for the
        device lock: our caller may hold it shared while a timing phase waits for it."""
        for fut, begun in list(self._pool):
            if fut.done() and fut.exception() is not None:
                self._pool.remove((fut, begun))
        for fut, begun in self._pool:
            if begun.is_set():
                self._pool.remove((fut, begun))
                return fut
        return None

    def _refill(self) -> None:
        """Top the pool up. Called when a container goes away (after an evaluation, so the next
        one warms up while the caller thinks or waits for its LLM, not while it times) and on
        the first spawn (while the reference starts)."""
        with self._lock:
            while len(self._pool) < self.docker_cfg.pool and not self._closed:
                begun = threading.Event()
                self._pool.append((self._bg.submit(self._warm_pooled, begun), begun))

    def spawn(self, hard_timeout_s: float, handler_args: dict[str, Any] | None = None,
              files: dict[str, str] | None = None) -> Worker:
        with self._lock:
            if self._closed:
                raise RuntimeError("the docker sandbox is closed")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            pooled = self._take()
            first, self._spawned = not self._spawned, True
        try:
            ready = pooled.result() if pooled is not None else self._warm()
        finally:
            if first:
                self._refill()
        req = {
            "workdir": WORKDIR, "env": self._env(), "handler": self.cfg.handler, "files": dict(files or {}),
            "handler_args": {**(handler_args or {}), "device": self.cfg.device, "threads": self.cfg.threads,
                             **self.cfg.cpu_args()},
            "memory_bytes": self.cfg.memory_limit if self.cfg.device == "cpu" else None,  # RLIMIT_AS breaks CUDA
            "max_file_bytes": self.cfg.max_file_bytes, "hard_timeout_s": hard_timeout_s,
        }
        try:
            protocol.send(ready.conn, "start", req)
        except OSError:
            pass  # the Worker reports the death on its first receive
        return Worker(self, ready.conn, ContainerProcess(self, ready.container, ready.hostdir))

    def _release(self, container: Any, hostdir: Path) -> None:
        """A worker is done with its container: remove it, and warm up the next one."""
        self._discard(container, hostdir)
        self._refill()

    def _discard(self, container: Any, hostdir: Path) -> None:
        def remove() -> None:  # the daemon's work too stays out of timing phases
            lock = self.device_lock
            with lock.shared() if lock is not None else contextlib.nullcontext():
                try:
                    container.remove(force=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
            shutil.rmtree(hostdir, ignore_errors=True)

        with self._lock:
            self._removals = [f for f in self._removals if not f.done()]
            try:
                self._removals.append(self._bg.submit(remove))
                return
            except RuntimeError:  # the executor is shut down: below, outside our lock
                pass
        remove()

    def close(self) -> None:
        """Remove every container of this sandbox; warm-ups in flight are abandoned (their
        containers are removed under them, which ends their threads)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pool, self._pool = self._pool, []
        for fut, _ in pool:
            if not fut.cancel() and fut.done() and fut.exception() is None:
                ready = fut.result()
                ready.conn.close()
                self._discard(ready.container, ready.hostdir)
        with self._lock:
            removals = list(self._removals)
        for fut in removals:
            fut.result()
        try:  # everything of this run still there: pooled or warming containers, a crash's leftovers
            for c in self.client.containers.list(all=True, filters={"label": f"{LABEL}={self.run_id}"}):
                c.remove(force=True)
        except Exception:  # noqa: BLE001
            pass
        self._sweep()  # and a killed run's workers that exited since this one started
        self._bg.shutdown(wait=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        shutil.rmtree(self.sock_root, ignore_errors=True)

    def __enter__(self) -> DockerSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
