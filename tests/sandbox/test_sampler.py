"""Attribution sampled from outside the worker: real child processes, a real compiled library,
real perf events. Skipped only where perf_event_open itself is refused."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from sandbox.limits import Cgroup
from sandbox.sampler import Attribution, Sampler, SamplerUnavailable, attribute

SPIN = r"""
#include <chrono>
extern "C" void spin(double seconds) {  // busy in this library's own code, not in libc
  auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  volatile unsigned long x = 0;
  while (std::chrono::steady_clock::now() < end)
    for (int i = 0; i < 200000; ++i) x += i;
}
"""

CHILD = r"""
import ctypes, os, sys, threading, time
lib = ctypes.CDLL(sys.argv[1]); lib.spin.argtypes = [ctypes.c_double]
mode = sys.argv[2]
if mode in ("torch", "mixed"):
    import torch
    torch.set_num_threads(1)
    a = torch.rand(256, 256)
    def mm(seconds):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            torch.mm(a, a)
    mm(0.02)
print("ready", flush=True)
sys.stdin.readline()
if mode == "lib":
    lib.spin(0.4)
elif mode == "torch":
    mm(0.4)
elif mode == "mixed":
    lib.spin(0.25); mm(0.25)
elif mode == "thread":  # started after sampling started; the main thread only waits
    t = threading.Thread(target=lib.spin, args=(0.4,)); t.start()
    print("tid", t.native_id, flush=True); t.join()
elif mode == "fork":  # a process started after sampling started
    pid = os.fork()
    if pid == 0:
        lib.spin(0.4); os._exit(0)
    print("tid", pid, flush=True); os.waitpid(pid, 0)
elif mode == "window":  # in the lib while the window is open, in Python after it closed
    lib.spin(0.2); print("half", flush=True); sys.stdin.readline()
    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:
        pass
elif mode == "exit":
    lib.spin(0.2); os._exit(0)
print("done", flush=True)
sys.stdin.readline()
"""

REFUSED = {errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOSYS, errno.ENODEV, errno.EOPNOTSUPP}


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("sampler")
    (d / "spin.cpp").write_text(SPIN)
    subprocess.run(["g++", "-O2", "-shared", "-fPIC", "-o", str(d / "libspin.so"), str(d / "spin.cpp")], check=True)
    return str(d / "libspin.so")


class Child:
    def __init__(self, lib: str, mode: str):
        self.p = subprocess.Popen([sys.executable, "-c", CHILD, lib, mode], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert self.line() == "ready"

    def line(self) -> str:
        return self.p.stdout.readline().strip()

    def go(self) -> None:
        self.p.stdin.write("go\n")
        self.p.stdin.flush()

    def close(self) -> None:
        self.p.kill()
        self.p.wait()


def open_sampler(pid: int, cgroup_dir: Path | None = None, **kw) -> Sampler:
    try:
        return Sampler.open(pid, cgroup_dir, **kw)
    except SamplerUnavailable as e:
        if e.errno in REFUSED:
            pytest.skip(f"perf_event_open not available here: {e.reason}")
        raise


def run(lib: str, mode: str, cgroup: Cgroup | None = None) -> tuple[Attribution, Sampler, list[str]]:
    child = Child(lib, mode)
    try:
        if cgroup is not None:
            cgroup.join(child.p.pid)
        s = open_sampler(child.p.pid, cgroup.dirs[0] if cgroup else None)
        try:
            s.start()
            child.go()
            lines = [child.line()]
            while lines[-1] != "done":
                assert lines[-1], f"child died: {lines}"
                lines.append(child.line())
            s.stop()
            return s.attribution([lib]), s, lines
        finally:
            s.close()
    finally:
        child.close()


def test_time_in_own_library_is_covered(lib):
    a, s, _ = run(lib, "lib")
    print(s.mode, a.samples, a.lost, a.coverage, a.categories)
    assert a.samples > 500 and a.lost == 0
    assert a.coverage > 0.8 and max(a.categories, key=a.categories.get) == "own"
    assert a.by_file[lib] == a.own


def test_time_in_torch_is_not_covered(lib):
    a, _, _ = run(lib, "torch")
    print(a.samples, a.coverage, a.categories)
    assert a.samples > 500
    assert a.coverage < 0.05 and max(a.categories, key=a.categories.get) == "torch"


def test_mixed_time_is_split(lib):
    a, _, _ = run(lib, "mixed")
    print(a.samples, a.coverage, a.categories)
    assert a.samples > 500 and 0.25 < a.coverage < 0.75
    assert a.categories["own"] + a.categories["torch"] > 0.8 * a.samples


def make_cgroup(kind: str | None) -> Cgroup | None:
    """None; the project's own cgroup (v1 or v2, whatever this host gives); or a v2 one, made on
    the unified mount by hand where the project's is v1 (a hybrid host)."""
    if kind is None:
        return None
    name = f"sampler-{uuid.uuid4().hex[:8]}"
    cg = Cgroup.create(name, None, 512)
    if kind == "project" or (cg and (cg.dirs[0] / "cgroup.controllers").exists()):
        return cg or pytest.skip("no cgroup can be made here")
    if cg:
        cg.remove()
    own = next((ln[3:] for ln in Path("/proc/self/cgroup").read_text().splitlines() if ln.startswith("0::")), "/")
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mnt, typ = line.split()[:3]
        if typ == "cgroup2":
            d = Path(mnt) / own.lstrip("/") / "kernelwright" / name
            try:
                d.mkdir(parents=True)
                return Cgroup([d])
            except OSError:
                continue
    pytest.skip("no cgroup v2 directory can be made here")


