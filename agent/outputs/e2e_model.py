"""A small decoder-only transformer built from a config: random weights under a fixed seed, nothing
downloaded. What `kernelwright e2e` runs with and without an exported package applied.

Pre-norm blocks (nn.LayerNorm or nn.RMSNorm), causal self-attention through
F.scaled_dot_product_attention, an MLP as nn.Sequential(Linear, GELU, Linear), a final norm, a
language-model head and the next-token distribution (a softmax over the vocabulary): each of
the cpu suite's layer tasks has something to stand in for.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

NORM_EPS = {"layernorm": 1e-5, "rmsnorm": 1e-6}  # PyTorch's LayerNorm default; LLaMA's RMSNorm


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    vocab: int = 1024
    d_model: int = 256
    heads: int = 4
    layers: int = 4
    d_ff: int = 1024
    seq: int = 128
    batch: int = 4
    norm: str = "layernorm"  # or "rmsnorm"
    eps: float | None = None  # None: the norm's usual default (NORM_EPS)
    seed: int = 0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.norm not in NORM_EPS:
            raise ValueError(f"norm {self.norm!r}: use {' or '.join(NORM_EPS)}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of heads {self.heads}")
        if min(self.vocab, self.d_model, self.heads, self.layers, self.d_ff, self.seq, self.batch) < 1:
            raise ValueError("every size of the model must be at least 1")
        if not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise ValueError(f"dtype {self.dtype!r} is not a torch dtype")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TransformerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(sorted(known))})")
        return cls(**values)


def _norm(cfg: TransformerConfig) -> nn.Module:
    eps = NORM_EPS[cfg.norm] if cfg.eps is None else cfg.eps
    return nn.LayerNorm(cfg.d_model, eps=eps) if cfg.norm == "layernorm" else nn.RMSNorm(cfg.d_model, eps=eps)


class SelfAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, s, d))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.norm1, self.attn, self.norm2 = _norm(cfg), SelfAttention(cfg), _norm(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """tokens (batch, seq) -> (final hidden state, logits, next-token probabilities)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model)
        self.pos = nn.Embedding(cfg.seq, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = _norm(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.embed(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            h = block(h)
        h = self.norm(h)
        logits = self.head(h)
        return h, logits, torch.softmax(logits, dim=-1)


OUTPUTS = ("hidden", "logits", "probs")


def build(cfg: TransformerConfig, device: str = "cpu") -> Transformer:
    """The model, its weights drawn under cfg.seed (norm weights too, so that they matter); the
    caller's random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = Transformer(cfg)
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
                nn.init.normal_(m.weight, mean=1.0, std=0.2)
                bias = getattr(m, "bias", None)
                if bias is not None:
                    nn.init.normal_(bias, mean=0.0, std=0.2)
    return model.to(device=device, dtype=getattr(torch, cfg.dtype)).eval()


def tokens(cfg: TransformerConfig, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(cfg.seed + 1)
    return torch.randint(0, cfg.vocab, (cfg.batch, cfg.seq), generator=g).to(device)
