"""Reconstruction metrics: PSNR, SSIM, and the classical anchor (bicubic at equal values).

Images are in [-1, 1] (data range 2).  PSNR and SSIM are computed per image and averaged over
the batch, the usual convention for reconstruction tables.  SSIM is Wang et al. (2004) with an
11×11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, averaged over the valid region and the
channels: the same numbers as ``skimage.metrics.structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, channel_axis=0, data_range=2)``, which the tests check.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of B×C×H×W images in [-1, 1] (``x`` is clamped to the range first)."""
    mse = (x.clamp(-1, 1) - y).float().square().flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, win_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM of B×C×H×W images in [-1, 1] (``x`` is clamped first).  Computed in float64."""
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"SSIM needs images of at least {win_size}×{win_size}, got {tuple(x.shape[-2:])}")
    x, y = x.clamp(-1, 1).double(), y.double()
    c = x.shape[1]
    g = _gaussian_window(win_size, sigma).to(x.device)
    kernel_h = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    kernel_v = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(t):  # separable Gaussian filter over the valid region
        return F.conv2d(F.conv2d(t, kernel_h, groups=c), kernel_v, groups=c)

    data_range = 2.0
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).float()


def bicubic_side(values: int, channels: int = 3) -> int:
    """The largest square thumbnail side whose pixel values (side²·channels) fit in ``values``."""
    return max(1, math.isqrt(values // channels))


def bicubic_roundtrip(images: torch.Tensor, values: int) -> torch.Tensor:
    """The classical anchor: downsample to the largest thumbnail holding at most ``values``
    numbers (antialiased bicubic), then upsample back with bicubic interpolation."""
    side = bicubic_side(values, images.shape[1])
    small = F.interpolate(images.float(), size=(side, side), mode="bicubic", antialias=True, align_corners=False)
    return F.interpolate(small, size=images.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)


def summarize(values: torch.Tensor) -> dict[str, float]:
    """Mean and standard error of a per-image metric."""
    v = values.double()
    return {"mean": v.mean().item(), "sem": (v.std() / math.sqrt(max(1, len(v)))).item() if len(v) > 1 else 0.0}
