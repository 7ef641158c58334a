"""Native code reaching the harness (../shared/HACKS.md, "Native and late-2026 classes").

The candidate's C++ binds the interpreter's own symbols through asm labels (no `extern "C"` for
the prototype parser to see, no banned word for the static screen), runs Python from inside the
library and so disarms the harness from within the worker; forward then returns PyTorch's
result after a no-op launch. The binary screen refuses the library before the worker gets it,
with the static screen on or off.
"""
from __future__ import annotations

import pytest

from sandbox import binscreen
from tests.data.candidates import FAST, HEADER

NATIVE = r'''
#include <cstdint>
int run_python(const char*) __asm__("PyRun_SimpleString");
int gil_ensure() __asm__("PyGILState_Ensure");
void gil_release(int) __asm__("PyGILState_Release");

extern "C" void prepare(int64_t unused) {
    (void)unused;
    int g = gil_ensure();
    run_python(PAYLOAD);
    gil_release(g);
}
extern "C" void noop(float* out) { (void)out; }
'''
PAYLOADS = {  # C string literals, run by the interpreter inside the worker
    # the op recorder sees nothing, so torch.softmax in forward passes for a kernel
    "recorder": r'"import sys\n'
                r'rec = sys.modules[\"evaluator.jail.instruments\"].OpRecorder\n'
                r'rec.__torch_dispatch__ = lambda self, func, types, args=(), kwargs=None: func(*args, **(kwargs or {}))\n"',
    # the same route slows the harness's clock
    "clock": r'"import time\n_pc = time.perf_counter\ntime.perf_counter = lambda: _pc() * 0.25\n"',
}


def native_attack(payload: str) -> str:
    return HEADER + f'''
SRC = r"""{NATIVE.replace("PAYLOAD", PAYLOADS[payload])}"""
_lib = fastpath.compile(SRC)
_lib.prepare(0)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        out = torch.empty_like(x)
        _lib.noop(out)
        return torch.softmax(x, dim=1)
'''


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize("which", ["evaluator", "loose_evaluator"])
def test_native_code_binding_the_interpreter_is_rejected(which, payload, request, small_task):
    v = request.getfixturevalue(which).evaluate(small_task, native_attack(payload))
    assert v.status.value == "rejected", (v.status, v.reason, v.log[-1500:])
    assert v.reason.startswith("binary_screen: the library imports Py"), v.reason
    assert "(the Python interpreter: kernels must not reach the harness)" in v.reason


def test_without_the_binary_screen_the_library_reaches_the_worker(evaluator, small_task, monkeypatch):
    """The control: the screen is what stops it here. (On main this verdict was `ok`; the
    worker's own loader now refuses the symbols where it can, a second line behind this one.)"""
    monkeypatch.setattr(binscreen, "screen_build", lambda spec, result: result)
    v = evaluator.evaluate(small_task, native_attack("recorder"))
    assert "binary_screen" not in v.reason and v.status.value in ("ok", "runtime_error"), (v.status, v.reason)
    assert v.status.value == "ok" or "PyGILState_Ensure" in v.reason or "PyRun_SimpleString" in v.reason


def test_an_honest_fast_path_candidate_is_still_ok(evaluator, small_task):
    v = evaluator.evaluate(small_task, FAST)
    assert v.status.value == "ok", (v.status, v.reason)
    assert not any("binary_screen" in f for f in v.flags)
