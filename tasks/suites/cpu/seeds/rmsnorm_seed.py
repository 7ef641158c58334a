"""RMSNorm over the last dimension: OpenMP over rows, two passes over an L1-resident row.

Pass 1 sums squares with ACC independent vector accumulators (the reference needs separate
pow, mean, add, rsqrt and two multiplies, each a full pass with a temporary); pass 2 writes
x * rstd * w.
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

static void rmsnorm_row(float* __restrict out, const float* __restrict x, const float* __restrict w,
                        int64_t n, float eps) {
    const int64_t W = (int64_t)V * ACC;
    const int64_t nb = n / W * W;
    float acc[W];
    for (int64_t j = 0; j < W; ++j) acc[j] = 0.0f;
    for (int64_t i = 0; i < nb; i += W) {
#pragma omp simd
        for (int64_t j = 0; j < W; ++j) acc[j] += x[i + j] * x[i + j];
    }
    double ss = 0.0;
    for (int64_t j = 0; j < W; ++j) ss += acc[j];
    for (int64_t i = nb; i < n; ++i) ss += (double)x[i] * x[i];
    const float rstd = (float)(1.0 / std::sqrt(ss / (double)n + (double)eps));
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] * rstd * w[i];
}

extern "C" void rmsnorm_rows(float* __restrict out, const float* __restrict x, const float* __restrict w,
                             int64_t rows, int64_t cols, float eps) {
#pragma omp parallel for schedule(static, ROWS_PER_TASK)
    for (int64_t r = 0; r < rows; ++r) rmsnorm_row(out + r * cols, x + r * cols, w, cols, eps);
}
'''
_lib = fastpath.compile(SRC, defines={"ROWS_PER_TASK": ROWS_PER_TASK, "ACC": ACC})


class ModelNew(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        # built exactly as the reference builds it, so both draw the same random weight
        self.weight = nn.Parameter(torch.empty(dim))
        nn.init.normal_(self.weight, mean=1.0, std=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        out = torch.empty_like(x)
        _lib.rmsnorm_rows(out, x, self.weight, x.shape[0], x.shape[1], self.eps)
        return out
