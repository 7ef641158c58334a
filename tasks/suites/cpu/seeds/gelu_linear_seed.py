"""GELU(x @ W^T + b) in one kernel: a register-tiled GEMM with bias and exact GELU applied
to the accumulators before they are stored (no second pass over the output).

W^T is packed once per call into k-major panels of 8*NV columns (zero-padded), so the inner
loop is MR broadcasts of x and NV vector loads feeding MR*NV fused multiply-adds, the
accumulators held in registers (MR*NV <= 12 of the 16 AVX registers). Tasks are blocks of MB
rows by PB panels, handed out dynamically. GELU is the erf form, x * Phi(x), with erfc from a
Chebyshev-fitted t * exp(-z^2 + P(t)) (fractional error below 1.2e-7) and a vectorized exp.
This competes with MKL's sgemm plus a separate GELU pass. On the 2-core AVX2 test box it came
out 1.1-1.5x faster at 128x512x512, but from saving the extra pass and the extra thread
wake-ups, not from a better GEMM: it reaches about half of the FMA peak, and at larger sizes
MKL should be expected to win.
"""
import torch
import torch.nn as nn

from sandbox import fastpath

MR = 6
NV = 2
MB = 128
PB = 1
KNOBS = {"MR": [4, 6, 8], "NV": [1, 2, 3], "MB": [32, 64, 128], "PB": [1, 2, 4]}
KNOB_CONSTRAINTS = ["MR * NV <= 12"]

SRC = r'''
#include <cstdint>
#include <cstring>
#include <vector>

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

#define NR (8 * NV)

static inline v8f load(const float* p) { v8f v; std::memcpy(&v, p, sizeof v); return v; }
static inline void store(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }
static inline v8f vmax(v8f a, v8f b) { return a > b ? a : b; }
static inline v8f vabs(v8f a) { return a < 0.0f ? -a : a; }

// exp(x): k = round(x / ln2), r = x - k ln2 (ln2 in two parts, the first exact in float),
// degree-7 Taylor polynomial on |r| <= ln2 / 2, times 2^k put into the exponent bits.
static inline v8f vexp(v8f x) {
    x = vmax(x, (v8f){} - 87.0f);
    x = x < 88.0f ? x : (v8f){} + 88.0f;
    v8f k = x * 1.44269504088896341f + 12582912.0f;  // adding 1.5 * 2^23 rounds to an integer
    k -= 12582912.0f;
    v8f r = x - k * 0.693145751953125f;
    r -= k * 1.428606765330187e-06f;
    v8f p = (v8f){} + 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    v8i bits = (__builtin_convertvector(k, v8i) + 127) << 23;
    return p * (v8f)bits;
}

// GELU(x) = x Phi(x) = x (1 + erf(x / sqrt 2)) / 2. With z = |x| / sqrt 2 and h = x erfc(z) / 2
// it is x - h for x >= 0 and h for x < 0; erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z / 2).
static inline v8f vgelu(v8f x) {
    v8f z = vabs(x) * 0.70710678118654752f;
    v8f t = 1.0f / (1.0f + 0.5f * z);
    v8f p = (v8f){} + 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    v8f h = 0.5f * x * (t * vexp(p - z * z));
    return x >= 0.0f ? x - h : h;
}

// out[R x ncols] = gelu(A[R x K] . panel + bias); the panel holds W^T for NR columns, k-major
template <int R>
static inline void micro(float* __restrict out, const float* __restrict A, const float* __restrict P,
                         const float* __restrict bias, int64_t K, int64_t N, int64_t ncols) {
    v8f acc[R][NV];
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = (v8f){};
    for (int64_t k = 0; k < K; ++k) {
        v8f b[NV];
        for (int v = 0; v < NV; ++v) b[v] = load(P + k * NR + 8 * v);
        for (int r = 0; r < R; ++r) {
            const float a = A[r * K + k];
            for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
        }
    }
    float bb[NR];
    for (int c = 0; c < NR; ++c) bb[c] = c < ncols ? bias[c] : 0.0f;
    for (int r = 0; r < R; ++r) {
        float t[NR];
        for (int v = 0; v < NV; ++v) store(t + 8 * v, vgelu(acc[r][v] + load(bb + 8 * v)));
        if (ncols == NR) std::memcpy(out + r * N, t, sizeof t);
        else for (int c = 0; c < ncols; ++c) out[r * N + c] = t[c];
    }
}

static std::vector<float> packed;  // scratch for the packed W^T, reused across calls

extern "C" void linear_gelu(float* __restrict out, const float* __restrict A, const float* __restrict W,
                            const float* __restrict bias, int64_t M, int64_t K, int64_t N) {
    const int64_t panels = (N + NR - 1) / NR;
    if ((int64_t)packed.size() < panels * NR * K) packed.resize(panels * NR * K);
    float* __restrict P = packed.data();
    const int64_t mb = (M + MB - 1) / MB, pb = (panels + PB - 1) / PB;
#pragma omp parallel
    {
#pragma omp for schedule(dynamic, 1)
        for (int64_t p = 0; p < panels; ++p) {
            float* dst = P + p * NR * K;
            for (int c = 0; c < NR; ++c) {
                const int64_t j = p * NR + c;
                if (j < N) for (int64_t k = 0; k < K; ++k) dst[k * NR + c] = W[j * K + k];
                else for (int64_t k = 0; k < K; ++k) dst[k * NR + c] = 0.0f;
            }
        }
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (int64_t bi = 0; bi < mb; ++bi)
            for (int64_t bp = 0; bp < pb; ++bp) {
                const int64_t i0 = bi * MB, i1 = i0 + MB < M ? i0 + MB : M;
                const int64_t p1 = (bp + 1) * PB < panels ? (bp + 1) * PB : panels;
                for (int64_t p = bp * PB; p < p1; ++p) {
                    const int64_t j = p * NR, nc = N - j < NR ? N - j : NR;
                    const float* panel = P + p * NR * K;
                    int64_t i = i0;
                    for (; i + MR <= i1; i += MR) micro<MR>(out + i * N + j, A + i * K, panel, bias + j, K, N, nc);
                    for (; i < i1; ++i) micro<1>(out + i * N + j, A + i * K, panel, bias + j, K, N, nc);
                }
            }
    }
}
'''
_lib = fastpath.compile(SRC, defines={"MR": MR, "NV": NV, "MB": MB, "PB": PB})


class ModelNew(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        # built exactly as the reference builds it, so both draw the same random weights
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        out = torch.empty((x.shape[0], self.linear.out_features), dtype=x.dtype, device=x.device)
        _lib.linear_gelu(out, x, self.linear.weight, self.linear.bias, x.shape[0], x.shape[1],
                         self.linear.out_features)
        return out
