"""Coverage from outside the worker (evaluator/coverage.py, sandbox/sampler.py).

The attacks stand for native code that silenced every in-worker signal: written in Python with
the static screen off (loose_evaluator), the dispatch recorder and the launch counter forged,
so only the supervisor's sampling of the worker's threads is left to see where time goes.
"""
from __future__ import annotations

import os

import pytest

from evaluator.coverage import Coverage, check, from_gpu_profile
from tests.data.candidates import FAST, slow

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="perf sampling of another process needs root here")

# what the native attack did from C++ through the interpreter's own symbols: the
# recorder records nothing, and a launch is counted for every forward
SILENCED = '''import sys
_probe = sys.modules["evaluator.jail.probe"]
_fp = sys.modules["sandbox.fastpath"]
_probe.OpRecorder.__torch_dispatch__ = lambda self, func, types, args=(), kwargs=None: func(*args, **(kwargs or {}))
_real_launches = _fp.launches
_fp.launches = lambda: {"k": sum(_real_launches().values()) + 10**9 + _probe.time.perf_counter_ns()}
'''


def test_an_honest_kernel_is_covered(evaluator, small_task):
    v = evaluator.evaluate(small_task, slow())
    assert v.status.value == "ok", v.reason
    assert v.coverage is not None and v.coverage.samples >= 50, v.flags
    assert v.coverage.share > 0.6, v.coverage
    assert v.to_json()["coverage"] == v.coverage.share and v.to_json()["attribution"]["categories"]["own"] > 0


def test_pytorch_compute_behind_silenced_instruments_is_low_coverage(loose_evaluator, small_task):
    forward = "\n        return torch.softmax(x, dim=1)"
    v = loose_evaluator.evaluate(small_task, slow(prelude=SILENCED, forward=forward))
    assert v.status.value == "rejected" and "low_coverage" in v.reason, (v.status, v.reason)
    assert v.coverage.share < 0.2 and v.coverage.categories["torch"] > v.coverage.categories["own"]


def test_a_token_launch_beside_pytorch_compute_is_low_coverage(loose_evaluator, small_task):
    """The issue's attack 1: forward returns torch.softmax after a no-op launch of its own."""
    noop = 'extern "C" void noop(float* out) { (void)out; }\n'
    forward = "\n        _lib.noop(x)\n        return torch.softmax(x, dim=1)"
    v = loose_evaluator.evaluate(small_task, slow(prelude=SILENCED, extra_cpp=noop, forward=forward))
    assert v.status.value == "rejected" and "low_coverage" in v.reason, (v.status, v.reason)


def test_spinning_in_own_code_while_pytorch_computes_costs_the_time_it_hides(loose_evaluator, small_task):
    """Faking coverage: a thread spins in the candidate's library while the main thread computes
    with PyTorch. On the timing cores the spin's CPU time is wall time too: either coverage is
    low, or the candidate pays for the coverage it faked and earns nothing."""
    spin = r'''
#include <chrono>
extern "C" void spin(double ms) {
    volatile double acc = 0.0;
    auto until = std::chrono::steady_clock::now() + std::chrono::duration<double, std::milli>(ms);
    while (std::chrono::steady_clock::now() < until) acc += 1.0;
}
'''
    prelude = SILENCED + "import threading\n"
    forward = """
        t = threading.Thread(target=_lib.spin, args=(0.5,))
        t.start()
        out = torch.softmax(x, dim=1)
        t.join()
        return out"""
    v = loose_evaluator.evaluate(small_task, slow(prelude=prelude, extra_cpp=spin, forward=forward))
    assert v.status.value != "ok" or v.speedup < 1.0, (v.status, v.reason, v.speedup)


def test_the_rule():
    cov = Coverage(share=0.3, samples=400, categories={"own": 120, "torch": 280}, mode="threads")
    assert "low_coverage: 30%" in check(cov, 0.5) and "torch 70%" in check(cov, 0.5)
    assert check(cov, 0.25) is None and check(cov, 0.0) is None
    assert check(Coverage(0.1, 10, {"own": 1}, "threads"), 0.5) is None  # too few samples to judge
    assert check(None, 0.5) is None


def test_the_fast_kernel_keeps_its_verdict(evaluator, small_task):
    v = evaluator.evaluate(small_task, FAST)
    assert v.status.value == "ok" and v.coverage.share > 0.5, (v.reason, v.coverage)


def test_gpu_coverage_is_the_profiled_time_share_of_the_candidates_kernels():
    spent = {"softmax_rows_kernel": 30.0, "at::native::vectorized_elementwise_kernel": 70.0}
    cov = from_gpu_profile(spent, {"softmax_rows_kernel"})
    assert abs(cov.share - 0.3) < 1e-9 and cov.mode.startswith("cuda")
    assert "low_coverage: 30% of the GPU time" in check(cov, 0.5)  # no sample count on GPUs
    assert check(from_gpu_profile({"softmax_rows_kernel": 5.0}, {"softmax_rows_kernel"}), 0.5) is None
    assert from_gpu_profile({}, {"k"}) is None
