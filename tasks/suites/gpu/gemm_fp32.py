import torch
import torch.nn as nn

KERNELWRIGHT = {
    "suite": "gpu",
    "description": "C = A @ B in true float32 (TF32 is off on both sides: a tensor-core TF32 kernel "
                   "fails the tolerance), A: M x K, B: K x N, both row-major.",
    "devices": ["cuda"],
    "variants": [{"M": 1000, "N": 1000, "K": 520}, {"M": 77, "N": 130, "K": 33}, {"M": 1, "N": 300, "K": 2048}],
    "seeds": ["seeds/gemm_fp32_seed.py"],
    "flops": 17179869184,  # 2 M N K
    "bytes": 50331648,  # A and B read once, C written once
    # atol 1e-3 instead of 1e-4 (rtol stays 1e-4). The heavy-tailed trial makes outputs of
    # std ~90 whose terms cancel to near zero in places, where two correct fp32 summation orders
    # differ by up to ~2e-4 (simulated on CPU at this shape: a few of the 4M outputs miss
    # 1e-4 + 1e-4*|ref| on every seed). With 1e-3 correct fp32 sums keep a 4x margin on every
    # trial, while TF32 inputs (10-bit mantissas) still fail: ~14% of the default trial's
    # outputs and ~95% of the scaled and heavy trials' are out of tolerance.
    "atol": 1e-3,
}

M = 2048
N = 2048
K = 2048


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)


def get_inputs():
    # B scaled by 1/sqrt(K): C has unit variance, so the absolute tolerance means the same at every K
    a = torch.randn(M, K)
    b = torch.randn(K, N) * K ** -0.5
    return [a, b]


def get_init_inputs():
    return []
