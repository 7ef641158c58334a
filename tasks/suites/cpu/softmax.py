import torch
import torch.nn as nn

KERNELWRIGHT = {
    "suite": "cpu",
    "description": "Row-wise softmax of a (batch, dim) float32 matrix.",
    "variants": [{"batch_size": 7, "dim": 1000}, {"batch_size": 33, "dim": 77}],
    "seeds": ["seeds/softmax_seed.py"],
}

batch_size = 256
dim = 4096


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=1)


def get_inputs():
    return [torch.randn(batch_size, dim)]


def get_init_inputs():
    return []
