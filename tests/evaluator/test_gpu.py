"""GPU evaluations: CUDA (fast path and load_inline) and Triton candidates, and the GPU cheats.

Skipped without an NVIDIA GPU; scripts/gpu_check.sh runs them on a GPU node.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from evaluator.cascade import EvalConfig, Evaluator
from evaluator.rules import Policy
from sandbox.process import ProcessSandbox, SandboxConfig
from tests.conftest import FAST_TIMING
from tests.data import gpu_candidates as gc

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]
DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="module")
def gpu_sandbox(cache_dir, tmp_path_factory):
    isolate = os.environ.get("KERNELWRIGHT_ISOLATE", "1") != "0"  # CUDA refused to start in the jail on one H100 VM
    with ProcessSandbox(SandboxConfig(cache_dir=cache_dir, root=tmp_path_factory.mktemp("gpu"), device="cuda",
                                      isolate=isolate)) as sb:
        yield sb


@pytest.fixture(scope="module")
def gpu_eval(gpu_sandbox):
    ev = Evaluator(gpu_sandbox, EvalConfig(device="cuda", timeout_s=240, timing=FAST_TIMING))
    yield ev
    ev.close()


@pytest.fixture(scope="module")
def gpu_loose(gpu_sandbox):
    ev = Evaluator(gpu_sandbox, EvalConfig(device="cuda", timeout_s=240, timing=FAST_TIMING,
                                           policy=Policy(static_screen=False), compare_compile=False))
    yield ev
    ev.close()


def never_earned(v) -> None:
    assert not (v.status.value == "ok" and (v.speedup or 0.0) >= 1.0), (v.status, v.reason, v.speedup)


def test_honest_cuda_kernels(gpu_eval, small_task):
    slow = gpu_eval.evaluate(small_task, gc.SLOW)
    assert slow.status.value == "ok", (slow.reason, slow.log[-2000:])
    assert slow.speedup < 1.0
    fast = gpu_eval.evaluate(small_task, gc.FAST)
    assert fast.status.value == "ok", fast.reason
    assert fast.fingerprint.get("gpu") and fast.fingerprint.get("capability")
    assert fast.reference_compiled is not None


def test_triton_candidate(gpu_eval, small_task):
    v = gpu_eval.evaluate(small_task, gc.TRITON)
    assert v.status.value == "ok", (v.reason, v.log[-2000:])


@pytest.mark.slow
def test_load_inline_cuda_candidate(gpu_eval, small_task):
    v = gpu_eval.evaluate(small_task, (DATA / "cuda_load_inline.py").read_text())
    assert v.status.value == "ok", (v.reason, v.log[-2000:])


def test_work_on_another_stream(gpu_eval, small_task):
    v = gpu_eval.evaluate(small_task, gc.HIDDEN_STREAM)
    assert v.status.value == "rejected" and "hidden_stream_work" in v.reason, (v.status, v.reason)


def test_lazy_output(gpu_eval, small_task):
    v = gpu_eval.evaluate(small_task, gc.LAZY)
    assert v.status.value == "rejected" and "lazy_output" in v.reason


def test_unwritten_output_reusing_freed_memory(gpu_eval, small_task):
    v = gpu_eval.evaluate(small_task, gc.UNWRITTEN)
    assert v.status.value == "incorrect", (v.status, v.reason)


def test_background_thread(gpu_eval, gpu_loose, small_task):
    v = gpu_eval.evaluate(small_task, gc.THREAD)
    assert v.status.value == "rejected" and "banned_import" in v.reason
    v = gpu_loose.evaluate(small_task, gc.THREAD)
    assert v.status.value in ("rejected", "incorrect"), v.reason
    never_earned(v)


def test_pytorch_op_and_ghost_kernel(gpu_loose, small_task):
    v = gpu_loose.evaluate(small_task, gc.cuda("\n        _lib.noop(x)\n        return torch.softmax(x, dim=1)"))
    assert v.status.value == "rejected" and "pytorch_compute" in v.reason
