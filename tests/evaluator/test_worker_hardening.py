"""Native code in a real sandboxed worker, making raw syscalls (inline asm: no libc symbol a
binary screen could see), must get nowhere: sandbox/jail/seccomp.py denies them after the import.

The attack kernel reports what each syscall returned and computes the honest softmax only if
every attack failed with EPERM; if any succeeded (or was not even attempted) it writes zeros.
So `ok` proves the attacks ran and failed, a working one shows as `incorrect`, and the printed
return values (the worker's log comes back in the verdict) say which.
"""
from __future__ import annotations

import platform
import re

import pytest

from tests.data.candidates import slow

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="the attacks are x86_64 asm")

RAW = r'''
static long raw_syscall6(long n, long a = 0, long b = 0, long c = 0, long d = 0, long e = 0, long f = 0) {
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}
'''

ATTACKS = RAW + r'''
static const char MEM[] = "/proc/self/mem";
extern "C" void attacked_softmax(float* out, const float* x, int64_t rows, int64_t cols, int64_t* res) {
    res[0] = raw_syscall6(2, (long)MEM, 2);             // open("/proc/self/mem", O_RDWR)
    if (res[0] >= 0) raw_syscall6(3, res[0]);
    res[1] = raw_syscall6(101, 0);                        // ptrace(PTRACE_TRACEME)
    long pid = raw_syscall6(57);                          // fork()
    if (pid == 0) raw_syscall6(231, 0);                   // (a child leaves at once)
    if (pid > 0) raw_syscall6(61, pid, 0, 0, 0);
    res[2] = pid;
    res[3] = raw_syscall6(9, 0, 4096, 7, 0x22, -1, 0);    // mmap(RWX, MAP_PRIVATE|MAP_ANONYMOUS)
    if (res[3] >= 0 || res[3] < -4095) raw_syscall6(11, res[3], 4096);
    static char params[120];
    res[4] = raw_syscall6(425, 1, (long)params);          // io_uring_setup(1, &params)
    if (res[4] >= 0) raw_syscall6(3, res[4]);
    bool all_failed = true;
    for (int i = 0; i < 5; ++i) all_failed = all_failed && res[i] == -1;  // -EPERM
    if (all_failed) { softmax_slow(out, x, rows, cols); return; }
    for (int64_t i = 0; i < rows * cols; ++i) out[i] = 0.f;
}
'''

ATTACK_FORWARD = """
        res = torch.full((5,), 12345, dtype=torch.int64)
        out = torch.empty_like(x)
        _lib.attacked_softmax(out, x, x.shape[0], x.shape[1], res)
        print("ATTACKS", res.tolist(), flush=True)
        return out"""

FORGE = RAW + r'''
static const char FRAME[] = "KWP1\x5c\x00\x00\x00{\"kind\": \"outputs\", \"meta\": {\"tree\": {\"t\": 0}, \"report\": {}, \"n_outputs\": 1}, \"tensors\": []}";
extern "C" void forged_softmax(float* out, const float* x, int64_t rows, int64_t cols) {
    for (long fd = 3; fd <= 64; ++fd)                   // the result socket is one of these
        raw_syscall6(1, fd, (long)FRAME, sizeof(FRAME) - 1);
    softmax_slow(out, x, rows, cols);
}
'''

FORGE_FORWARD = """
        out = torch.empty_like(x)
        _lib.forged_softmax(out, x, x.shape[0], x.shape[1])
        return out"""


def test_frame_literal_is_well_formed():
    frame = re.search(r'FRAME\[\] = "(.*)";', FORGE).group(1).encode().decode("unicode_escape").encode("latin-1")
    header = frame[8:].replace(b'\\"', b'"')
    assert frame[:4] == b"KWP1" and int.from_bytes(frame[4:8], "little") == len(header)


@pytest.mark.parametrize("which", ["evaluator", "loose_evaluator"])
def test_raw_syscall_attacks_fail_with_eperm(which, request, small_task):
    v = request.getfixturevalue(which).evaluate(small_task, slow(extra_cpp=ATTACKS, forward=ATTACK_FORWARD))
    seen = re.findall(r"ATTACKS \[([-\d, ]+)\]", v.log)
    assert seen, (v.status, v.reason, v.log[-2000:])
    values = [int(n) for n in seen[-1].split(",")]
    assert values == [-1] * 5, f"open /proc/self/mem, ptrace, fork, mmap RWX, io_uring returned {values}"
    assert v.status.value == "ok", (v.reason, values)
    assert not any("seccomp" in f for f in v.flags), v.flags


