import torch
import torch.nn as nn
import torch.nn.functional as F

KERNELWRIGHT = {
    "suite": "gpu",
    "description": "Attention decode step in bfloat16: one query token per sequence and head against a "
                   "KV cache, softmax(q K^T / sqrt(D)) V with q: (B, H, 1, D), k and v: (B, H, S, D), "
                   "no mask. Bound by reading the 256 MB cache once.",
    "devices": ["cuda"],
    "variants": [{"B": 1, "H": 3, "S": 77}, {"B": 2, "H": 5, "S": 1000}, {"B": 3, "H": 2, "S": 1}],
    "seeds": ["seeds/attention_decode_seed.py"],
    "flops": 268435456,  # 4 B H S D
    "bytes": 268500992,  # k and v read once (q and o are noise)
    # The reference rounds the softmax weights to bf16 before multiplying by V; with the extra
    # trials' inputs (x8 or heavy-tailed) single weights near 1 times large values of v make
    # that rounding exceed 1e-2 where outputs cancel, so a more exact kernel fails. Default and
    # variant trials only (see attention_prefill_d64.py).
    "input_transforms": False,
}

B = 4
H = 32
S = 4096
D = 128


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)


def get_inputs():
    q = torch.randn(B, H, 1, D, dtype=torch.bfloat16)
    k = torch.randn(B, H, S, D, dtype=torch.bfloat16)
    v = torch.randn(B, H, S, D, dtype=torch.bfloat16)
    return [q, k, v]


def get_init_inputs():
    return []
