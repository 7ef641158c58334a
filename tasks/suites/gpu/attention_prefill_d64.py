import torch
import torch.nn as nn
import torch.nn.functional as F

KERNELWRIGHT = {
    "suite": "gpu",
    "description": "Causal self-attention prefill in bfloat16, head_dim 64: "
                   "softmax(Q K^T / sqrt(64) + causal mask) V on (B, H, S, 64) tensors, as "
                   "F.scaled_dot_product_attention(q, k, v, is_causal=True).",
    "devices": ["cuda"],
    "variants": [{"B": 1, "H": 3, "S": 77}, {"B": 2, "H": 2, "S": 300}, {"B": 1, "H": 2, "S": 1}],
    "seeds": ["seeds/attention_prefill_d64_seed.py"],
    "flops": 137438953472,  # causal half of 4 B H S^2 D
    "bytes": 134217728,  # q, k, v read once, o written once
    # Flash-attention kernels round the softmax weights to bf16 before multiplying by V, each at
    # its own running maximum, so two correct kernels differ by ~2^-9 of the largest p*v terms.
    # The extra trials (q, k, v scaled by 8 or heavy-tailed) make those terms large where the
    # output cancels to near zero, and correct kernels then miss 1e-2 + 1e-2*|ref| (simulated
    # on CPU: block sizes 64 and 128 disagree on ~2 per million outputs with inputs x8, on none
    # with unit-scale inputs). Default and variant trials only.
    "input_transforms": False,
}

B = 4
H = 16
S = 4096
D = 64


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def get_inputs():
    shape = (B, H, S, D)
    return [torch.randn(shape, dtype=torch.bfloat16), torch.randn(shape, dtype=torch.bfloat16),
            torch.randn(shape, dtype=torch.bfloat16)]


def get_init_inputs():
    return []
