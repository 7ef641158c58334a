"""sandbox/jail/seccomp.py in a fresh process: what it denies, and what a worker still needs works.

Each check runs in its own `python -c` process (a filter cannot be removed once installed).
"""
from __future__ import annotations

import json
import platform
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.jail import seccomp

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="x86_64/aarch64 only")
X86 = platform.machine() == "x86_64"

LIB_SRC = r'''
#include <cstdint>
extern "C" double omp_sum(const float* x, int64_t n) {
    double s = 0.0;
    #pragma omp parallel for reduction(+:s)
    for (int64_t i = 0; i < n; ++i) s += x[i];
    return s;
}
#if defined(__x86_64__)
extern "C" long i386_getpid() {  // the 32-bit syscall ABI, reachable from 64-bit code
    long ret;
    asm volatile("int $0x80" : "=a"(ret) : "a"(20L) : "memory");
    return ret;
}
#endif
'''

SCRIPT = r'''
import ctypes, errno, json, mmap, os, sys, threading, time
import torch
from sandbox.jail import seccomp

lib = ctypes.CDLL(sys.argv[1])
lib.omp_sum.restype = ctypes.c_double
lib.omp_sum.argtypes = [ctypes.c_void_p, ctypes.c_int64]
log = open(sys.argv[2], "w")  # a file opened for writing before the filter
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
X86 = os.uname().machine == "x86_64"
NR = {k: v[0 if X86 else 1] for k, v in seccomp.NUMBERS.items()}
go = threading.Event()
early = {}

def before():  # a thread started before the filter must be covered too (TSYNC)
    go.wait()
    early["ptrace"] = raw("ptrace", 0)

def raw(name, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(NR[name]), *[ctypes.c_long(a) for a in args])
    return -ctypes.get_errno() if r == -1 else r

def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

t0 = threading.Thread(target=before)
t0.start()
res = {"state": seccomp.lock_down()}
go.set()
t0.join()
res["early_thread_ptrace"] = early["ptrace"]
res["ptrace"] = raw("ptrace", 0)  # PTRACE_TRACEME
iov = (ctypes.c_char * 8)()
res["process_vm_writev"] = raw("process_vm_writev", os.getpid(), ctypes.addressof(iov), 1, ctypes.addressof(iov), 1, 0)
attr = (ctypes.c_char * 128)()
res["perf_event_open"] = raw("perf_event_open", ctypes.addressof(attr), 0, -1, -1, 0)
params = (ctypes.c_char * 120)()
res["io_uring_setup"] = raw("io_uring_setup", 1, ctypes.addressof(params))
res["clone3"] = raw("clone3", 0, 0)
res["openat2"] = raw("openat2", -100, 0, 0, 0)
res["memfd_create"] = raw("memfd_create", ctypes.addressof(iov), 0)
res["x32_getpid"] = libc.syscall(ctypes.c_long(0x40000000 | 39)) if X86 else None
res["fork"] = attempt(os.fork)
res["proc_self_mem_rw"] = attempt(lambda: open("/proc/self/mem", "r+b"))
res["new_file"] = attempt(lambda: open(sys.argv[2] + ".new", "w"))
res["mmap_exec"] = attempt(lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC))
page = mmap.mmap(-1, 4096)
buf = ctypes.c_char.from_buffer(page)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
res["mprotect_exec"] = -ctypes.get_errno() if libc.mprotect(ctypes.addressof(buf), 4096, 7) else 0
res["mprotect_rw"] = libc.mprotect(ctypes.addressof(buf), 4096, 3)
del buf
# what must keep working
res["read"] = len(open("/proc/self/status").read()) > 0
box = []
th = threading.Thread(target=lambda: box.append(sum(range(10))))
th.start()
th.join()
res["thread"] = box == [45]
torch.set_num_threads(2)
a = torch.randn(512, 512)
res["torch"] = bool(torch.allclose(a @ a.T, (a @ a.T).T, atol=1e-3))
res["threads_now"] = int([ln for ln in open("/proc/self/status") if ln.startswith("Threads:")][0].split()[1])
x = torch.ones(1 << 20)
res["omp_sum"] = lib.omp_sum(x.data_ptr(), x.numel())
log.write("still writable\n")
log.flush()
os.write(1, (json.dumps(res) + "\n").encode())
'''


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("seccomp")
    (d / "lib.cpp").write_text(LIB_SRC)
    for name in ("lib.so", "other.so"):
        subprocess.run(["g++", "-O2", "-fPIC", "-shared", "-fopenmp", "-o", str(d / name), str(d / "lib.cpp")],
                       check=True)
    return d / "lib.so", d / "other.so"


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          check=False)


