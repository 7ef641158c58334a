"""A small GEMM + ReLU in KernelBench's form: the policy tests' partial-replacement task."""
import torch
import torch.nn as nn

M = 64
K = 256
N = 256


class Model(nn.Module):
    def __init__(self, k: int, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(k, n) / k ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.weight)


def get_inputs():
    return [torch.randn(M, K)]


def get_init_inputs():
    return [K, N]
