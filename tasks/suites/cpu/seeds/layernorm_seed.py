"""LayerNorm over the last dimension: OpenMP over rows, three passes over an L1-resident row.

Pass 1 sums the row with ACC independent vector accumulators, pass 2 sums squared deviations
from the mean (two-pass variance: no cancellation), pass 3 writes (x - mean) * rstd * w + b.
The reference is also near memory bound here, so expect parity rather than a large win.
"""
import torch
import torch.nn as nn

from sandbox import fastpath

ROWS_PER_TASK = 4
ACC = 4
KNOBS = {"ROWS_PER_TASK": [1, 2, 4, 8, 16], "ACC": [1, 2, 4, 8]}

SRC = r'''
#include <cstdint>
#include <cmath>

#define V 8  // floats per vector accumulator

static void layernorm_row(float* __restrict out, const float* __restrict x, const float* __restrict w,
                          const float* __restrict b, int64_t n, float eps) {
    const int64_t W = (int64_t)V * ACC;
    const int64_t nb = n / W * W;
    float acc[W];
    for (int64_t j = 0; j < W; ++j) acc[j] = 0.0f;
    for (int64_t i = 0; i < nb; i += W) {
#pragma omp simd
        for (int64_t j = 0; j < W; ++j) acc[j] += x[i + j];
    }
    double s = 0.0;
    for (int64_t j = 0; j < W; ++j) s += acc[j];
    for (int64_t i = nb; i < n; ++i) s += x[i];
    const float mean = (float)(s / (double)n);

    for (int64_t j = 0; j < W; ++j) acc[j] = 0.0f;
    for (int64_t i = 0; i < nb; i += W) {
#pragma omp simd
        for (int64_t j = 0; j < W; ++j) {
            float d = x[i + j] - mean;
            acc[j] += d * d;
        }
    }
    double ss = 0.0;
    for (int64_t j = 0; j < W; ++j) ss += acc[j];
    for (int64_t i = nb; i < n; ++i) {
        float d = x[i] - mean;
        ss += (double)d * d;
    }
    const float rstd = (float)(1.0 / std::sqrt(ss / (double)n + (double)eps));
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] = (x[i] - mean) * rstd * w[i] + b[i];
}

extern "C" void layernorm_rows(float* __restrict out, const float* __restrict x, const float* __restrict w,
                               const float* __restrict b, int64_t rows, int64_t cols, float eps) {
#pragma omp parallel for schedule(static, ROWS_PER_TASK)
    for (int64_t r = 0; r < rows; ++r) layernorm_row(out + r * cols, x + r * cols, w, b, cols, eps);
}
'''
_lib = fastpath.compile(SRC, defines={"ROWS_PER_TASK": ROWS_PER_TASK, "ACC": ACC})


class ModelNew(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        # built exactly as the reference builds it, so both draw the same random weights
        self.norm = nn.LayerNorm(dim, eps=eps)
        nn.init.normal_(self.norm.weight, mean=1.0, std=0.5)
        nn.init.normal_(self.norm.bias, mean=0.0, std=0.5)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        out = torch.empty_like(x)
        _lib.layernorm_rows(out, x, self.norm.weight, self.norm.bias, x.shape[0], x.shape[1], self.eps)
        return out
