"""Attention decode (one query per sequence and head), bf16: flash-decoding in two Triton kernels.

One query row cannot fill an H100 from B * H programs alone, so the cache is split along the
sequence: program (split, b*h) reads SPLIT_LEN keys and values of one head in BLOCK_N-row blocks
and keeps an fp32 running maximum, sum and weighted sum of values (online softmax, base 2, the
1/sqrt(D) scale folded into log2(e)). The score q.k and the weighted sum are plain multiplies
and row sums: with a single query row, tensor cores would only pad. A second kernel merges the
splits of each head, rescaling each by exp2(m_split - m_max). Every load is masked on the
sequence end, so any S works. (These loads do not feed tl.dot, so Triton does not software-
pipeline them; memory parallelism comes from many small programs resident per SM.)
"""
import torch
import torch.nn as nn
import triton
import triton.language as tl

BLOCK_N = 64
SPLIT_LEN = 512
NUM_WARPS = 4
KNOBS = {
    "BLOCK_N": [32, 64, 128],
    "SPLIT_LEN": [128, 256, 512, 1024],
    "NUM_WARPS": [2, 4, 8],
}
KNOB_CONSTRAINTS = [
    # a BLOCK_N x 128 block in fp32 registers, at most 128 per thread (no spills)
    "BLOCK_N <= 32 * NUM_WARPS",
]

LOG2E = 1.4426950408889634


@triton.jit
def attn_decode_split_kernel(q_ptr, k_ptr, v_ptr, part_o_ptr, part_m_ptr, part_l_ptr,
                             stride_qb, stride_qh, stride_kb, stride_kh, stride_ks,
                             stride_vb, stride_vh, stride_vs, H, S, num_splits, qk_scale,
                             HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_LEN: tl.constexpr):
    split = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + offs_d).to(tl.float32)
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh

    m_i = tl.max(tl.full((BLOCK_N,), float("-inf"), tl.float32), axis=0)
    l_i = tl.sum(tl.zeros((BLOCK_N,), dtype=tl.float32), axis=0)
    acc = tl.zeros((HEAD_DIM,), dtype=tl.float32)
    start = split * SPLIT_LEN  # < S: the split's first block always has a live key
    for start_n in range(start, start + SPLIT_LEN, BLOCK_N):
        rows = start_n + offs_n
        live = rows < S
        k = tl.load(k_base + rows[:, None] * stride_ks + offs_d[None, :], mask=live[:, None], other=0.0)
        v = tl.load(v_base + rows[:, None] * stride_vs + offs_d[None, :], mask=live[:, None], other=0.0)
        s = tl.sum(k.to(tl.float32) * q[None, :], axis=1) * qk_scale
        s = tl.where(live, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=0))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
        m_i = m_new
    slot = bh * num_splits + split
    tl.store(part_o_ptr + slot * HEAD_DIM + offs_d, acc)
    tl.store(part_m_ptr + slot, m_i)
    tl.store(part_l_ptr + slot, l_i)


@triton.jit
def attn_decode_combine_kernel(part_o_ptr, part_m_ptr, part_l_ptr, o_ptr, stride_ob, stride_oh, H, num_splits,
                               HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr):
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    offs_s = tl.arange(0, SPLITS)
    offs_d = tl.arange(0, HEAD_DIM)
    used = offs_s < num_splits
    slots = bh * num_splits + offs_s
    m = tl.load(part_m_ptr + slots, mask=used, other=float("-inf"))
    lse = tl.load(part_l_ptr + slots, mask=used, other=0.0)
    parts = tl.load(part_o_ptr + slots[:, None] * HEAD_DIM + offs_d[None, :], mask=used[:, None], other=0.0)
    w = tl.math.exp2(m - tl.max(m, axis=0))  # unused splits: exp2(-inf) = 0
    out = tl.sum(w[:, None] * parts, axis=0) / tl.sum(w * lse, axis=0)
    tl.store(o_ptr + b * stride_ob + h * stride_oh + offs_d, out.to(o_ptr.dtype.element_ty))


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        batch, heads, seq, dim = k.shape
        assert q.shape == (batch, heads, 1, dim), "one query token per sequence and head"
        assert dim in (16, 32, 64, 128, 256), "head_dim must be a power of two from 16 to 256"
        num_splits = triton.cdiv(seq, SPLIT_LEN)
        part_o = torch.empty((batch * heads * num_splits, dim), dtype=torch.float32, device=q.device)
        part_m = torch.empty((batch * heads * num_splits,), dtype=torch.float32, device=q.device)
        part_l = torch.empty((batch * heads * num_splits,), dtype=torch.float32, device=q.device)
        o = torch.empty_like(q)
        attn_decode_split_kernel[(num_splits, batch * heads)](
            q, k, v, part_o, part_m, part_l, q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), heads, seq, num_splits, LOG2E / dim ** 0.5,
            HEAD_DIM=dim, BLOCK_N=BLOCK_N, SPLIT_LEN=SPLIT_LEN, num_warps=NUM_WARPS)
        attn_decode_combine_kernel[(batch * heads,)](
            part_o, part_m, part_l, o, o.stride(0), o.stride(1), heads, num_splits,
            HEAD_DIM=dim, SPLITS=max(2, triton.next_power_of_2(num_splits)), num_warps=4)
        return o
