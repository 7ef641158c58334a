import torch
import torch.nn as nn
import torch.nn.functional as F

KERNELWRIGHT = {
    "suite": "cpu",
    "description": "GELU(x @ W^T + b): an nn.Linear followed by the exact (erf) GELU, float32.",
    "variants": [{"batch_size": 37, "in_features": 300, "out_features": 257},
                 {"batch_size": 5, "in_features": 33, "out_features": 19}],
    "seeds": ["seeds/gelu_linear_seed.py"],
}

batch_size = 128
in_features = 512
out_features = 512


class Model(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.linear(x))


def get_inputs():
    return [torch.randn(batch_size, in_features)]


def get_init_inputs():
    return [in_features, out_features]
