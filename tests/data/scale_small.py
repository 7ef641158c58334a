"""A second small task for loop tests: y = relu(x) * 2 (memory bound, trivial to get right)."""
import torch
import torch.nn as nn

KERNELWRIGHT = {"suite": "test", "variants": [{"n": 1001}]}

n = 1 << 16


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return torch.relu(x) * 2.0


def get_inputs():
    return [torch.randn(n)]


def get_init_inputs():
    return []
