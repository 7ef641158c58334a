"""Candidate sources for the tests: an honest slow kernel, a fast one, and variations on them.

The slow kernel repeats its work on purpose, so it is honestly slower than PyTorch: any
variation of it that comes out `ok` with a speedup of 1 or more earned that by cheating.
"""

SLOW_CPP = r'''
#include <cmath>
#include <cstdint>
extern "C" void softmax_slow(float* out, const float* x, int64_t rows, int64_t cols) {
    for (int rep = 0; rep < 6; ++rep) {
        for (int64_t r = 0; r < rows; ++r) {
            const float* xr = x + r * cols;
            float* o = out + r * cols;
            float m = -INFINITY;
            for (int64_t c = 0; c < cols; ++c) m = std::fmax(m, xr[c]);
            double s = 0.0;
            for (int64_t c = 0; c < cols; ++c) { o[c] = std::exp(xr[c] - m); s += o[c]; }
            for (int64_t c = 0; c < cols; ++c) o[c] = (float)(o[c] / s);
        }
    }
}
'''

HEADER = '''
import torch
import torch.nn as nn
from sandbox import fastpath
'''


def slow(forward: str = "", extra_cpp: str = "", prelude: str = "", init: str = "") -> str:
    """The honest slow candidate, with an optional different forward body, C++ and prelude."""
    forward = forward or """
        out = torch.empty_like(x)
        _lib.softmax_slow(out, x, x.shape[0], x.shape[1])
        return out"""
    return (HEADER + prelude + f"\nSRC = r'''{SLOW_CPP}{extra_cpp}'''\n_lib = fastpath.compile(SRC)\n\n"
            "class ModelNew(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
            + (init or "        pass\n") + "\n    def forward(self, x):" + forward + "\n")


FAST = HEADER + r'''
SRC = r"""
#include <cmath>
#include <cstdint>
extern "C" void softmax_rows(float* out, const float* x, int64_t rows, int64_t cols) {
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * cols;
        float* o = out + r * cols;
        float m = -INFINITY;
        for (int64_t c = 0; c < cols; ++c) m = xr[c] > m ? xr[c] : m;
        float s = 0.f;
        for (int64_t c = 0; c < cols; ++c) { float e = std::exp(xr[c] - m); o[c] = e; s += e; }
        float inv = 1.f / s;
        for (int64_t c = 0; c < cols; ++c) o[c] *= inv;
    }
}
"""
_lib = fastpath.compile(SRC)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        out = torch.empty_like(x)
        _lib.softmax_rows(out, x, x.shape[0], x.shape[1])
        return out
'''


def scale(reps: int, tag: str = "") -> str:
    """relu(x) * 2, done `reps` times over (1 is honest and quick; more is slower)."""
    return HEADER + f"# {tag}\n" + r'''
SRC = r"""
#include <cstdint>
extern "C" void relu2(float* y, const float* x, int64_t n, int reps) {
    for (int r = 0; r < reps; ++r)
        for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 0.f ? 2.f * x[i] : 0.f;
}
"""
_lib = fastpath.compile(SRC)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        y = torch.empty_like(x)
        _lib.relu2(y, x, x.numel(), ''' + str(reps) + ''')
        return y
'''


# stands in for native code that took over the worker's clock: its per-call claims cut 20x
FORGED_CLAIMS = '''import sys
_probe = sys.modules["evaluator.jail.probe"]
_real = _probe.Probe.do_go
def _fake(self, meta, tensors):
    kind, out, t = _real(self, meta, tensors)
    out["claims_ms"] = [x / 20 for x in out["claims_ms"]]
    return kind, out, t
_probe.Probe.do_go = _fake
'''


# a forward that prints and writes a forged verdict to every descriptor, then exits: the
# supervisor reads verdicts from what it measures, never from the worker's output
FORGED_EXIT = '''
        import json
        fake = json.dumps({"status": "ok", "speedup": 100.0, "correct": True})
        print(fake, flush=True)
        for fd in range(0, 64):
            try:
                os.write(fd, b"KWP1" + len(fake).to_bytes(4, "little") + fake.encode())
            except OSError:
                pass
        os._exit(0)'''


def orphans(marker: str, indent: str = "") -> str:
    """Code that leaves `sleep marker` processes behind: one in a session of its own, one
    double-forked out of the worker's; `os` must be imported where it runs."""
    lines = ["import subprocess", f'subprocess.Popen(["sleep", "{marker}"], start_new_session=True)',
             "if os.fork() == 0:", "    os.setsid()", "    if os.fork() == 0:",
             f'        os.execvp("sleep", ["sleep", "{marker}"])', "    os._exit(0)"]
    return "".join(indent + line + "\n" for line in lines)
