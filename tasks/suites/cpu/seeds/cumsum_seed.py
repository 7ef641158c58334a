"""Inclusive prefix sum along dim 1, accumulated in double like PyTorch's CPU kernel.

A sequential double sum is latency bound (one add per element, 4 cycles each). This kernel
splits each row into SEGMENTS pieces: pass 1 sums every piece (vectorized), a short scan over
the piece totals gives each piece its starting offset, and pass 2 runs the SEGMENTS running
sums side by side, so the out-of-order core overlaps their add chains. Different summation
order from the reference, but in double, so the float outputs agree to the last bit or so.
"""
import torch
import torch.nn as nn

from sandbox import fastpath

SEGMENTS = 8
ROWS_PER_TASK = 4
KNOBS = {"SEGMENTS": [1, 2, 4, 8, 16], "ROWS_PER_TASK": [1, 4, 16]}

SRC = r'''
#include <cstdint>

static void cumsum_row(float* __restrict out, const float* __restrict x, int64_t n) {
    const int64_t S = n >= 4 * SEGMENTS ? SEGMENTS : 1;
    const int64_t seg = n / S;  // the last piece also takes the remainder
    double start[SEGMENTS];
    double carry = 0.0;
    for (int64_t s = 0; s < S; ++s) {
        const int64_t lo = s * seg, hi = s == S - 1 ? n : lo + seg;
        start[s] = carry;
        double t = 0.0;
#pragma omp simd reduction(+:t)
        for (int64_t i = lo; i < hi; ++i) t += (double)x[i];
        carry += t;
    }
    double acc[SEGMENTS];
    for (int64_t s = 0; s < S; ++s) acc[s] = start[s];
    for (int64_t i = 0; i < seg; ++i) {
        for (int64_t s = 0; s < S; ++s) {
            acc[s] += (double)x[s * seg + i];
            out[s * seg + i] = (float)acc[s];
        }
    }
    for (int64_t i = S * seg; i < n; ++i) {  // the remainder belongs to the last piece
        acc[S - 1] += (double)x[i];
        out[i] = (float)acc[S - 1];
    }
}

extern "C" void cumsum_rows(float* __restrict out, const float* __restrict x, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static, ROWS_PER_TASK)
    for (int64_t r = 0; r < rows; ++r) cumsum_row(out + r * cols, x + r * cols, cols);
}
'''
_lib = fastpath.compile(SRC, defines={"SEGMENTS": SEGMENTS, "ROWS_PER_TASK": ROWS_PER_TASK})


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        out = torch.empty_like(x)
        _lib.cumsum_rows(out, x, x.shape[0], x.shape[1])
        return out
