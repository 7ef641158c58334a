"""Out-of-process attribution: which code a worker's threads really spend CPU time in.

The supervisor opens perf_event_open software `cpu-clock` sampling events on the worker and reads
their ring buffers itself. The events belong to the supervisor (the worker holds no fd), so nothing
the candidate does inside the worker can switch them off: prctl(PR_TASK_PERF_EVENTS_DISABLE) only
touches events the caller owns. Supervisor side only: never imported by a worker.

Two ways to reach every thread, the first preferred; both write into one ring per CPU:
  cgroup  an event per CPU in cgroup mode on the worker's cgroup v2 directory: every task in it or
          below it, however and whenever started; the candidate cannot leave its cgroup.
  threads an event per (existing thread, CPU) with inherit=1: threads and processes started later
          get child events, which the kernel makes write into their parent's ring.
Timing rounds are windows of CLOCK_MONOTONIC time, not ioctls (see Sampler.start).
"""
from __future__ import annotations

import bisect
import ctypes
import errno
import fcntl
import functools
import mmap
import os
import platform
import re
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

_NR = {"x86_64": 298, "aarch64": 241}.get(platform.machine())
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
PAGE = mmap.PAGESIZE
_ENABLE, _SET_OUTPUT = 0x2400, 0x2405  # _IO('$', 0), _IO('$', 5)
_FLAG_PID_CGROUP, _FLAG_FD_CLOEXEC = 4, 8
_SAMPLE_IP_TID_TIME, _FORMAT_LOST = 1 | 2 | 4, 16
_RECORD_LOST, _RECORD_SAMPLE = 2, 9
_DISABLED, _INHERIT, _EXCLUDE_KERNEL, _EXCLUDE_HV, _USE_CLOCKID = 1 << 0, 1 << 1, 1 << 5, 1 << 6, 1 << 25
_RECORD = struct.Struct("<IHHQIIQ")  # header (type, misc, size), then ip, pid, tid, time: 32 bytes
_OPEN = 1 << 64  # the end of a window not stopped yet
_read_lost = [True]  # PERF_FORMAT_LOST (Linux 6.0+): read(fd) tells how many samples a full ring dropped


class _Attr(ctypes.Structure):
    """struct perf_event_attr as of PERF_ATTR_SIZE_VER5 (112 bytes); newer kernels accept it too."""
    _u16, _u32, _i32, _u64 = ctypes.c_uint16, ctypes.c_uint32, ctypes.c_int32, ctypes.c_uint64
    _fields_ = [("type", _u32), ("size", _u32), ("config", _u64), ("sample_period", _u64),
                ("sample_type", _u64), ("read_format", _u64), ("flags", _u64),  # flags: the bitfield word
                ("wakeup_events", _u32), ("bp_type", _u32), ("config1", _u64), ("config2", _u64),
                ("branch_sample_type", _u64), ("sample_regs_user", _u64), ("sample_stack_user", _u32),
                ("clockid", _i32), ("sample_regs_intr", _u64), ("aux_watermark", _u32),
                ("sample_max_stack", _u16), ("reserved_2", _u16)]


class SamplerUnavailable(Exception):
    """perf_event_open or its ring buffer is refused or unsupported here; `errno` says why."""

    def __init__(self, reason: str, err: int | None = None):
        super().__init__(reason)
        self.reason, self.errno = reason, err


def _perf_open(period_ns: int, flags: int, pid: int, cpu: int, open_flags: int = 0) -> int:
    if _NR is None:
        raise SamplerUnavailable(f"perf_event_open: no syscall number for {platform.machine()}", errno.ENOSYS)
    while True:
        attr = _Attr(type=1, size=ctypes.sizeof(_Attr), config=0,  # PERF_TYPE_SOFTWARE, SW_CPU_CLOCK
                     sample_period=period_ns, sample_type=_SAMPLE_IP_TID_TIME,
                     read_format=_FORMAT_LOST if _read_lost[0] else 0,
                     flags=flags | _USE_CLOCKID, clockid=time.CLOCK_MONOTONIC)  # as time.monotonic_ns()
        fd = _libc.syscall(_NR, ctypes.byref(attr), pid, cpu, -1, open_flags | _FLAG_FD_CLOEXEC)
        e = ctypes.get_errno() if fd < 0 else 0
        if e != errno.EINVAL or not _read_lost[0]:
            break
        _read_lost[0] = False  # an older kernel: count lost samples from PERF_RECORD_LOST alone
    if fd < 0:
        raise OSError(e, f"perf_event_open(pid={pid}, cpu={cpu}): {os.strerror(e)}")
    return fd


def _words(path: Path) -> list[str]:
    return path.read_text().split()


