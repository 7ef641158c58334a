"""PyTorch's matmul, the candidate's own C++ ReLU: KernelBench's partial replacement (ok under
the kernelbench policy, rejected under strict)."""
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
        y = torch.matmul(x, self.weight).contiguous()
        out = torch.empty_like(y)
        _lib.relu(out, y, y.numel())
        return out
