import torch
import torch.nn as nn
import torch.nn.functional as F

KERNELWRIGHT = {
    "suite": "cpu",
    "description": "Causal scaled dot-product attention, softmax(Q K^T / sqrt(d) + causal mask) V, "
                   "on (batch, heads, seq, head_dim) float32 tensors.",
    "variants": [{"batch_size": 1, "num_heads": 3, "seq_len": 77, "head_dim": 40},
                 {"batch_size": 3, "num_heads": 1, "seq_len": 5, "head_dim": 17}],
    "seeds": ["seeds/causal_attention_seed.py"],
}

batch_size = 2
num_heads = 4
seq_len = 128
head_dim = 64


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def get_inputs():
    shape = (batch_size, num_heads, seq_len, head_dim)
    return [torch.randn(shape), torch.randn(shape), torch.randn(shape)]


def get_init_inputs():
    return []