def test_denied_and_allowed(lib, tmp_path):
    log = tmp_path / "log.txt"
    r = _python(SCRIPT, str(lib[0]), str(log))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["state"] == "on"
    eperm, enosys = -1, -38
    for name in ("ptrace", "early_thread_ptrace", "process_vm_writev", "perf_event_open", "io_uring_setup",
                 "memfd_create", "mprotect_exec"):
        assert res[name] == eperm, (name, res[name])
    assert res["clone3"] == enosys and res["openat2"] == enosys
    if X86:
        assert res["x32_getpid"] == -1  # ENOSYS, not a pid
    for name in ("fork", "proc_self_mem_rw", "new_file", "mmap_exec"):
        assert res[name] == "EPERM", (name, res[name])
    assert res["mprotect_rw"] == 0
    assert res["read"] and res["thread"] and res["torch"]
    assert res["threads_now"] >= 2  # OpenMP's pool came up after the filter: clone(CLONE_THREAD)
    assert res["omp_sum"] == float(1 << 20)
    assert log.read_text() == "still writable\n"
    assert not Path(str(log) + ".new").exists()


def test_libraries_cannot_be_loaded_after_lock_down(lib):
    code = ("import ctypes, sys\nfrom sandbox.jail import seccomp\nassert seccomp.lock_down() == 'on'\n"
            "try:\n    ctypes.CDLL(sys.argv[1])\nexcept OSError as e:\n    print('refused', e)\nelse:\n    print('loaded')\n")
    r = _python(code, str(lib[1]))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("refused") and "failed to map segment" in r.stdout, r.stdout


@pytest.mark.skipif(not X86, reason="the i386 ABI is x86-only")
def test_the_32_bit_syscall_abi_kills(lib):
    code = ("import ctypes, sys\nfrom sandbox.jail import seccomp\nlib = ctypes.CDLL(sys.argv[1])\n"
            "print(lib.i386_getpid(), flush=True)\nassert seccomp.lock_down() == 'on'\nprint(lib.i386_getpid())\n")
    r = _python(code, str(lib[0]))
    assert r.returncode == -signal.SIGSYS, (r.returncode, r.stdout, r.stderr[-2000:])
    assert len(r.stdout.split()) == 1  # the first call (before the filter) returned a pid


def test_numbers_match_the_kernel_headers():
    headers = {0: Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"), 1: Path("/usr/include/asm-generic/unistd.h")}
    checked = 0
    for col, header in headers.items():
        if not header.exists():
            continue
        text = header.read_text()
        for name, numbers in seccomp.NUMBERS.items():
            if numbers[col] is None:
                continue
            m = re.search(rf"#define __NR(?:3264)?_{name}\s+(\d+)", text)
            assert m and int(m.group(1)) == numbers[col], (header.name, name, numbers[col])
            checked += 1
    if not checked:
        pytest.skip("no kernel headers here")


def test_every_rule_names_a_known_syscall():
    named = set(seccomp.DENIED) | set(seccomp.NOT_IMPLEMENTED) | {r[0] for r in seccomp.BY_ARGUMENT}
    assert named <= set(seccomp.NUMBERS)
    assert len(seccomp.program("x86_64")) < 256 and len(seccomp.program("aarch64")) < 256
