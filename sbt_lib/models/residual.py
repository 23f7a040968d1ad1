"""GloTok's residual recovery module (``../shared/paper/glotok-summary.txt``): a small network predicts, from
the quantized global tokens, what quantization took away, and adds it back before decoding.

Interpretation: ``z ↦ z + R(z)`` on ``z_global`` just before the decoder (in :meth:`SelfBootTok.decode`,
so the generator's path ``decode_from_global`` has it too); ``R`` is a linear embedding, one self-attention
block over the N tokens (the residual of a token may depend on the others), and a linear map back to d,
that last map zero-initialised: **the module is the identity at initialisation**.  It trains through the
reconstruction loss and, with ``residual_weight`` in the objective, also by regressing the quantization
residual ``ẑ − z`` (detached) directly.
"""
from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

WIDTH, HEADS = 64, 2


class ResidualRecovery(nn.Module):
    """``z → z + R(z)`` for tokens B×N×d; the identity at initialisation."""

    def __init__(self, token_dim: int, width: int = WIDTH, num_heads: int = HEADS):
        super().__init__()
        self.embed = nn.Linear(token_dim, width)
        self.block = Block(width, num_heads, qkv_bias=True)
        self.out = nn.Linear(width, token_dim)

    def init_identity(self) -> None:
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def residual(self, z: torch.Tensor) -> torch.Tensor:
        """R(z): the predicted quantization residual."""
        return self.out(self.block(self.embed(z)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.residual(z)
