"""Work per task: FLOPs from PyTorch's counter (plus elementwise), bytes from tensors, declared first."""
from __future__ import annotations

from pathlib import Path

import pytest

from tasks.registry import suite_tasks
from tasks.spec import load_task
from tasks.work import Work, derive, per_variant, work

MATMUL = '''
import torch
import torch.nn as nn

KERNELWRIGHT = {{"variants": [{{"M": 8, "N": 3, "K": 5}}]{extra}}}
M = 16
N = 24
K = 32


class Model(nn.Module):
    def forward(self, a, b):
        return torch.matmul(a, b)


def get_inputs():
    return [torch.randn(M, K), torch.randn(K, N)]


def get_init_inputs():
    return []
'''


def matmul_task(tmp_path: Path, extra: str = "", name: str = "mm"):
    path = tmp_path / f"{name}.py"
    path.write_text(MATMUL.format(extra=extra))
    return load_task(path)


def suite(name: str):
    return next(t for t in suite_tasks("cpu") if t.name == name)


def test_matmul_flops_are_2mnk_and_bytes_are_inputs_plus_output(tmp_path):
    task = matmul_task(tmp_path)
    w = work(task)
    assert w == Work(2.0 * 16 * 24 * 32, 4.0 * (16 * 32 + 32 * 24 + 16 * 24), "derived", None)
    v = per_variant(task)
    assert len(v) == 2 and v[0] == w
    assert (v[1].flops, v[1].bytes, v[1].variant) == (2.0 * 8 * 3 * 5, 4.0 * (8 * 5 + 5 * 3 + 8 * 3), {"M": 8, "N": 3, "K": 5})


def test_softmax_bytes_are_input_plus_output_per_variant():
    ws = per_variant(suite("softmax"))
    shapes = [(256, 4096), (7, 1000), (33, 77)]
    assert [w.bytes for w in ws] == [2.0 * 4 * b * d for b, d in shapes]
    # the counter counts no matmul here; one FLOP per element stands in (a lower bound)
    assert [w.flops for w in ws] == [float(b * d) for b, d in shapes]
    assert all(w.source == "derived" for w in ws)


def test_parameters_count_and_causal_attention_counts_its_unmasked_half():
    w = work(suite("gelu_linear"))
    assert w.bytes == 4.0 * (128 * 512 + 512 * 512 + 512 + 128 * 512)  # x, W, b, out
    assert w.flops == 2.0 * 128 * 512 * 512 + 128 * 512  # addmm, then one per element for GELU
    a = derive(suite("causal_attention"))
    b, h, s, d = 2, 4, 128, 64
    assert a.flops == pytest.approx(4 * b * h * s * s * d * (s + 1) / (2 * s), rel=1e-6)
    assert a.bytes == 4.0 * 4 * b * h * s * d  # q, k, v, out


def test_declared_figures_win_and_scale_to_variants(tmp_path):
    task = matmul_task(tmp_path, extra=', "flops": 1e6, "bytes": 5e5', name="declared")
    assert work(task) == Work(1e6, 5e5, "declared", None)
    v = work(task, {"M": 8, "N": 3, "K": 5})
    assert v.source == "declared"
    assert v.flops == pytest.approx(1e6 * (8 * 3 * 5) / (16 * 24 * 32))
    assert v.bytes == pytest.approx(5e5 * (8 * 5 + 5 * 3 + 8 * 3) / (16 * 32 + 32 * 24 + 16 * 24))
    mixed = work(matmul_task(tmp_path, extra=', "flops": 7.0', name="mixed"))
    assert (mixed.flops, mixed.bytes, mixed.source) == (7.0, 4.0 * (16 * 32 + 32 * 24 + 16 * 24), "mixed")
