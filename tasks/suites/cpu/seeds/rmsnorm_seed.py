"""RMSNorm over the last dimension: OpenMP over rows, two passes over an L1-resident row.

Pass 1 sums squares with ACC independent 8-wide accumulators; pass 2 writes x * rstd * w.
The eager reference runs pow, mean, add, rsqrt and two multiplies, each a full pass that
allocates a temporary, which is where the fused kernel wins.
"""
import torch
import torch.nn as nn

from sandbox import fastpath

ROWS_PER_TASK = 8
ACC = 2
PARALLEL = 1  # 0: run on the calling thread alone (no team, no barrier)
KNOBS = {"ROWS_PER_TASK": [1, 2, 4, 8, 16], "ACC": [1, 2, 4], "PARALLEL": [0, 1]}
KNOB_CONSTRAINTS = ["PARALLEL == 1 or ROWS_PER_TASK == 1"]  # the split only matters with a team

SRC = r'''
#include <cstdint>
#include <cstring>
#include <cmath>

typedef float v8f __attribute__((vector_size(32)));

static inline v8f load(const float* p) { v8f v; std::memcpy(&v, p, sizeof v); return v; }
static inline void store(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }

static void rmsnorm_row(float* __restrict out, const float* __restrict x, const float* __restrict w,
                        int64_t n, float eps) {
    const int64_t W = 8 * ACC, nb = n / W * W, n8 = n / 8 * 8;
    v8f acc[ACC];
    for (int a = 0; a < ACC; ++a) acc[a] = (v8f){};
    for (int64_t i = 0; i < nb; i += W)
        for (int a = 0; a < ACC; ++a) {
            v8f v = load(x + i + 8 * a);
            acc[a] += v * v;
        }
    for (int64_t i = nb; i < n8; i += 8) {
        v8f v = load(x + i);
        acc[0] += v * v;
    }
    for (int a = 1; a < ACC; ++a) acc[0] += acc[a];
    double ss = 0.0;
    for (int j = 0; j < 8; ++j) ss += acc[0][j];
    for (int64_t i = n8; i < n; ++i) ss += (double)x[i] * x[i];
    const float rstd = (float)(1.0 / std::sqrt(ss / (double)n + (double)eps));
    for (int64_t i = 0; i < n8; i += 8) store(out + i, load(x + i) * rstd * load(w + i));
    for (int64_t i = n8; i < n; ++i) out[i] = x[i] * rstd * w[i];
}

extern "C" void rmsnorm_rows(float* __restrict out, const float* __restrict x, const float* __restrict w,
                             int64_t rows, int64_t cols, float eps) {
#pragma omp parallel for schedule(dynamic, ROWS_PER_TASK) if(PARALLEL)
    for (int64_t r = 0; r < rows; ++r) rmsnorm_row(out + r * cols, x + r * cols, w, cols, eps);
}
'''
_lib = fastpath.compile(SRC, defines={"ROWS_PER_TASK": ROWS_PER_TASK, "ACC": ACC, "PARALLEL": PARALLEL})


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
