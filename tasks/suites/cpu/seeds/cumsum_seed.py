"""Inclusive prefix sum along dim 1, accumulated in double like PyTorch's CPU kernel.

Eight floats at a time are widened to two 4-lane double vectors and scanned in registers
(two shift-and-add steps each), then the running total is added and carried on. The carry is
one dependency chain per row; SEGMENTS > 1 splits each row into pieces whose totals are
summed first (vectorized), so that several carry chains run side by side. Summation order
differs from the reference but is in double, so the float outputs agree to about one ulp.
Rows are handed out dynamically (see the softmax seed for why).
"""
import torch
import torch.nn as nn

from sandbox import fastpath

SEGMENTS = 1
ROWS_PER_TASK = 4
PARALLEL = 1  # 0: run on the calling thread alone (no team, no barrier)
KNOBS = {"SEGMENTS": [1, 2, 4], "ROWS_PER_TASK": [1, 4, 8, 16], "PARALLEL": [0, 1]}
KNOB_CONSTRAINTS = ["PARALLEL == 1 or ROWS_PER_TASK == 1"]  # the split only matters with a team

SRC = r'''
#include <cstdint>
#include <cstring>

typedef double v4d __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef long long v4i __attribute__((vector_size(32)));

static inline v4d load4(const float* p) { v4f f; std::memcpy(&f, p, sizeof f); return __builtin_convertvector(f, v4d); }
static inline void store4(float* p, v4d v) { v4f f = __builtin_convertvector(v, v4f); std::memcpy(p, &f, sizeof f); }
static inline v4d last(v4d v) { return __builtin_shuffle(v, (v4i){3, 3, 3, 3}); }
static inline v4d scan4(v4d v) {  // inclusive prefix sum of the four lanes
    const v4d z = {0, 0, 0, 0};
    v += __builtin_shuffle(z, v, (v4i){0, 4, 5, 6});
    v += __builtin_shuffle(z, v, (v4i){0, 1, 4, 5});
    return v;
}
static inline v4d step8(float* __restrict o, const float* __restrict x, v4d carry) {
    v4d a = scan4(load4(x)), b = scan4(load4(x + 4));
    b += last(a);
    store4(o, a + carry);
    b += carry;
    store4(o + 4, b);
    return last(b);
}

template <int S>
static void scan_row(float* __restrict out, const float* __restrict x, int64_t n) {
    const int64_t seg = n / S / 8 * 8;  // S pieces of seg values; the last one runs on to n
    v4d c[S];
    double total = 0.0;
    for (int s = 0; s < S; ++s) {
        c[s] = (v4d){total, total, total, total};
        if (s == S - 1) break;
        double t = 0.0;
#pragma omp simd reduction(+:t)
        for (int64_t i = s * seg; i < (s + 1) * seg; ++i) t += (double)x[i];
        total += t;
    }
    for (int64_t i = 0; i < seg; i += 8) {
#pragma GCC unroll 4
        for (int s = 0; s < S; ++s) c[s] = step8(out + s * seg + i, x + s * seg + i, c[s]);
    }
    v4d carry = c[S - 1];
    int64_t i = S * seg;
    for (; i + 8 <= n; i += 8) carry = step8(out + i, x + i, carry);
    double run = carry[0];
    for (; i < n; ++i) {
        run += (double)x[i];
        out[i] = (float)run;
    }
}

extern "C" void cumsum_rows(float* __restrict out, const float* __restrict x, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(dynamic, ROWS_PER_TASK) if(PARALLEL)
    for (int64_t r = 0; r < rows; ++r) {
        if (cols >= 16 * SEGMENTS) scan_row<SEGMENTS>(out + r * cols, x + r * cols, cols);
        else scan_row<1>(out + r * cols, x + r * cols, cols);
    }
}
'''
_lib = fastpath.compile(SRC, defines={"SEGMENTS": SEGMENTS, "ROWS_PER_TASK": ROWS_PER_TASK, "PARALLEL": PARALLEL})


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        out = torch.empty_like(x)
        _lib.cumsum_rows(out, x, x.shape[0], x.shape[1])
        return out
