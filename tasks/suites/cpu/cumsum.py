import torch
import torch.nn as nn

KERNELWRIGHT = {
    "suite": "cpu",
    "description": "Inclusive prefix sum along dim 1 of a (batch, dim) float32 matrix.",
    "variants": [{"batch_size": 37, "dim": 777}, {"batch_size": 3, "dim": 5}],
    "seeds": ["seeds/cumsum_seed.py"],
    # PyTorch's CPU cumsum accumulates in double, so the reference is exact up to the final
    # rounding. A kernel that accumulates in float32 along a 1024-long row drifts by rounding:
    # measured up to 3.3e-4 absolute under the evaluator's x8 scaled trial (partial sums reach
    # a few hundred). atol 1e-3 admits such a kernel; dropping or misplacing any input of
    # typical size (~1) is still caught by orders of magnitude. rtol stays at 1e-4.
    "atol": 1e-3,
}

batch_size = 512
dim = 1024


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(x, dim=1)


def get_inputs():
    return [torch.randn(batch_size, dim)]


def get_init_inputs():
    return []
