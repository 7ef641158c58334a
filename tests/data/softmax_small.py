"""A small softmax task for the test suite (fast to evaluate many times)."""
import torch
import torch.nn as nn

KERNELWRIGHT = {"suite": "test", "variants": [{"rows": 5, "cols": 333}]}

rows = 64
cols = 512


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return torch.softmax(x, dim=1)


def get_inputs():
    return [torch.randn(rows, cols)]


def get_init_inputs():
    return []
