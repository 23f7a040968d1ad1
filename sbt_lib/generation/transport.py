"""Flow-matching training of a generator on tokens: time sampling, the loss, and token normalisation.

:class:`FlowMatchingLoss` is a loss of the training engine (``loss(model, batch)``): the batch's tokens
come from a cache of a frozen tokenizer's tokens, looked up by the batch's indices (the tokenizer never
runs during generator training), normalised per channel by :class:`TokenNormalizer`, and the model
regresses the velocity of :mod:`~sbt_lib.generation.path` at a sampled time, conditioned on the class.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .path import interpolate, target_velocity

TIME_SAMPLING = ("uniform", "logit_normal")


def sample_time(n: int, how: str = "uniform", device=None, generator: torch.Generator | None = None,
                mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """``n`` training times in (0, 1): uniform, or logit-normal (sigmoid of N(mean, std²), SD3's choice,
    which spends more steps at intermediate times)."""
    if how == "uniform":
        return torch.rand(n, device=device, generator=generator)
    if how == "logit_normal":
        return torch.sigmoid(mean + std * torch.randn(n, device=device, generator=generator))
    raise ValueError(f"unknown time sampling {how!r}; valid: {TIME_SAMPLING}")


class TokenNormalizer(nn.Module):
    """Per-channel mean and std of a training set's tokens (B×N×d → d each), kept as buffers so they are
    saved with the generator: the generator works on ``(z − mean) / std``, and samples are mapped back."""

    def __init__(self, token_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(token_dim))
        self.register_buffer("std", torch.ones(token_dim))

    @torch.no_grad()
    def fit(self, tokens: torch.Tensor) -> "TokenNormalizer":
        flat = tokens.reshape(-1, tokens.shape[-1]).float()
        self.mean.copy_(flat.mean(0))
        self.std.copy_(flat.std(0).clamp_min(1e-6))
        return self

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) / self.std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


class FlowMatchingLoss(nn.Module):
    """``loss(model, batch)`` → ``{"flow": MSE(v(x_t, t, y), x_1 − x_0)}`` on the cached tokens of the
    batch's images (``tokens[batch.indices]``, B×N×d), normalised, with the batch's class labels."""

    def __init__(self, tokens, normalizer: TokenNormalizer, time_sampling: str = "uniform"):
        super().__init__()
        if time_sampling not in TIME_SAMPLING:
            raise ValueError(f"unknown time sampling {time_sampling!r}; valid: {TIME_SAMPLING}")
        self.tokens, self.normalizer, self.time_sampling = tokens, normalizer, time_sampling

    def forward(self, model, batch) -> dict[str, torch.Tensor]:
        device = batch.images.device
        x1 = self.normalizer.normalize(self.tokens[batch.indices].to(device).float())
        x0 = torch.randn_like(x1)
        t = sample_time(len(x1), self.time_sampling, device=device)
        v = model(interpolate(x0, x1, t), t, batch.targets.to(device))
        return {"flow": F.mse_loss(v.float(), target_velocity(x0, x1))}
