"""Cores for timing and cores for everything else: the CPU device's partition.

On a CPU device the device is the cores. Without a partition a timing phase must have the
whole machine (nothing compiles or checks meanwhile), so evaluations cannot overlap. With one,
timing phases run on their own cores, one at a time, while compiles and correctness checks of
other candidates go on on the rest. Both sides of a speedup (reference and candidate) are timed
on the same cores with the same thread count. A worker moves itself (every thread) onto the
timing cores for its timing phase; the supervisor checks, by the cgroup's CPU accounting, that a
timed candidate used no more cores than the timing set has.

Between timing phases the timing cores are lent out (`Lender`): where workers have cgroups the
supervisor can find every thread of every worker, and of every compiler it started, and move
them all onto the other cores when a phase begins and back onto every core when it ends.
"""
from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Any, Iterable

from sandbox.compiler import place_compilers


@functools.cache
def usable() -> tuple[int, ...]:
    """The cores this process may use, as first seen: later, during a timing phase, the calling
    thread is itself confined to the other cores."""
    return tuple(sorted(os.sched_getaffinity(0)))


def partition(spec: str, device: str) -> tuple[int, ...]:
    """The timing cores `spec` names: "auto" (on a CPU device with 2 or more cores, the upper
    half; none on a GPU device, whose timing needs no cores of its own), "all" (none: timing
    has the whole machine), or a list like "2,3" or "4-7". An empty result means no partition."""
    spec = spec.strip().lower()
    cpus = usable()
    if spec in ("", "all", "none"):
        return ()
    if spec == "auto":
        return cpus[len(cpus) - len(cpus) // 2:] if device == "cpu" and len(cpus) >= 2 else ()
    chosen: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            chosen.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise ValueError(f"timing cpus {spec!r}: use auto, all, or a list like 2,3 or 4-7") from None
    if not chosen <= set(cpus):
        raise ValueError(f"timing cpus {spec!r}: this process may use cores {_ranges(cpus)} only")
    if set(cpus) - chosen == set():
        raise ValueError(f"timing cpus {spec!r}: leave at least one core for compiles (or use all)")
    return tuple(sorted(chosen))


def rest_of(timing: tuple[int, ...]) -> tuple[int, ...]:
    """The cores compiles and checks keep during a timing phase."""
    return tuple(c for c in usable() if c not in timing)


def _ranges(cpus: tuple[int, ...]) -> str:
    return ",".join(str(c) for c in cpus)


def pin_all_threads(cpus: list[int] | tuple[int, ...]) -> None:
    """Move every thread of this process onto `cpus` (sched_setaffinity(pid) moves one thread
    only; thread pools made earlier keep their own mask otherwise)."""
    _pin_pids(_own_threads(), cpus)


def _in_groups(pgids: set[int]) -> set[int]:
    """The processes of these process groups (one pass over /proc)."""
    found: set[int] = set()
    if not pgids:
        return found
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[2]) in pgids:
                    found.add(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


def _own_threads() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def _pin_pids(ids: Iterable[int], cpus: Iterable[int]) -> None:
    cpus = tuple(cpus)
    for i in ids:
        try:
            os.sched_setaffinity(i, cpus)
        except OSError:
            pass  # gone already


class Lender:
    """Moves the supervisor's own threads and what it started (the fork server, every worker
    thread by its cgroup, the compilers) off the timing cores for a timing phase, and back onto
    every core after."""

    def __init__(self, timing: tuple[int, ...]):
        self.all = usable()
        self.rest = rest_of(timing)
        self._cgroups: set[Any] = set()
        self._pids: set[int] = set()
        self._lock = threading.Lock()

    def add_pid(self, pid: int) -> None:
        with self._lock:
            self._pids.add(pid)

    def add_cgroup(self, cgroup: Any) -> None:
        with self._lock:
            self._cgroups.add(cgroup)

    def remove_cgroup(self, cgroup: Any) -> None:
        with self._lock:
            self._cgroups.discard(cgroup)

    def confine(self, on: bool) -> None:
        target = self.rest if on else self.all
        compilers = _in_groups(place_compilers(self.rest if on else None))
        with self._lock:
            ids = set(self._pids) | _own_threads()  # the supervisor too: its comparisons, display, clients
            for cg in self._cgroups:
                ids |= cg.threads()
        _pin_pids(ids | compilers, target)


def escaped_threads(pid: int, allowed: Iterable[int]) -> list[tuple[int, str]]:
    """Threads of process `pid` whose CPU affinity (kernel state, read from /proc) reaches past
    `allowed`: (tid, their cores). A worker moved onto the timing cores that widened its own
    affinity is seen here, whatever it did to hide it in its own process."""
    allowed_set, found = set(allowed), []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tids:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue  # it ended meanwhile
        line = next((ln for ln in text.splitlines() if ln.startswith("Cpus_allowed_list:")), "")
        cores: set[int] = set()
        for part in line.partition(":")[2].strip().split(","):
            lo, _, hi = part.partition("-")
            if lo.strip():
                cores.update(range(int(lo), int(hi or lo) + 1))
        if cores - allowed_set:
            found.append((int(tid), line.partition(":")[2].strip()))
    return found
