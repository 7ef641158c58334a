import torch
import torch.nn as nn

KERNELWRIGHT = {
    "suite": "cpu",
    "description": "RMSNorm over the last dimension of a (batch, dim) float32 matrix: "
                   "x / sqrt(mean(x^2) + eps) * weight, with a randomly initialised weight.",
    "variants": [{"batch_size": 7, "dim": 1000}, {"batch_size": 33, "dim": 77}],
    "seeds": ["seeds/rmsnorm_seed.py"],
}

batch_size = 256
dim = 4096
eps = 1e-6


class Model(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))
        nn.init.normal_(self.weight, mean=1.0, std=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return x * rms * self.weight


def get_inputs():
    return [torch.randn(batch_size, dim)]


def get_init_inputs():
    return [dim, eps]
