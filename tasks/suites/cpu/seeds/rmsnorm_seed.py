"""RMSNorm over the last dimension: OpenMP over rows, two passes over an L1-resident row.

Pass 1 sums squares with ACC independent 8-wide accumulators; pass 2 writes x * rstd * w, with
streaming (non-temporal) stores when the output is at least STREAM_MIN_MIB: out of cache, a
regular store first reads the line it writes, a third of the traffic of a read-once write-once
kernel; in cache, streaming would push the output out to memory.
The eager reference runs pow, mean, add, rsqrt and two multiplies, each a full pass that
allocates a temporary, which is where the fused kernel wins.
"""
import torch
import torch.nn as nn

from sandbox import fastpath

ROWS_PER_TASK = 8
ACC = 2
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
// next: a row to prefetch meanwhile, a line every 16 floats (nullptr: none)
template <class V, class S>
static inline void emit(float* __restrict out, int64_t n, bool stream, V vec, S one, const float* next) {
    const bool pre = PREFETCH && next;
    int64_t i = 0;
#if defined(__AVX__)
    if (stream) {
        for (; i < n && ((uintptr_t)(out + i) & 31); ++i) out[i] = one(i);
        for (; i + 8 <= n; i += 8) {
            if (pre && !(i & 15)) __builtin_prefetch(next + i, 0, 3);
            _mm256_stream_ps(out + i, (__m256)vec(i));
        }
    }
#endif
    for (; i + 8 <= n; i += 8) {
        if (pre && !(i & 15)) __builtin_prefetch(next + i, 0, 3);
        store(out + i, vec(i));
    }
    for (; i < n; ++i) out[i] = one(i);
}

static void rmsnorm_row(float* __restrict out, const float* __restrict x, const float* __restrict w,
                        int64_t n, float eps, bool stream, const float* next) {
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
    emit(out, n, stream, [=](int64_t i) { return load(x + i) * rstd * load(w + i); },
         [=](int64_t i) { return x[i] * rstd * w[i]; }, next);
}

extern "C" void rmsnorm_rows(float* __restrict out, const float* __restrict x, const float* __restrict w,
                             int64_t rows, int64_t cols, float eps) {
    const bool stream = STREAM_MIN_MIB > 0 && rows * cols * 4 >= ((int64_t)STREAM_MIN_MIB << 20);
#pragma omp parallel if(PARALLEL)
    {
#pragma omp for schedule(dynamic, ROWS_PER_TASK) nowait
        for (int64_t r = 0; r < rows; ++r) rmsnorm_row(out + r * cols, x + r * cols, w, cols, eps, stream,
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
        self.eps = eps
        # built exactly as the reference builds it, so both draw the same random weight
        self.weight = nn.Parameter(torch.empty(dim))
        nn.init.normal_(self.weight, mean=1.0, std=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        out = torch.empty_like(x)
        _lib.rmsnorm_rows(out, x, self.weight, x.shape[0], x.shape[1], self.eps)
        return out
