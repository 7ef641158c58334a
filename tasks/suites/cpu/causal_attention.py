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
    # The evaluator's extra trials rescale inputs (x8, or heavy-tailed). Scaling q and k by 8
    # scales the logits by 64 (std ~64), where float32 attention is ill-conditioned: PyTorch's
    # own fp32 result is then 5e-4 away from a float64 computation, so any kernel that sums in
    # another order misses a 1e-4 tolerance by the reference's error alone. The default and
    # variant trials (logits of std ~1) keep the tight fp32 tolerance instead.
    "input_transforms": False,
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
