"""LayerNorm over the last dimension: OpenMP over rows, three passes over an L1-resident row.

Pass 1 sums the row with ACC independent 8-wide accumulators, pass 2 sums squared deviations
from the mean (two-pass variance: no cancellation), pass 3 writes (x - mean) * rstd * w + b, with
streaming stores when the output is at least STREAM_MIN_MIB (out of cache, a regular store
reads the line it writes first).
PyTorch's own LayerNorm is a fused, vectorized kernel that is close to memory bound here, so
expect only a modest win (about 1.1-1.2x by minimum times on the 2-core test box).
"""
import torch
import torch.nn as nn

from sandbox import fastpath

ROWS_PER_TASK = 8
ACC = 4
PARALLEL = 1  # 0: run on the calling thread alone (no team, no barrier)
STREAM_MIN_MIB = 16  # outputs this large are written with streaming stores (out of cache); 0: never
PREFETCH = 1  # 1: fetch the next row while this one computes from L1 (memory and compute overlap)
KNOBS = {"ROWS_PER_TASK": [1, 2, 4, 8, 16], "ACC": [1, 2, 4], "PARALLEL": [0, 1],
         "STREAM_MIN_MIB": [4, 16, 0], "PREFETCH": [0, 1]}
KNOB_CONSTRAINTS = ["PARALLEL == 1 or ROWS_PER_TASK == 1"]  # the split only matters with a team

SRC = r'''
#include <cstdint>
#include <cstring>
#include <cmath>
#if defined(__AVX__)
#include <immintrin.h>
#endif

typedef float v8f __attribute__((vector_size(32)));

static inline v8f load(const float* p) { v8f v; std::memcpy(&v, p, sizeof v); return v; }
static inline void store(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }

// out[0, n) from vec(i) (8 floats at i) and one(i); streaming stores skip the cache and the read
// a regular store of a line not in cache costs first (write-allocate)
template <class V, class S>
static inline void emit(float* __restrict out, int64_t n, bool stream, V vec, S one) {
    int64_t i = 0;
#if defined(__AVX__)
    if (stream) {
        for (; i < n && ((uintptr_t)(out + i) & 31); ++i) out[i] = one(i);
        for (; i + 8 <= n; i += 8) _mm256_stream_ps(out + i, (__m256)vec(i));
    }
#endif
    for (; i + 8 <= n; i += 8) store(out + i, vec(i));
    for (; i < n; ++i) out[i] = one(i);
}
static inline double hsum(v8f v) { double s = 0.0; for (int j = 0; j < 8; ++j) s += v[j]; return s; }

static void layernorm_row(float* __restrict out, const float* __restrict x, const float* __restrict w,
                          const float* __restrict b, int64_t n, float eps, bool stream, const float* next) {
    const int64_t W = 8 * ACC, nb = n / W * W, n8 = n / 8 * 8;
    v8f acc[ACC];
    for (int a = 0; a < ACC; ++a) acc[a] = (v8f){};
    for (int64_t i = 0; i < nb; i += W)
        for (int a = 0; a < ACC; ++a) acc[a] += load(x + i + 8 * a);
    for (int64_t i = nb; i < n8; i += 8) acc[0] += load(x + i);
    for (int a = 1; a < ACC; ++a) acc[0] += acc[a];
    double s = hsum(acc[0]);
    for (int64_t i = n8; i < n; ++i) s += x[i];
    const float mean = (float)(s / (double)n);

    for (int a = 0; a < ACC; ++a) acc[a] = (v8f){};
    for (int64_t i = 0; i < nb; i += W) {  // and the next row (nullptr at the end) on its way
        if (PREFETCH && next) for (int64_t j = i; j < i + W; j += 16) __builtin_prefetch(next + j, 0, 3);
        for (int a = 0; a < ACC; ++a) {
            v8f d = load(x + i + 8 * a) - mean;
            acc[a] += d * d;
        }
    }
    for (int64_t i = nb; i < n8; i += 8) {
        v8f d = load(x + i) - mean;
        acc[0] += d * d;
    }
    for (int a = 1; a < ACC; ++a) acc[0] += acc[a];
    double ss = hsum(acc[0]);
    for (int64_t i = n8; i < n; ++i) ss += (double)(x[i] - mean) * (x[i] - mean);
    const float rstd = (float)(1.0 / std::sqrt(ss / (double)n + (double)eps));

    emit(out, n, stream, [=](int64_t i) { return (load(x + i) - mean) * rstd * load(w + i) + load(b + i); },
         [=](int64_t i) { return (x[i] - mean) * rstd * w[i] + b[i]; });
}

extern "C" void layernorm_rows(float* __restrict out, const float* __restrict x, const float* __restrict w,
                               const float* __restrict b, int64_t rows, int64_t cols, float eps) {
    const bool stream = STREAM_MIN_MIB > 0 && rows * cols * 4 >= ((int64_t)STREAM_MIN_MIB << 20);
#pragma omp parallel if(PARALLEL)
    {
#pragma omp for schedule(dynamic, ROWS_PER_TASK) nowait
        for (int64_t r = 0; r < rows; ++r) layernorm_row(out + r * cols, x + r * cols, w, b, cols, eps, stream,
                                                        r + 1 < rows ? x + (r + 1) * cols : nullptr);
#if defined(__AVX__)
        _mm_sfence();  // streamed stores are weakly ordered: done before the call returns
#endif
    }
}
'''
_lib = fastpath.compile(SRC, defines={"ROWS_PER_TASK": ROWS_PER_TASK, "ACC": ACC, "PARALLEL": PARALLEL,
                                        "STREAM_MIN_MIB": STREAM_MIN_MIB, "PREFETCH": PREFETCH})


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