def _cpus(cgroup_dir: Path | None) -> list[int]:
    # The cgroup's cpuset bounds where its tasks run, whatever affinity they give themselves.
    for f in ([cgroup_dir / "cpuset.cpus.effective"] if cgroup_dir else []) + [Path("/sys/devices/system/cpu/online")]:
        try:
            spans = [p.partition("-") for p in f.read_text().strip().split(",") if p]
        except OSError:
            continue
        if spans:
            return [c for a, _, b in spans for c in range(int(a), int(b or a) + 1)]
    return list(range(os.cpu_count() or 1))


class _Ring:
    def __init__(self, fd: int, data_pages: int):
        self.mm = mmap.mmap(fd, (1 + data_pages) * PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        off, size = struct.unpack_from("<QQ", self.mm, 1040)  # data_offset, data_size (0 before 4.1)
        self.off, self.size = off or PAGE, size or data_pages * PAGE

    def drain(self, out: list[tuple[int, int, int, int]]) -> int:
        """Append (pid, tid, ip, time) of every new sample; return the lost count the kernel reported."""
        head, tail = struct.unpack_from("<QQ", self.mm, 1024)  # data_head, data_tail
        start, n, o = tail % self.size, head - tail, self.off
        data = self.mm[o + start:o + min(self.size, start + n)]
        if start + n > self.size:  # the records wrap past the end of the buffer
            data += self.mm[o:o + start + n - self.size]
        lost, pos, record, append = 0, 0, _RECORD.unpack_from, out.append
        while pos + 8 <= n:
            if pos + 32 <= n:  # header and sample in one unpack: this loop is what drain() costs
                typ, _, size, ip, pid, tid, t = record(data, pos)
            else:
                typ, _, size = struct.unpack_from("<IHH", data, pos)
            if size < 8 or pos + size > n:
                break  # a corrupt header: drop the rest rather than loop
            if typ == _RECORD_SAMPLE:
                append((pid, tid, ip, t))
            elif typ == _RECORD_LOST:
                lost += struct.unpack_from("<Q", data, pos + 16)[0]  # { header; u64 id; u64 lost; }
            pos += size
        struct.pack_into("<Q", self.mm, 1032, head)  # hand the space back to the kernel
        return lost


class Sampler:
    """cpu-clock samples of every thread of one worker, kept when they fall in a start/stop window."""

    def __init__(self, pid: int, cgroup_dir: Path | None, mode: str, period_ns: int, flags: int, pages: int):
        self.pid, self.mode, self.kernel = pid, mode, not flags & _EXCLUDE_KERNEL
        self._fds: list[int] = []
        self._rings: dict[int, _Ring] = {}
        self._owner: dict[int, int] = {}  # cpu -> the fd whose ring the CPU's other events share
        self._samples: list[tuple[int, int, int]] = []
        self._lost_records, self._on = 0, False
        self._starts: list[int] = []  # the windows, CLOCK_MONOTONIC ns
        self._ends: list[int] = []
        self._maps: dict[int, str] = {}
        self.fallback_reason: str | None = None
        try:
            if mode == "cgroup":
                assert cgroup_dir is not None  # mode cgroup comes with its directory
                cg = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    for cpu in _cpus(cgroup_dir):
                        self._add(_perf_open(period_ns, flags, cg, cpu, _FLAG_PID_CGROUP), cpu, pages)
                finally:
                    os.close(cg)
            else:
                self._open_threads(cgroup_dir, period_ns, flags | _INHERIT, pages)
        except BaseException:
            self.close()
            raise
        self.maps()  # a first snapshot, in case the worker is gone by the time we attribute

    @staticmethod
    def open(pid: int, cgroup_dir: Path | None = None, period_ns: int = 100_000,
             buffer_s: float = 1.0, kernel: bool = True) -> Sampler:
        """Raises SamplerUnavailable when perf sampling is refused, ProcessLookupError if `pid` is gone.
        Each CPU's ring holds about `buffer_s` s of samples; drain() between rounds that add up to more."""
        pages = 8  # the ring's data area must be 2^n pages; at most 8 MiB a CPU
        while pages * PAGE < 1e9 / period_ns * _RECORD.size * buffer_s and pages * PAGE < 8 << 20:
            pages *= 2
        flags = _DISABLED | _EXCLUDE_HV | (0 if kernel else _EXCLUDE_KERNEL)
        why = "cgroup mode: no cgroup given" if cgroup_dir is None else "cgroup mode: not a cgroup v2 directory"
        if cgroup_dir is not None and (Path(cgroup_dir) / "cgroup.controllers").exists():
            try:
                return Sampler(pid, Path(cgroup_dir), "cgroup", period_ns, flags, pages)
            except (OSError, SamplerUnavailable) as e:
                why = f"cgroup mode: {e}"
        try:
            s = Sampler(pid, cgroup_dir and Path(cgroup_dir), "threads", period_ns, flags, pages)
        except SamplerUnavailable as e:  # perf_event_paranoid >= 2 without CAP_PERFMON: user space only
            if not kernel or e.errno not in (errno.EACCES, errno.EPERM):
                raise
            s = Sampler(pid, cgroup_dir and Path(cgroup_dir), "threads", period_ns, flags | _EXCLUDE_KERNEL, pages)
        s.fallback_reason = why
        return s

    def _add(self, fd: int, cpu: int, pages: int) -> None:
        self._fds.append(fd)
        try:
            if cpu in self._owner:  # the kernel lets events share a ring only on the same CPU
                fcntl.ioctl(fd, _SET_OUTPUT, self._owner[cpu])
            else:
                self._rings[cpu], self._owner[cpu] = _Ring(fd, pages), fd
        except OSError as e:
            raise SamplerUnavailable(f"perf ring buffer: {e}", e.errno) from e

    def _open_threads(self, cgroup_dir: Path | None, period_ns: int, flags: int, pages: int) -> None:
        # The kernel will not mmap an inherited event with cpu=-1 (EINVAL): so an inherited event per
        # (thread, CPU), a CPU's events all writing into one ring, as `perf record` does. All CPUs:
        # the candidate may change its own affinity.
        listings: list[Callable[[], list[str]]] = [lambda: os.listdir(f"/proc/{self.pid}/task")]
        if cgroup_dir is not None:  # and any process left in its cgroup
            listings += [functools.partial(_words, cgroup_dir / n) for n in ("cgroup.threads", "tasks")]
        done: set[int] = set()
        for _ in range(20):  # a thread may start a thread before we reach it: list until stable
            tids: set[int] = set()
            for listing in listings:
                try:
                    tids.update(map(int, listing()))
                except (OSError, ValueError):
                    pass
            if not tids - done:
                break
            for tid in sorted(tids - done):
                done.add(tid)
                for cpu in _cpus(None):
                    try:
                        fd = _perf_open(period_ns, flags, tid, cpu)
                    except OSError as e:
                        if e.errno == errno.ESRCH:
                            break  # it exited meanwhile; threads it started are listed next time
                        raise SamplerUnavailable(str(e), e.errno) from e
                    self._add(fd, cpu, pages)
        if not self._fds:
            raise ProcessLookupError(f"no thread of pid {self.pid} to sample")

    def start(self) -> None:
        """Open a window. The first call switches the events on; later ones only take the time: an
        ENABLE/DISABLE ioctl costs an IPI to a CPU per event (25-50 us in a VM), too much around
        every short timing round. Samples outside windows are dropped when drained."""
        if not self._on:
            for fd in self._fds:
                try:
                    fcntl.ioctl(fd, _ENABLE, 0)
                except OSError:
                    pass  # the thread is gone, and its event with it
            self._on = True
        if not self._ends or self._ends[-1] != _OPEN:
            self._starts.append(time.monotonic_ns())
            self._ends.append(_OPEN)

    def stop(self) -> None:
        if self._ends and self._ends[-1] == _OPEN:
            self._ends[-1] = time.monotonic_ns()

    def drain(self) -> int:
        """Move in-window samples from the kernel's rings into this object; returns how many."""
        raw: list[tuple[int, int, int, int]] = []
        for r in self._rings.values():
            self._lost_records += r.drain(raw)
        starts, ends, before = self._starts, self._ends, len(self._samples)
        for pid, tid, ip, t in raw:
            i = bisect.bisect_right(starts, t) - 1
            if i >= 0 and t <= ends[i]:
                self._samples.append((pid, tid, ip))
        return len(self._samples) - before

    def read(self) -> list[tuple[int, int, int]]:
        """Every in-window sample so far as (pid, tid, ip), and forget them."""
        self.drain()
        out, self._samples = self._samples, []
        return out

    def maps(self) -> dict[int, str]:
        """/proc/PID/maps of the worker (first) and of other processes seen in samples; for one that
        has exited, its last snapshot. Call it before the worker is killed."""
        self.drain()
        for p in [self.pid] + sorted({s[0] for s in self._samples} - {self.pid}):
            try:
                self._maps[p] = Path(f"/proc/{p}/maps").read_text()
            except (OSError, ValueError):
                pass
        return dict(self._maps)

    @property
    def lost(self) -> int:
        """Samples dropped because a ring was full, in windows or not. PERF_RECORD_LOST comes only
        with a later sample, so also read the count the kernel keeps on each event."""
        counted = 0
        for fd in self._fds if _read_lost[0] else ():
            try:
                b = os.read(fd, 16)  # { u64 value; u64 lost; }; b"" once the thread has exited
            except OSError:
                continue
            counted += struct.unpack("<QQ", b)[1] if len(b) == 16 else 0
        return max(counted, self._lost_records)

    def attribution(self, own_paths: Iterable[str | os.PathLike] = ()) -> Attribution:
        maps = self.maps()
        return attribute(self.read(), maps, own_paths, lost=self.lost)

    def close(self) -> None:
        """Closing the fds ends the events and their inherited children. Safe to repeat."""
        for r in self._rings.values():
            r.mm.close()
        for fd in self._fds:
            os.close(fd)
        self._fds, self._rings, self._owner = [], {}, {}


@dataclass(frozen=True)
class Attribution:
    samples: int
    lost: int
    own: int
    coverage: float | None  # own / samples; None without samples
    by_file: dict[str, int]
    categories: dict[str, int]  # every category in CATEGORIES, zeros included
    by_thread: dict[int, dict[str, int]]  # tid -> category -> samples


CATEGORIES = ("own", "torch", "python", "libc", "openmp", "kernel", "anon", "other")
_OPENMP = re.compile(r"lib(gomp|iomp\d*|omp)[.-]")
_PYTHON = re.compile(r"(python\d[\d.]*$|libpython)")
_LIBC = re.compile(r"(libc|libm|libpthread|libdl|librt|ld-linux[\w.-]*|ld64|libstdc\+\+|libgcc_s)([.-]|$)")


def _category(path: str, own: set[str]) -> str:
    if path in own:
        return "own"
    if path in ("[kernel]", "[vdso]", "[vsyscall]"):
        return "kernel"  # code the kernel supplies
    if path == "[unknown]":
        return "other"  # in no mapping we know of
    if not path or path.startswith(("[", "/memfd:")):
        return "anon"  # [heap], [stack], [anon:...], memfd: code written at run time
    parts = path.split("/")
    if _OPENMP.match(parts[-1]):
        return "openmp"  # before torch: torch/lib ships its own libgomp
    if "torch" in parts or any(p.startswith("torch") and p.endswith(".libs") for p in parts):
        return "torch"
    if _PYTHON.match(parts[-1]) or "lib-dynload" in parts:
        return "python"
    return "libc" if _LIBC.match(parts[-1]) else "other"


def _parse_maps(text: str) -> tuple[list[int], list[tuple[int, str]]]:
    rows = []
    for line in text.splitlines():
        f = line.split(None, 5)
        if len(f) >= 5:
            a, _, b = f[0].partition("-")
            rows.append((int(a, 16), int(b, 16), (f[5].strip() if len(f) > 5 else "").removesuffix(" (deleted)")))
    rows.sort()
    return [r[0] for r in rows], [(r[1], r[2]) for r in rows]


def attribute(samples: Iterable[tuple[int, int, int]], maps: int | str | Mapping[int, str],
              own_paths: Iterable[str | os.PathLike] = (), lost: int = 0) -> Attribution:
    """Bucket (pid, tid, ip) samples by the file mapped at ip. `maps`: a pid (read now), one maps
    text for all samples, or pid -> maps text, whose first entry serves pids it lacks (a forked
    child starts with its parent's layout)."""
    if isinstance(maps, int):
        maps = {maps: Path(f"/proc/{maps}/maps").read_text()}
    tables = {} if isinstance(maps, str) else {p: _parse_maps(t) for p, t in maps.items()}
    default = _parse_maps(maps) if isinstance(maps, str) else next(iter(tables.values()), ([], []))
    own_list = [os.fspath(p) for p in own_paths]
    own = {os.path.realpath(p) for p in own_list} | set(own_list)
    by_file: dict[str, int] = {}
    by_thread: dict[int, dict[str, int]] = {}
    category: dict[str, str] = {}
    n = 0
    for pid, tid, ip in samples:
        n += 1
        if ip >= 1 << 63:  # the kernel half of the address space (x86_64 and aarch64)
            path = "[kernel]"
        else:
            starts, rows = tables.get(pid, default)
            i = bisect.bisect_right(starts, ip) - 1
            path = rows[i][1] if i >= 0 and ip < rows[i][0] else "[unknown]"
        by_file[path] = by_file.get(path, 0) + 1
        if path not in category:
            category[path] = _category(path, own)
        t = by_thread.setdefault(tid, {})
        t[category[path]] = t.get(category[path], 0) + 1
    cats = dict.fromkeys(CATEGORIES, 0)
    for t in by_thread.values():
        for c, k in t.items():
            cats[c] += k
    return Attribution(samples=n, lost=lost, own=cats["own"], coverage=cats["own"] / n if n else None,
                       by_file=by_file, categories=cats, by_thread=by_thread)
