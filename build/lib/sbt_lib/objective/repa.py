"""REPA alignment of tokens to a frozen teacher (paper Eq. 6-7): ``PatchwiseSim(z, f(I))``.

A projector MLP maps every token (d dims) into the teacher's feature space (C dims), and the loss
is one minus the cosine similarity between each projected token and *its* teacher feature,
averaged over tokens and images (REPA, Yu et al. 2025; SoftVQ-VAE).  Normalisation and the
similarity are computed in fp32.

**Token ↔ patch correspondence for 1D tokens.**  A 1D token has no position on the image, so one
is assigned by order: the teacher's h×w patch features are read in raster order (row by row) as a
sequence of P = h·w vectors and average-pooled along that sequence into N groups
(``adaptive_avg_pool1d``): token i is paired with the mean of patches ⌊iP/N⌋ … ⌈(i+1)P/N⌉ − 1
(when N > P, neighbouring tokens share a patch).  This is SoftVQ-VAE's ``avg_1d`` alignment.  The
encoder is free to learn tokens that match this order; with it, REPA gives the 1D sequence a
coarse spatial layout, which the linear probes and decompositions of notebook 01 can reveal.

The global tokens are aligned to a semantic teacher (μ1), the local tokens to a local teacher
(μ2; Table 2 compares local teachers).  Teacher features of the training set are computed once
and cached (:class:`~sbt_lib.data.cache.FeatureCache` over :func:`teacher_tokens`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def teacher_tokens(features: torch.Tensor) -> torch.Tensor:
    """A teacher's feature map B×C×h×w as a raster-order sequence B×(h·w)×C."""
    if features.ndim != 4:
        raise ValueError(f"expected a teacher feature map B×C×h×w, got shape {tuple(features.shape)}")
    return features.flatten(2).transpose(1, 2)


def patches_to_tokens(patches: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """B×P×C raster-order patch features → B×N×C, one (pooled) feature per token (see the module
    docstring)."""
    if patches.shape[1] == num_tokens:
        return patches
    return F.adaptive_avg_pool1d(patches.transpose(1, 2), num_tokens).transpose(1, 2)


class REPAlignment(nn.Module):
    """``1 − mean cos(MLP(z_i), f_i)``: tokens B×N×d against teacher patch features B×P×C."""

    def __init__(self, token_dim: int, teacher_dim: int, hidden: int = 256):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(token_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                  nn.Linear(hidden, teacher_dim))

    def forward(self, tokens: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        if patches.shape[-1] != self.proj[-1].out_features:
            raise ValueError(f"teacher features have {patches.shape[-1]} dims, the projector expects "
                             f"{self.proj[-1].out_features}")
        with torch.autocast(tokens.device.type, enabled=False):
            z = F.normalize(self.proj(tokens.float()), dim=-1)
            target = F.normalize(patches_to_tokens(patches.float(), tokens.shape[1]), dim=-1)
            return 1 - (z * target).sum(-1).mean()
