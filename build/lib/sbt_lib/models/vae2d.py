"""The small 2D KL-VAE whose latents are the 2D side of the OT term (paper §3.3).

SelfBootTok aligns its 1D local tokens ``z_local_2d`` with the latents X of a 2D VAE, "B × H'W' × c"
spatial tokens (Eq. 12).  The paper uses a pretrained SD-style VAE; none is available offline, so
this workbook trains its own, small one, once per dataset, and caches it:

    image (3×S×S) ─conv, ↓2 × log2(f)─▶ (μ, log σ²) (2c × S/f × S/f) ─sample─▶ ─conv, ↑2 × log2(f)─▶ image

trained with the mean squared error plus a small KL term (``kl_weight``) towards N(0, I), as the
KL-VAEs of latent diffusion.  :meth:`VAE2D.latents` returns the posterior means as B × H'W' × c
tokens in raster order (row by row), which is what the OT loss and the plots read.

Any callable that maps images (B×3×S×S in [-1, 1]) to B×N×c tokens (or B×c×h×w maps) can stand in
for it: see :func:`as_2d_encoder`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..config import Config
from ..files import content_key


@dataclass
class VAE2DConfig(Config):
    """Sizes of the 2D VAE.  ``downsample`` (a power of two) sets the latent grid S/f × S/f."""

    image_size: int = 32
    downsample: int = 2
    latent_channels: int = 4
    channels: int = 32
    kl_weight: float = 1e-4

    def __post_init__(self):
        f = self.downsample
        if f < 1 or f & (f - 1):
            raise ValueError(f"downsample must be a power of two, got {f}")
        if self.image_size % f:
            raise ValueError(f"image_size {self.image_size} is not a multiple of downsample {f}")
        if self.latent_channels < 1 or self.channels < 1:
            raise ValueError("latent_channels and channels must be ≥ 1")

    @property
    def grid(self) -> int:
        """Latent positions per side, S/f."""
        return self.image_size // self.downsample

    @property
    def num_latents(self) -> int:
        """N_x = H'·W', the number of 2D latent tokens per image."""
        return self.grid**2


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(min(8, c_out), c_out),
                         nn.SiLU())


class VAE2D(nn.Module):
    """A convolutional KL-VAE with a 2D latent grid (see the module docstring)."""

    def __init__(self, cfg: VAE2DConfig | None = None, **overrides):
        super().__init__()
        cfg = cfg or VAE2DConfig()
        self.cfg = c = VAE2DConfig.from_dict({**cfg.to_dict(), **overrides})
        steps = int(math.log2(c.downsample))
        self.encoder = nn.Sequential(_conv(3, c.channels), *(_conv(c.channels, c.channels, 2) for _ in range(steps)),
                                     nn.Conv2d(c.channels, 2 * c.latent_channels, 1))
        up = [nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), _conv(c.channels, c.channels))
              for _ in range(steps)]
        self.decoder = nn.Sequential(_conv(c.latent_channels, c.channels), *up, _conv(c.channels, c.channels),
                                     nn.Conv2d(c.channels, 3, 3, padding=1))

    def check_images(self, images: torch.Tensor) -> None:
        s = self.cfg.image_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (s, s):
            raise ValueError(f"the 2D VAE expects images B×3×{s}×{s} in [-1, 1], got {tuple(images.shape)}")

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ²), each B×c×S/f×S/f."""
        self.check_images(images)
        mean, logvar = self.encoder(images).chunk(2, dim=1)
        return mean, logvar.clamp(-30, 20)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """B×c×h×w latents → images (unclamped)."""
        return self.decoder(latents)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction from a posterior sample, and the KL to N(0, I) per image (summed over latents)."""
        mean, logvar = self.posterior(images)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).sum((1, 2, 3))
        return self.decode(z), kl

    @torch.no_grad()
    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """The 2D latents X of Eq. 12: posterior means as B × H'W' × c tokens, raster order."""
        mean, _ = self.posterior(images)
        return mean.flatten(2).transpose(1, 2)

    def fingerprint(self) -> str:
        """A short hash of the weights, naming this encoder in feature caches."""
        return content_key(*[x for k, v in self.state_dict().items() for x in (k, v)], length=12)


def as_2d_encoder(encoder: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap any image encoder so that it returns B×N×c tokens: B×c×h×w maps are flattened in raster
    order, B×N×c tokens pass through.  Runs without gradients."""

    @torch.no_grad()
    def encode(images: torch.Tensor) -> torch.Tensor:
        out = encoder(images)
        if out.ndim == 4:
            return out.flatten(2).transpose(1, 2)
        if out.ndim == 3:
            return out
        raise ValueError(f"a 2D encoder must return B×c×h×w maps or B×N×c tokens, got shape {tuple(out.shape)}")

    return encode
