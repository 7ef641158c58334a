"""KernelBench and CUDA-L1 candidates run unchanged: load_inline (slow to build: a few tests only)."""
from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="module")
def build_evaluator(sandbox):
    """A torch extension build takes ~26 s here, minutes on a loaded machine: a roomier limit."""
    from evaluator.cascade import EvalConfig, Evaluator
    from tests.conftest import FAST_TIMING

    ev = Evaluator(sandbox, EvalConfig(timeout_s=600, timing=FAST_TIMING))
    yield ev
    ev.close()


@pytest.mark.slow
def test_load_inline_candidate_is_ok_and_cached(build_evaluator, small_task):
    evaluator = build_evaluator
    src = (DATA / "softmax_load_inline.py").read_text()
    v = evaluator.evaluate(small_task, src)
    assert v.status.value == "ok", (v.reason, v.log[-2000:])
    assert v.speedup is not None
    again = evaluator.evaluate(small_task, src)  # same sources and flags: no rebuild
    assert again.status.value == "ok"
    assert again.stages["compile"] < v.stages["compile"] / 3


@pytest.mark.slow
def test_load_inline_build_error_is_a_compile_error(build_evaluator, small_task):
    evaluator = build_evaluator
    src = (DATA / "softmax_load_inline.py").read_text().replace("return out;", "return out")
    v = evaluator.evaluate(small_task, src)
    assert v.status.value == "compile_error"
    assert "error" in v.log.lower()
