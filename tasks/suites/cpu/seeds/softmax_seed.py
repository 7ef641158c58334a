"""Row-wise softmax: OpenMP over rows, three passes over an L1-resident row.

Pass 1 takes the row maximum with ACC independent 8-wide accumulators, pass 2 writes
exp(x - max) and sums it, pass 3 scales by 1/sum. Out of cache (an output of STREAM_MIN_MIB MiB or
more) pass 2 keeps the exponentials in a stack row and pass 3 writes the output once, with
streaming stores: a regular store of a line not in cache reads it first. std::exp is not vectorized by g++ here, so
exp is a range-reduced degree-6 polynomial on GCC vector types (relative error about 1.2e-7).
Rows are handed out dynamically: under OMP_WAIT_POLICY=PASSIVE the second thread wakes tens
of microseconds late, and a static split would make the first one wait for it.
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
#if defined(__AVX__)
#include <immintrin.h>
#endif

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

static inline v8f load(const float* p) { v8f v; std::memcpy(&v, p, sizeof v); return v; }
static inline void store(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }
static inline v8f vmax(v8f a, v8f b) { return a > b ? a : b; }

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

// exp(x) for x <= 0 (softmax passes x - max): k = round(x / ln2), r = x - k ln2 (ln2 in two parts,
// the first exact in float), degree-6 Taylor polynomial on |r| <= ln2 / 2 (relative error 1.2e-7),
// times 2^k put into the exponent bits. Pass 2 is bound by these vector operations, not by memory:
// no upper clamp (nothing above 0 comes in), and the lower one is one max instruction.
static inline v8f vexp(v8f x) {
#if defined(__AVX__)
    x = (v8f)_mm256_max_ps((__m256)x, _mm256_set1_ps(-87.0f));  // exp(-87) ~ 1.6e-38: still normal
#else
    x = vmax(x, (v8f){} - 87.0f);
#endif
    v8f k = x * 1.44269504088896341f + 12582912.0f;  // adding 1.5 * 2^23 rounds to an integer
    k -= 12582912.0f;
    v8f r = x - k * 0.693145751953125f;
    r -= k * 1.428606765330187e-06f;
    v8f p = (v8f){} + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    v8i bits = (__builtin_convertvector(k, v8i) + 127) << 23;
    return p * (v8f)bits;
}

#define SCRATCH 16384  // floats: a row this long keeps its exponentials on the stack when streaming

// e: where pass 2 keeps exp(x - max) (out itself, or a scratch row when out is streamed to)
// next: the row after this one (nullptr at the end), prefetched while pass 2 computes
static void softmax_row(float* __restrict out, const float* __restrict x, int64_t n, float* e, bool stream,
                        const float* next) {
    const int64_t W = 8 * ACC, nb = n / W * W, n8 = n / 8 * 8;
    v8f mx[ACC];
    for (int a = 0; a < ACC; ++a) mx[a] = (v8f){} - __builtin_inff();
    for (int64_t i = 0; i < nb; i += W)
        for (int a = 0; a < ACC; ++a) mx[a] = vmax(mx[a], load(x + i + 8 * a));
    for (int64_t i = nb; i < n8; i += 8) mx[0] = vmax(mx[0], load(x + i));
    for (int a = 1; a < ACC; ++a) mx[0] = vmax(mx[0], mx[a]);
    float m = -__builtin_inff();
    for (int j = 0; j < 8; ++j) m = mx[0][j] > m ? mx[0][j] : m;
    for (int64_t i = n8; i < n; ++i) m = x[i] > m ? x[i] : m;

    v8f acc[ACC];
    for (int a = 0; a < ACC; ++a) acc[a] = (v8f){};
    for (int64_t i = 0; i < nb; i += W) {
        if (PREFETCH && next) for (int64_t j = i; j < i + W; j += 16) __builtin_prefetch(next + j, 0, 3);
        for (int a = 0; a < ACC; ++a) {
            v8f v = vexp(load(x + i + 8 * a) - m);
            store(e + i + 8 * a, v);
            acc[a] += v;
        }
    }
    for (int64_t i = nb; i < n8; i += 8) {
        v8f v = vexp(load(x + i) - m);
        store(e + i, v);
        acc[0] += v;
    }
    for (int a = 1; a < ACC; ++a) acc[0] += acc[a];
    float s = 0.0f;
    for (int j = 0; j < 8; ++j) s += acc[0][j];
    if (n8 < n) {  // the last n % 8 columns, through a padded vector
        float t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t i = n8; i < n; ++i) t[i - n8] = x[i] - m;
        v8f v = vexp(load(t));
        for (int64_t i = n8; i < n; ++i) {
            e[i] = v[i - n8];
            s += v[i - n8];
        }
    }
    const float inv = 1.0f / s;
    emit(out, n, stream, [=](int64_t i) { return load(e + i) * inv; }, [=](int64_t i) { return e[i] * inv; });
}

extern "C" void softmax_rows(float* __restrict out, const float* __restrict x, int64_t rows, int64_t cols) {
    const bool stream = STREAM_MIN_MIB > 0 && rows * cols * 4 >= ((int64_t)STREAM_MIN_MIB << 20);
#pragma omp parallel if(PARALLEL)
    {
        alignas(32) float scratch[SCRATCH];
        const bool own = stream && cols <= SCRATCH;  // else in place: correct, without the saving
#pragma omp for schedule(dynamic, ROWS_PER_TASK) nowait
        for (int64_t r = 0; r < rows; ++r)
            softmax_row(out + r * cols, x + r * cols, cols, own ? scratch : out + r * cols, stream,
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
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        out = torch.empty_like(x)
        _lib.softmax_rows(out, x, x.shape[0], x.shape[1])
        return out
