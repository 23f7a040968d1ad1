"""Causally regularized tokenization (CRT; ``../shared/paper/crt-summary.txt``): a small causal transformer,
trained jointly with the tokenizer, predicts each global token's code from the tokens before it, and its loss
flows into the encoder, so the token sequence becomes easier for an autoregressive stage 2 to model.

Interpretations (the summary gives the idea, not the recipe):

- **What is predicted.** SoftVQ tokens have no index, so token i's target is its *soft code assignment*
  q_i (B×N×K, the softmax over the codebook that SoftVQ computes anyway); the loss is the cross-entropy
  −Σ_k q_{i,k} log p_{i,k} of the predictor's distribution p_i, averaged over tokens and images.
- **Where the gradient goes.** Into the predictor, and into the encoder through the predictor's *inputs*
  (the soft-quantized tokens before position i); the targets are detached, as CRT's discrete targets (code
  indices) carry no gradient.  Without that, the encoder could make the targets predictable by collapsing
  them.
- **The predictor.** A learned start token, then the tokens ``z_1 … z_{N−1}`` (linearly embedded, with
  learned positions), through ``depth`` causal self-attention blocks (timm's, with SDPA's causal mask),
  then a linear map to K logits: position i sees tokens < i and predicts q_i.  It is small on purpose: CRT
  regularizes toward what a *small* stage-2 model can learn.
- **Which tokens.** ``z_global``: the generator's tokens in this workbook (the local tokens are computed
  from them, so predicting them adds nothing).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

WIDTH, DEPTH, HEADS = 64, 2, 2  # the predictor's size: small on purpose (see the module docstring)


class CausalRegularizer(nn.Module):
    """``loss(z, q)``: cross-entropy of next-token code prediction on tokens ``z`` (B×N×d) against their soft
    code assignments ``q`` (B×N×K), the targets detached."""

    def __init__(self, token_dim: int, num_tokens: int, codebook_size: int, width: int = WIDTH,
                 depth: int = DEPTH, num_heads: int = HEADS):
        super().__init__()
        self.embed = nn.Linear(token_dim, width)
        self.start = nn.Parameter(0.02 * torch.randn(1, 1, width))
        self.pos = nn.Parameter(0.02 * torch.randn(1, num_tokens, width))
        self.blocks = nn.ModuleList(Block(width, num_heads, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, codebook_size)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """B×N×K: position i's prediction of token i's code from tokens < i."""
        x = torch.cat([self.start.expand(len(z), -1, -1), self.embed(z[:, :-1])], dim=1) + self.pos
        for block in self.blocks:
            x = block(x, is_causal=True)  # SDPA's causal mask
        return self.head(self.norm(x))

    def forward(self, z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        with torch.autocast(z.device.type, enabled=False):
            log_p = F.log_softmax(self.logits(z.float()), dim=-1)
            return -(q.detach().float() * log_p).sum(-1).mean()
