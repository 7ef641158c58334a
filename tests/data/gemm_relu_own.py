"""GEMM and ReLU both in the candidate's own C++: ok under every policy."""
import torch
import torch.nn as nn

from sandbox import fastpath

SRC = r"""
#include <cstdint>
extern "C" void relu(float* out, const float* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] > 0.f ? x[i] : 0.f;
}
extern "C" void gemm_relu(float* out, const float* x, const float* w, int64_t m, int64_t k, int64_t n) {
    for (int64_t i = 0; i < m; ++i) {
        float* o = out + i * n;
        for (int64_t j = 0; j < n; ++j) o[j] = 0.f;
        for (int64_t p = 0; p < k; ++p) {
            const float a = x[i * k + p];
            const float* wr = w + p * n;
            for (int64_t j = 0; j < n; ++j) o[j] += a * wr[j];
        }
        for (int64_t j = 0; j < n; ++j) o[j] = o[j] > 0.f ? o[j] : 0.f;
    }
}
"""
_lib = fastpath.compile(SRC)


class ModelNew(nn.Module):
    def __init__(self, k, n):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(k, n) / k ** 0.5)

    def forward(self, x):
        x = x.contiguous()
        out = torch.empty(x.shape[0], self.weight.shape[1])
        _lib.gemm_relu(out, x, self.weight.contiguous(), x.shape[0], x.shape[1], self.weight.shape[1])
        return out
