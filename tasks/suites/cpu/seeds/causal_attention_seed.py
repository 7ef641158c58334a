"""Causal attention, one (batch*head, block of QB query rows) per task, dynamic, longest first.

Per task: K^T and V (head dim zero-padded) are copied into per-thread scratch for the keys
the block can see; scores Q K^T come from MR x (8*NV) register tiles (broadcast q, vector
load of K^T, FMA), skipping key tiles above the diagonal; each row gets a causal softmax with
a vectorized exp; then P V from MR x (8*NV) register tiles over the head dimension.
PyTorch runs a flash-attention CPU kernel on top of MKL GEMMs here. At this small size this
kernel came out about 1.2-1.5x faster on the 2-core test box, from avoiding per-block GEMM
call overheads rather than from better arithmetic; for long sequences or large head dims,
expect PyTorch to be faster.
"""
import torch
import torch.nn as nn

from sandbox import fastpath

QB = 64
MR = 2
NV = 2
KNOBS = {"QB": [16, 32, 64], "MR": [1, 2, 4], "NV": [1, 2, 3, 4]}
KNOB_CONSTRAINTS = ["MR * NV <= 12", "MR <= QB"]

SRC = r'''
#include <cstdint>
#include <cstring>
#include <cmath>
#include <vector>

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

#define NC (8 * NV)  // columns of a register tile

static inline v8f load(const float* p) { v8f v; std::memcpy(&v, p, sizeof v); return v; }
static inline void store(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }
static inline v8f vmax(v8f a, v8f b) { return a > b ? a : b; }

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

// C[R x NC] = A[R x L] . B[L x NC]: A row-major (lda), B rows of NC contiguous floats (ldb)
template <int R>
static inline void tile(float* __restrict C, int64_t ldc, const float* __restrict A, int64_t lda,
                        const float* __restrict B, int64_t ldb, int64_t L) {
    v8f acc[R][NV];
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = (v8f){};
    for (int64_t l = 0; l < L; ++l) {
        v8f b[NV];
        for (int v = 0; v < NV; ++v) b[v] = load(B + l * ldb + 8 * v);
        for (int r = 0; r < R; ++r) {
            const float a = A[r * lda + l];
            for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
        }
    }
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) store(C + r * ldc + 8 * v, acc[r][v]);
}

static void softmax_causal(float* __restrict s, int64_t nj, int64_t span) {
    float m = -__builtin_inff();
    for (int64_t j = 0; j < nj; ++j) m = s[j] > m ? s[j] : m;
    const int64_t n8 = nj / 8 * 8;
    v8f acc = (v8f){};
    for (int64_t j = 0; j < n8; j += 8) {
        v8f e = vexp(load(s + j) - m);
        store(s + j, e);
        acc += e;
    }
    float sum = 0.0f;
    for (int j = 0; j < 8; ++j) sum += acc[j];
    if (n8 < nj) {
        float t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t j = n8; j < nj; ++j) t[j - n8] = s[j] - m;
        v8f e = vexp(load(t));
        for (int64_t j = n8; j < nj; ++j) {
            s[j] = e[j - n8];
            sum += e[j - n8];
        }
    }
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < nj; ++j) s[j] *= inv;
    for (int64_t j = nj; j < span; ++j) s[j] = 0.0f;  // keys in the tile that this row must not see
}

extern "C" void causal_attention(float* __restrict out, const float* __restrict q, const float* __restrict k,
                                 const float* __restrict v, int64_t BH, int64_t S, int64_t D) {
    const int64_t Sp = (S + NC - 1) / NC * NC;  // keys, padded to whole tiles
    const int64_t Dp = (D + NC - 1) / NC * NC;  // head dim, padded to whole tiles
    const int64_t Rp = (QB + MR - 1) / MR * MR;  // query rows of a block, padded to whole tiles
    const int64_t nqb = (S + QB - 1) / QB;
    const float scale = (float)(1.0 / std::sqrt((double)D));
#pragma omp parallel
    {
        std::vector<float> kt_buf(D * Sp), v_buf(Sp * Dp), q_buf(Rp * D), s_buf(Rp * Sp), o_buf(Rp * Dp);
        float* __restrict Kt = kt_buf.data();
        float* __restrict Vp = v_buf.data();
        float* __restrict Qs = q_buf.data();
        float* __restrict Sc = s_buf.data();
        float* __restrict Ob = o_buf.data();
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < BH * nqb; ++task) {
            const int64_t bh = task % BH, qb = nqb - 1 - task / BH;  // the longest blocks first
            const float* Qh = q + bh * S * D;
            const float* Kh = k + bh * S * D;
            const float* Vh = v + bh * S * D;
            const int64_t i0 = qb * QB, i1 = i0 + QB < S ? i0 + QB : S, rows = i1 - i0;
            const int64_t rows_p = (rows + MR - 1) / MR * MR;
            const int64_t nk = (i1 + NC - 1) / NC * NC;
            for (int64_t d = 0; d < D; ++d)
                for (int64_t j = 0; j < nk; ++j) Kt[d * Sp + j] = j < i1 ? Kh[j * D + d] : 0.0f;
            for (int64_t j = 0; j < i1; ++j)
                for (int64_t d = 0; d < Dp; ++d) Vp[j * Dp + d] = d < D ? Vh[j * D + d] : 0.0f;
            for (int64_t r = 0; r < rows_p; ++r)
                for (int64_t d = 0; d < D; ++d) Qs[r * D + d] = r < rows ? Qh[(i0 + r) * D + d] * scale : 0.0f;
            for (int64_t r = 0; r < rows_p; r += MR) {
                const int64_t span = i0 + r + MR < i1 ? i0 + r + MR : i1;  // keys this row tile sees
                for (int64_t j = 0; j < span; j += NC) tile<MR>(Sc + r * Sp + j, Sp, Qs + r * D, D, Kt + j, Sp, D);
                for (int64_t rr = r; rr < r + MR && rr < rows; ++rr) softmax_causal(Sc + rr * Sp, i0 + rr + 1, span);
                for (int64_t d = 0; d < Dp; d += NC) tile<MR>(Ob + r * Dp + d, Dp, Sc + r * Sp, Sp, Vp + d, Dp, span);
            }
            for (int64_t r = 0; r < rows; ++r)
                std::memcpy(out + bh * S * D + (i0 + r) * D, Ob + r * Dp, D * sizeof(float));
        }
    }
}
'''
_lib = fastpath.compile(SRC, defines={"QB": QB, "MR": MR, "NV": NV})


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out = torch.empty_like(q)
        b, h, s, d = q.shape
        _lib.causal_attention(out, q, k, v, b * h, s, d)
        return out
