import torch
import torch.nn as nn

KERNELWRIGHT = {
    "suite": "gpu",
    "description": "C = A @ B in bfloat16 (A: M x K, B: K x N, both row-major), the square 4096^3 case "
                   "where cuBLAS runs near the tensor-core peak.",
    "devices": ["cuda"],
    "variants": [{"M": 1000, "N": 1000, "K": 520}, {"M": 77, "N": 130, "K": 33}, {"M": 1, "N": 300, "K": 4096}],
    "seeds": ["seeds/gemm_bf16_seed.py"],
    "flops": 137438953472,  # 2 M N K
    "bytes": 100663296,  # A and B read once, C written once
}

M = 4096
N = 4096
K = 4096


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)


def get_inputs():
    # B is scaled by 1/sqrt(K), so C has unit variance at every K and stays far inside the
    # bf16 range when the extra trials scale the inputs by 8 or by heavy-tailed factors.
    a = torch.randn(M, K, dtype=torch.bfloat16)
    b = (torch.randn(K, N) * K ** -0.5).to(torch.bfloat16)
    return [a, b]


def get_init_inputs():
    return []
