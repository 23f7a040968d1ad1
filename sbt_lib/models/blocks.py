"""Transformer building blocks shared by the encoder, the aligners and the decoder.

Self-attention blocks are timm's ``Block`` (pre-norm, torch SDPA); cross-attention uses torch's
``nn.MultiheadAttention``.  Only the block that combines the two (the decoder block of Eq. 10) and
a token-axis linear map are written here.
"""
from __future__ import annotations

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Attention, Block
from torch import nn


def num_params(module: nn.Module | None) -> int:
    """The number of parameters of ``module`` (0 for ``None``, a part that is switched off)."""
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def init_weights(m: nn.Module) -> None:
    """ViT initialisation: truncated-normal linear weights (std 0.02), zero biases."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def self_attention_blocks(width: int, depth: int, num_heads: int, mlp_ratio: float = 4.0) -> nn.ModuleList:
    return nn.ModuleList(Block(width, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth))


class ResBlock(nn.Module):
    """Pre-activation residual block of two 3×3 convolutions."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(nn.GELU(), nn.Conv2d(channels, channels, 3, padding=1),
                                 nn.GELU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class TokenMix(nn.Module):
    """A learned linear map along the token axis: B×n_in×w → B×n_out×w (as in MLP-Mixer)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("oi,biw->bow", self.weight, x)


class CrossAttentionBlock(nn.Module):
    """Pre-norm decoder block: self-attention over the queries, cross-attention from the queries
    to a memory of tokens, MLP — each with a residual connection.  The memory is not updated."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(width)
        self.norm_memory = nn.LayerNorm(width)
        self.cross = nn.MultiheadAttention(width, num_heads, batch_first=True)
        self.norm3 = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        m = self.norm_memory(memory)
        x = x + self.cross(self.norm2(x), m, m, need_weights=False)[0]
        return x + self.mlp(self.norm3(x))
