"""The static screen's rules, one by one (the exploit tests cover them end to end)."""
from __future__ import annotations

from pathlib import Path

import pytest

from evaluator.static import ALLOWED_KERNELWRIGHT, kernel_names, screen
from tests.data import candidates, gpu_candidates

ROOT = Path(__file__).resolve().parents[2]

OK = '''
import torch
import torch.nn as nn
from sandbox import fastpath
SRC = r"""extern "C" void k(float* y) { y[0] = 1; }"""
_lib = fastpath.compile(SRC)
class ModelNew(nn.Module):
    def forward(self, x):
        y = torch.empty_like(x)
        _lib.k(y)
        return y
'''


def rules(src: str) -> set[str]:
    return {f.rule for f in screen(src)}


def test_a_plain_fast_path_candidate_passes():
    assert screen(OK) == []


@pytest.mark.parametrize("snippet, rule", [
    ("import threading", "banned_import"),
    ("from concurrent.futures import ThreadPoolExecutor", "banned_import"),
    ("import numpy as np", "banned_import"),
    ("from evaluator.jail import probe", "harness_api"),
    ("import torch.utils._python_dispatch as d", "harness_introspection"),
    ("from torch.utils._python_dispatch import TorchDispatchMode", "harness_introspection"),
    ("x = torch._C._get_tracing_state()", "harness_introspection"),
    ("import sys\nf = sys._getframe(1)", "harness_introspection"),
    ("torch.matmul = lambda a, b: a", "monkeypatch"),
    ("import time\ntime.perf_counter = lambda: 0.0", "monkeypatch"),
    ("os.system('ls')", "banned_call"),
    ("eval('1')", "banned_call"),
    ("setattr(torch, 'add', None)", "banned_call"),
    ("try:\n    pass\nexcept Exception:\n    y = 1", "try_fallback"),
    ("class Model(nn.Module): pass\nclass ModelNew(Model): pass", "model_subclass"),
    ('S = r"""#include <thread>\nvoid f() { std::thread t([]{}); }"""', "cpp_thread"),
    ('S = r"""#include <cublas_v2.h>\nvoid f() { cublasSgemm(0); }"""', "vendor_library"),
    ('S = r"""extern "C" void f() { system(\\"ls\\"); }"""', "cpp_process"),
])
def test_each_rule_fires(snippet, rule):
    assert rule in rules(OK + "\n" + snippet + "\n")


def test_reraise_only_handler_is_allowed_and_comments_do_not_count():
    assert rules(OK + "\ntry:\n    y = 1\nexcept ValueError:\n    raise\n") == set()
    assert rules(OK + '\nS = r"""extern "C" void f() { /* std::thread t; */ }"""\n') == set()


def test_kernel_names():
    src = '__global__ void __launch_bounds__(256) gemm_kernel(float* a) {}\n@triton.jit\ndef softmax_k(x_ptr):\n    pass\n'
    assert kernel_names(src) == {"gemm_kernel", "softmax_k"}


# --- kernelwright's own modules: only the fast path's public API ----------------------------

@pytest.mark.parametrize("snippet, rule", [
    ("fastpath._launches['softmax_rows'] += 1", "harness_api"),
    ("fastpath.set_builder(None)", "harness_api"),
    ("n = fastpath.launches()", "harness_api"),
    ("b = fastpath._builder", "harness_api"),
    ("from sandbox import cpus", "harness_api"),
    ("from sandbox.fastpath import set_builder", "harness_api"),
    ("from sandbox.fastpath import *", "harness_api"),
    ("import sandbox.jail.loop", "harness_api"),
    ("import sandbox.fastpath\nsandbox.cpus.move(0)", "harness_api"),
    ("import sandbox.fastpath as fp\nfp._launches.clear()", "harness_api"),
    ("from tasks.spec import load_task", "harness_api"),
    ("import evaluator.jail.probe", "harness_api"),
    ("fp = fastpath\nfp._launches.clear()", "harness_api"),
    ("f = getattr(fastpath, 'set_' + 'builder')", "harness_api"),
    ("import os", "banned_import"),
    ("import os.path", "banned_import"),
    ("from os import environ", "banned_import"),
    ("import sys", "banned_import"),
    ("import ctypes", "banned_import"),
])
def test_harness_api_and_banned_modules(snippet, rule):
    assert rule in rules(OK + "\n" + snippet + "\n"), screen(OK + "\n" + snippet + "\n")


@pytest.mark.parametrize("snippet", [
    "import sandbox.fastpath\n_l2 = sandbox.fastpath.compile(SRC)",
    "import sandbox.fastpath as fp\n_l2 = fp.compile(SRC)",
    "from sandbox.fastpath import CompileError, Library\nx: Library = None",
    "e = fastpath.CompileError",
])
def test_the_public_fast_path_api_is_allowed(snippet):
    assert screen(OK + "\n" + snippet + "\n") == []
    assert set(ALLOWED_KERNELWRIGHT) == {"sandbox.fastpath"}


SEEDS = sorted((ROOT / "tasks" / "suites").glob("*/seeds/*.py"))


@pytest.mark.parametrize("path", SEEDS, ids=lambda p: f"{p.parent.parent.name}:{p.stem}")
def test_every_seed_is_clean(path):
    assert screen(path.read_text()) == []


@pytest.mark.parametrize("name, source", [
    ("slow", candidates.slow()), ("fast", candidates.FAST), ("scale", candidates.scale(1)),
    ("gpu_slow", gpu_candidates.SLOW), ("gpu_fast", gpu_candidates.FAST), ("gpu_triton", gpu_candidates.TRITON),
    *[(p.stem, p.read_text()) for p in sorted((ROOT / "tests" / "data").glob("*_load_inline.py"))],
])
def test_legit_test_candidates_are_clean(name, source):
    assert screen(source) == []
