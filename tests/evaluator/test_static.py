"""The static screen's rules, one by one (the exploit tests cover them end to end)."""
from __future__ import annotations

import pytest

from evaluator.static import kernel_names, screen

OK = '''
import torch
import torch.nn as nn
import os
from sandbox import fastpath
os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
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
    ("from evaluator import probe", "banned_import"),
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