@pytest.mark.parametrize("kind", [None, "project", "v2"])
@pytest.mark.parametrize("mode", ["thread", "fork"])
def test_threads_and_processes_started_after_start_are_followed(lib, kind, mode):
    cg = make_cgroup(kind)
    v2 = cg is not None and (cg.dirs[0] / "cgroup.controllers").exists()
    try:
        a, s, lines = run(lib, mode, cg)
    finally:
        if cg is not None:
            cg.kill_all()
            cg.remove()
    tid = int(next(x for x in lines if x.startswith("tid ")).split()[1])
    print(s.mode, s.fallback_reason, a.samples, a.coverage, a.by_thread)
    assert s.mode == ("cgroup" if v2 else "threads")
    assert a.by_thread[tid].get("own", 0) > 500 and a.coverage > 0.8


def test_samples_outside_a_window_are_dropped(lib):
    child = Child(lib, "window")
    try:
        s = open_sampler(child.p.pid)
        s.start()
        child.go()
        assert child.line() == "half"
        s.stop()
        child.go()
        assert child.line() == "done"
        a = s.attribution([lib])
        s.close()
    finally:
        child.close()
    print(a.samples, a.categories)
    assert a.own > 500 and a.categories["python"] < 0.05 * a.samples


def test_a_full_ring_counts_what_it_lost(lib):
    child = Child(lib, "lib")
    try:
        s = open_sampler(child.p.pid, buffer_s=0.001)  # the smallest ring: 8 pages, ~1000 samples
        s.start()
        child.go()
        assert child.line() == "done"
        s.stop()
        a = s.attribution([lib])
        s.close()
    finally:
        child.close()
    print(a.samples, a.lost)
    assert 0 < a.samples <= 8 * os.sysconf("SC_PAGE_SIZE") // 32 * 2  # one ring per CPU
    assert a.lost > 100  # 0.4 s at 100 us is ~4000 samples, less what other load took from the child


def test_a_worker_that_exits_while_sampled_raises_nothing(lib):
    child = Child(lib, "exit")
    try:
        s = open_sampler(child.p.pid)
        s.start()
        child.go()
        child.p.wait(timeout=10)
        s.stop()
        s.drain()
        a = s.attribution([lib])  # maps from the snapshot taken at open: the library was loaded
        s.start()
        s.stop()
        s.close()
        s.close()
    finally:
        child.close()
    print(a.samples, a.coverage)
    assert a.samples > 200 and a.coverage > 0.8
    with pytest.raises(ProcessLookupError):
        Sampler.open(child.p.pid)


def test_attribute_buckets_by_mapping():
    site = "/v/lib/python3.11/site-packages"
    maps = "\n".join([
        "1000-2000 r-xp 00000000 08:01 1 /w/own/libk.so",
        f"2000-3000 r-xp 00000000 08:01 2 {site}/torch/lib/libtorch_cpu.so",
        f"3000-4000 r-xp 00000000 08:01 3 {site}/torch/lib/libgomp.so.1",
        "4000-5000 r-xp 00000000 08:01 4 /usr/bin/python3.11",
        "5000-6000 r-xp 00000000 08:01 5 /usr/lib/x86_64-linux-gnu/libc.so.6",
        "6000-7000 rwxp 00000000 00:00 0 ",
        f"7000-8000 r-xp 00000000 08:01 6 {site}/numpy/core/_multiarray_umath.so",
        "8000-9000 r-xp 00000000 08:01 7 /w/own/libk2.so (deleted)",
    ])
    ips = [0x1000, 0x1fff, 0x2500, 0x3500, 0x4500, 0x5500, 0x6500, 0x7500, 0x8500, 0x9500, 0xffffffff81000000]
    a = attribute([(1, 10 + i % 2, ip) for i, ip in enumerate(ips)], maps, ["/w/own/libk.so", "/w/own/libk2.so"])
    assert a.samples == 11 and a.own == 3 and a.coverage == 3 / 11
    assert a.categories == {"own": 3, "torch": 1, "openmp": 1, "python": 1, "libc": 1, "anon": 1,
                            "other": 2, "kernel": 1}
    assert a.by_file["[unknown]"] == 1 and a.by_file["[kernel]"] == 1
    assert sum(sum(t.values()) for t in a.by_thread.values()) == 11 and set(a.by_thread) == {10, 11}
    assert attribute([], maps).coverage is None


def test_start_stop_is_cheap(lib):
    child = Child(lib, "lib")
    try:
        s = open_sampler(child.p.pid)
        s.start()
        s.stop()
        t0 = time.perf_counter()
        for _ in range(1000):
            s.start()
            s.stop()
        per = (time.perf_counter() - t0) / 1000
        s.close()
    finally:
        child.close()
    print(f"start+stop {per * 1e6:.1f} us")
    assert per < 20e-6
