"""Resource limits for a worker: rlimits everywhere, cgroups (v1 or v2) where we may write them.

A cgroup is what stops a fork bomb as root (RLIMIT_NPROC does not bind root) and what lets
the supervisor kill every process a candidate left behind, however it detached itself.
"""
from __future__ import annotations

import os
import resource
import signal
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def set_rlimits(memory_bytes: int | None, max_file_bytes: int, nofile: int = 4096) -> None:
    """Called in the forked worker before any candidate code runs."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = nofile if hard == resource.RLIM_INFINITY else min(nofile, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def _own_path(controller: str) -> str | None:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            if controller in names.split(",") or (names == "" and controller == ""):
                return path
    except OSError:
        pass
    return None


class Cgroup:
    """One worker's cgroup(s): pids.max, a memory ceiling, CPU accounting; killable as a whole."""

    def __init__(self, dirs: list[Path]):
        self.dirs = dirs

    @staticmethod
    def create(name: str, memory_bytes: int | None, max_pids: int) -> Cgroup | None:
        dirs: list[Path] = []
        try:
            if (ROOT / "cgroup.controllers").exists():  # unified hierarchy (v2)
                base = ROOT / (_own_path("") or "/").lstrip("/")
                d = base / "kernelwright" / name
                d.mkdir(parents=True)
                dirs.append(d)
                if (d / "pids.max").exists():
                    (d / "pids.max").write_text(str(max_pids))
                if memory_bytes and (d / "memory.max").exists():
                    (d / "memory.max").write_text(str(memory_bytes))
                    if (d / "memory.swap.max").exists():
                        (d / "memory.swap.max").write_text("0")
            else:  # v1: one directory per controller
                for ctl, knob, value in (("pids", "pids.max", max_pids),
                                         ("memory", "memory.limit_in_bytes", memory_bytes),
                                         ("cpuacct", "", None)):  # accounting only: CPU time used
                    if not (ROOT / ctl / "cgroup.procs").exists():
                        continue
                    d = ROOT / ctl / (_own_path(ctl) or "/").lstrip("/") / "kernelwright" / name
                    d.mkdir(parents=True)
                    dirs.append(d)
                    if value:
                        (d / knob).write_text(str(value))
        except OSError:
            Cgroup(dirs).remove()
            return None
        return Cgroup(dirs) if dirs else None

    def join(self, pid: int = 0) -> None:
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(pid or os.getpid()))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs:
            try:
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return found

    def kill_all(self) -> None:
        for d in self.dirs:
            if (d / "cgroup.kill").exists():
                try:
                    (d / "cgroup.kill").write_text("1")
                except OSError:
                    pass
        for _ in range(50):  # v1 has no cgroup.kill: signal until empty (forks race us)
            left = self.pids()
            if not left:
                return
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    def remove(self) -> None:
        for d in self.dirs:
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)

    def threads(self) -> set[int]:
        """Every thread in the cgroup (v1 `tasks`, v2 `cgroup.threads`)."""
        found: set[int] = set()
        for d in self.dirs:
            for name in ("tasks", "cgroup.threads"):
                try:
                    found.update(int(t) for t in (d / name).read_text().split())
                except (OSError, ValueError):
                    continue
        return found

    def cpu_seconds(self) -> float | None:
        """CPU time used by everything in the cgroup (v1 cpuacct.usage, v2 cpu.stat)."""
        for d in self.dirs:
            try:
                if (d / "cpuacct.usage").exists():
                    return int((d / "cpuacct.usage").read_text()) / 1e9
                if (d / "cpu.stat").exists():
                    for line in (d / "cpu.stat").read_text().splitlines():
                        if line.startswith("usage_usec "):
                            return int(line.split()[1]) / 1e6
            except (OSError, ValueError):
                return None
        return None

    def memory_exceeded(self) -> bool:
        for d in self.dirs:
            for f in ("memory.failcnt", "memory.events"):
                try:
                    text = (d / f).read_text()
                except OSError:
                    continue
                if f == "memory.failcnt" and text.strip() not in ("", "0"):
                    return True
                if f == "memory.events" and any(
                    ln.split()[0] in ("oom_kill", "max") and ln.split()[1] != "0" for ln in text.splitlines()
                ):
                    return True
        return False


def total_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
