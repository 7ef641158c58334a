import torch
import torch.nn as nn

KERNELWRIGHT = {
    "suite": "cpu",
    "description": "LayerNorm over the last dimension of a (batch, dim) float32 matrix, with an "
                   "elementwise affine weight and bias (randomly initialised, so they matter).",
    "variants": [{"batch_size": 7, "dim": 1000}, {"batch_size": 33, "dim": 77}],
    "seeds": ["seeds/layernorm_seed.py"],
}

batch_size = 256
dim = 4096
eps = 1e-5


class Model(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        nn.init.normal_(self.norm.weight, mean=1.0, std=0.5)
        nn.init.normal_(self.norm.bias, mean=0.0, std=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


def get_inputs():
    return [torch.randn(batch_size, dim)]


def get_init_inputs():
    return [dim, eps]
