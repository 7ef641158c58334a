"""AdamW step for optimizer-state offload: one fused OpenMP pass over host memory.

Eager PyTorch makes about ten passes over the 8M-element tensors, each allocating a temporary;
this kernel reads param, grad, exp_avg and exp_avg_sq once and writes the three results once,
which is what a host-memory-bound step can do at best. OpenMP threads take CHUNK-element pieces
dynamically; the inner loop is straight-line float arithmetic that g++ vectorizes (sqrt
included: -fno-math-errno changes no value, it only lets sqrtf become a vector instruction).
The scalar factors are computed once in double and rounded to float, as PyTorch rounds Python
scalars for float tensors, and the element math follows the reference's order of operations
without FMA contraction (-ffp-contract=off): the moments match the eager ones bit for bit, the
parameters to within an ulp.
"""
import torch
import torch.nn as nn

from sandbox import fastpath

CHUNK = 16384
KNOBS = {"CHUNK": [4096, 16384, 65536, 262144]}

SRC = r'''
#include <cstdint>
#include <cmath>

extern "C" void adamw_step(float* __restrict new_p, float* __restrict new_m, float* __restrict new_v,
                           const float* __restrict p, const float* __restrict g, const float* __restrict m,
                           const float* __restrict v, int64_t n, double lr, double beta1, double beta2,
                           double eps, double weight_decay, int64_t step) {
    const float b1 = (float)beta1, one_minus_b1 = (float)(1.0 - beta1);
    const float b2 = (float)beta2, one_minus_b2 = (float)(1.0 - beta2);
    const float bc1 = (float)(1.0 - std::pow(beta1, (double)step));
    const float bc2 = (float)(1.0 - std::pow(beta2, (double)step));
    const float decay = (float)(1.0 - lr * weight_decay);
    const float lr_f = (float)lr, eps_f = (float)eps;
    const int64_t chunks = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks; ++c) {
        const int64_t lo = c * CHUNK;
        const int64_t hi = lo + CHUNK < n ? lo + CHUNK : n;
#pragma omp simd
        for (int64_t i = lo; i < hi; ++i) {
            const float gi = g[i];
            const float mi = m[i] * b1 + gi * one_minus_b1;
            const float vi = v[i] * b2 + gi * gi * one_minus_b2;
            const float m_hat = mi / bc1;
            const float v_hat = vi / bc2;
            new_m[i] = mi;
            new_v[i] = vi;
            new_p[i] = p[i] * decay - lr_f * m_hat / (std::sqrt(v_hat) + eps_f);
        }
    }
}
'''

_lib = None


def _library():
    global _lib
    if _lib is None:
        _lib = fastpath.compile(SRC, lang="cpp", defines={"CHUNK": CHUNK},
                                flags=["-fno-math-errno", "-ffp-contract=off"])
    return _lib


class ModelNew(nn.Module):
    def __init__(self, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, step: int):
        super().__init__()
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.weight_decay, self.step = weight_decay, step

    def forward(self, param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
                exp_avg_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        param, grad = param.contiguous(), grad.contiguous()
        exp_avg, exp_avg_sq = exp_avg.contiguous(), exp_avg_sq.contiguous()
        new_p, new_m, new_v = torch.empty_like(param), torch.empty_like(param), torch.empty_like(param)
        _library().adamw_step(new_p, new_m, new_v, param, grad, exp_avg, exp_avg_sq, param.numel(),
                              float(self.lr), float(self.beta1), float(self.beta2), float(self.eps),
                              float(self.weight_decay), int(self.step))
        return new_p, new_m, new_v
