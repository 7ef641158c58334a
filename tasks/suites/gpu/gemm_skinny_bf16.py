import torch
import torch.nn as nn

KERNELWRIGHT = {
    "suite": "gpu",
    "description": "Decode-shaped GEMM in bfloat16: C = A @ B with a few rows of activations A (M x K) "
                   "and a large weight matrix B (K x N, row-major, 117 MB) that must be streamed from "
                   "HBM once; bound by memory bandwidth, not by tensor cores.",
    "devices": ["cuda"],
    "variants": [{"M": 1, "N": 1000, "K": 520}, {"M": 5, "N": 4099, "K": 300}, {"M": 33, "N": 256, "K": 4096}],
    "seeds": ["seeds/gemm_skinny_bf16_seed.py"],
    "flops": 1879048192,  # 2 M N K
    "bytes": 118030336,  # B read once (it dominates), A read, C written
}

# a Llama-3-8B MLP up-projection (4096 -> 14336) for a decode batch of 16 tokens
M = 16
N = 14336
K = 4096


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)


def get_inputs():
    a = torch.randn(M, K, dtype=torch.bfloat16)
    b = (torch.randn(K, N) * K ** -0.5).to(torch.bfloat16)  # unit-variance outputs at every K
    return [a, b]


def get_init_inputs():
    return []