@pytest.mark.parametrize("which", ["evaluator", "loose_evaluator"])
def test_forged_frame_on_the_result_socket(which, request, small_task):
    ev = request.getfixturevalue(which)
    v = ev.evaluate(small_task, slow(extra_cpp=FORGE, forward=FORGE_FORWARD))
    assert v.status.value != "ok", v.reason
    assert v.speedup is None
    again = ev.evaluate(small_task, slow())  # the evaluator and its sandbox are still fine
    assert again.status.value == "ok", again.reason


# --- dlmopen: a fast-path library has a link-map namespace of its own ------------------------

PYTHON_API = r'''
extern "C" int PyGILState_Ensure(void);
extern "C" void PyGILState_Release(int);
extern "C" int PyRun_SimpleString(const char*);
extern "C" void run_python(float* out, const float* x, int64_t rows, int64_t cols) {
    int g = PyGILState_Ensure();
    PyRun_SimpleString("print('INJECTED', flush=True)");
    PyGILState_Release(g);
    softmax_slow(out, x, rows, cols);
}
'''


def test_kernel_cannot_bind_the_interpreter(loose_evaluator, small_task):
    """Through the evaluator: the binary screen (where present) or the namespace stops it."""
    forward = "\n        out = torch.empty_like(x)\n        _lib.run_python(out, x, x.shape[0], x.shape[1])\n        return out"
    v = loose_evaluator.evaluate(small_task, slow(extra_cpp=PYTHON_API, forward=forward))
    assert "INJECTED" not in v.log, v.log[-2000:]
    assert v.status.value != "ok"
    assert "undefined symbol" in v.reason or "binary_screen" in v.reason, (v.reason, v.log[-2000:])


BIND = r"""
import sys
from sandbox import fastpath
sys.path.insert(0, ".")
from tests.data.candidates import SLOW_CPP
from tests.evaluator.test_worker_hardening import PYTHON_API
try:
    lib = fastpath.compile(SLOW_CPP + PYTHON_API)
except OSError as e:
    print("REFUSED", e)
else:
    import torch
    x = torch.randn(2, 4)
    lib.run_python(torch.empty_like(x), x, 2, 4)
"""


def test_the_namespace_alone_refuses_interpreter_symbols(tmp_path):
    """No binary screen here (the local builder): dlmopen is what refuses the library."""
    import subprocess
    import sys
    from pathlib import Path

    r = subprocess.run([sys.executable, "-c", BIND], capture_output=True, text=True, timeout=120, check=False,
                       cwd=Path(__file__).resolve().parents[2],
                       env={"KERNELWRIGHT_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "INJECTED" not in r.stdout
    assert r.stdout.startswith("REFUSED") and "undefined symbol: Py" in r.stdout, r.stdout


NAMESPACES = r"""
import ctypes, sys
from sandbox import fastpath
if sys.argv[1] == "exhaust":  # use up the process's namespaces first, as other code could
    dl = ctypes.CDLL(None)
    dl.dlmopen.restype, dl.dlmopen.argtypes = ctypes.c_void_p, [ctypes.c_long, ctypes.c_char_p, ctypes.c_int]
    while dl.dlmopen(-1, b"libgomp.so.1", 2):
        pass
loaders = []
for i in range(18):
    src = "#include <cstdint>\n" f"extern \"C\" int64_t k{i}(int64_t n) {{ int64_t s = 0;\n"
    src += "#pragma omp parallel for reduction(+:s)\n for (int64_t j = 0; j < n; ++j) s += j; return s + %d; }" % i
    lib = fastpath.compile(src)
    assert getattr(lib, f"k{i}")(1000) == 499500 + i
    loaders.append(lib.loader)
print("\n".join(loaders))
"""


@pytest.mark.parametrize("mode", ["plain", "exhaust"])
def test_many_libraries_share_one_namespace(mode, tmp_path):
    """18 libraries, OpenMP in each: all in the one kernel namespace; where the process has no
    namespace left to give, plain dlopen, saying why."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-c", NAMESPACES, mode], capture_output=True, text=True, timeout=300,
                       cwd=root, check=False,
                       env={"KERNELWRIGHT_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr[-3000:]
    loaders = r.stdout.split("\n")[:18]
    if mode == "plain":
        assert loaders == ["dlmopen"] * 18, loaders
    else:
        assert all(lo.startswith("dlopen (no namespace: ") for lo in loaders), loaders
