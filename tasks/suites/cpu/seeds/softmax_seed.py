"""Row-wise softmax: OpenMP over rows, three passes over an L1-resident row.

Pass 1 takes the row maximum with ACC independent vector accumulators, pass 2 writes
exp(x - max) and sums it, pass 3 scales by 1/sum. std::exp is not vectorized by g++ here, so
exp is a range-reduced degree-7 polynomial (relative error below 1e-7 over the float range).
-fno-trapping-math and -fno-math-errno let g++ if-convert the clamp and vectorize; neither
changes any computed value (unlike -ffast-math, which is not used).
"""
import torch
import torch.nn as nn

from sandbox import fastpath

ROWS_PER_TASK = 4
ACC = 4
KNOBS = {"ROWS_PER_TASK": [1, 2, 4, 8, 16], "ACC": [1, 2, 4, 8]}

SRC = r'''
#include <cstdint>
#include <cstring>

#define V 8  // floats per vector accumulator; ACC of them run side by side

static inline float fast_exp(float x) {
    x = x > -87.0f ? x : -87.0f;   // exp(-87) ~ 1.6e-38: below any tolerance, still normal
    x = x < 88.0f ? x : 88.0f;
    float k = x * 1.44269504088896341f + 12582912.0f;  // round(x / ln2) by the 1.5 * 2^23 trick
    k -= 12582912.0f;
    float r = x - k * 0.693145751953125f;              // ln2 split in two: the high part is exact
    r -= k * 1.428606765330187e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static void softmax_row(float* __restrict out, const float* __restrict x, int64_t n) {
    const int64_t W = (int64_t)V * ACC;
    const int64_t nb = n / W * W;
    float mx[W];
    for (int64_t j = 0; j < W; ++j) mx[j] = -__builtin_inff();
    for (int64_t i = 0; i < nb; i += W) {
#pragma omp simd
        for (int64_t j = 0; j < W; ++j) mx[j] = x[i + j] > mx[j] ? x[i + j] : mx[j];
    }
    float m = -__builtin_inff();
    for (int64_t j = 0; j < W; ++j) m = mx[j] > m ? mx[j] : m;
    for (int64_t i = nb; i < n; ++i) m = x[i] > m ? x[i] : m;

    float acc[W];
    for (int64_t j = 0; j < W; ++j) acc[j] = 0.0f;
    for (int64_t i = 0; i < nb; i += W) {
#pragma omp simd
        for (int64_t j = 0; j < W; ++j) {
            float e = fast_exp(x[i + j] - m);
            out[i + j] = e;
            acc[j] += e;
        }
    }
    float s = 0.0f;
    for (int64_t j = 0; j < W; ++j) s += acc[j];
    for (int64_t i = nb; i < n; ++i) {
        float e = fast_exp(x[i] - m);
        out[i] = e;
        s += e;
    }
    const float inv = 1.0f / s;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] *= inv;
}

extern "C" void softmax_rows(float* __restrict out, const float* __restrict x, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static, ROWS_PER_TASK)
    for (int64_t r = 0; r < rows; ++r) softmax_row(out + r * cols, x + r * cols, cols);
}
'''
_lib = fastpath.compile(SRC, defines={"ROWS_PER_TASK": ROWS_PER_TASK, "ACC": ACC},
                        flags=["-fno-trapping-math", "-fno-math-errno"])


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        out = torch.empty_like(x)
        _lib.softmax_rows(out, x, x.shape[0], x.shape[1])
        return out
