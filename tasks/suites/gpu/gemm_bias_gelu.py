import torch
import torch.nn as nn
import torch.nn.functional as F

KERNELWRIGHT = {
    "suite": "gpu",
    "description": "Y = GELU(X @ W + b) in bfloat16 with the exact (erf) GELU, X: M x K, W: K x N, b: N. "
                   "Eager PyTorch runs three kernels and moves the M x N intermediate through HBM "
                   "five times; a fused epilogue writes it once.",
    "devices": ["cuda"],
    "variants": [{"M": 1000, "N": 1000, "K": 520}, {"M": 77, "N": 130, "K": 33}, {"M": 3, "N": 4096, "K": 1024}],
    "seeds": ["seeds/gemm_bias_gelu_seed.py"],
    "flops": 68719476736,  # 2 M N K (the epilogue is noise)
    "bytes": 92282880,  # X, W, b read once, Y written once
    # The reference rounds X @ W to bf16 before adding b. Where b cancels the product, that
    # rounding (up to half a bf16 ulp of |X @ W|) is the whole output, and another summation
    # order flips it. With the extra trials' inputs (x8: bias ~8 against products ~64, or
    # heavy-tailed) tens of the 33M outputs then miss 1e-2 + 1e-2*|ref| even for a kernel that
    # reproduces every rounding step of the reference (simulated on CPU); with unit-scale inputs
    # none do. The default and variant trials keep the bf16 tolerance instead.
    "input_transforms": False,
}

M = 8192
N = 4096
K = 1024


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.gelu(torch.matmul(x, w) + b)


def get_inputs():
    x = torch.randn(M, K, dtype=torch.bfloat16)
    w = (torch.randn(K, N) * K ** -0.5).to(torch.bfloat16)  # X @ W has unit variance
    b = torch.randn(N, dtype=torch.bfloat16)
    return [x, w, b]


def get_init_inputs():
    return []
