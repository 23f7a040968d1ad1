"""The perceptual loss ``L_percep`` of the tokenizer objective (paper Eq. 4).

Two implementations, named so that logs and metrics say which one ran (attribute ``name``):

* ``lpips_vgg`` (or ``lpips_alex``) -- LPIPS (Zhang et al. 2018), the usual choice for
  tokenizers, when its torchvision backbone weights resolve (see :mod:`sbt_lib.weights`; the
  ``lpips`` package ships the learned linear layers);
* ``perceptual_effnet`` -- the offline fallback: LPIPS's recipe without the learned linear layers,
  on the real ImageNet EfficientNet-Lite0.  Features of reconstruction and target at several
  stages (strides 2, 4, 8, 16) are unit-normalised along channels; the loss is the squared
  difference summed over channels, averaged over positions, summed over stages (at most 4 per
  stage).  Inputs are resized to ``input_size`` (default 64 px: it runs every training step on a
  CPU; the target branch runs without autograd, only the reconstruction branch is
  differentiated).

Either way the network is frozen (eval mode, no parameter requires grad) and gradients flow to
the reconstruction.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..models.lpips_net import load_lpips
from ..models.teachers import EffNetTeacher
from ..weights import MissingWeightsError

KINDS = ("auto", "lpips", "effnet")


def unit_normalize(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Scale each position's channel vector to unit length (LPIPS's ``normalize_tensor``; the
    rsqrt form keeps the gradient finite at zero)."""
    return features * torch.rsqrt(features.square().sum(1, keepdim=True) + eps)


class PerceptualLoss(nn.Module):
    """``loss(recon, target)`` -> scalar, images B×3×H×W in [-1, 1].

    ``kind``: ``'lpips'`` (raise if its weights do not resolve), ``'effnet'``, or ``'auto'``
    (LPIPS when available, else EfficientNet).  ``net`` is the LPIPS backbone ('vgg' or 'alex');
    ``weights`` an explicit weight path for the chosen network; ``input_size`` and ``strides``
    configure the EfficientNet variant.
    """

    def __init__(self, kind: str = "auto", *, net: str = "vgg", weights=None, input_size: int = 64,
                 strides: tuple[int, ...] = (2, 4, 8, 16), download: bool | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"perceptual loss kind must be one of {KINDS}, got {kind!r}")
        self.lpips = self.teacher = None
        if kind in ("auto", "lpips"):
            try:
                self.lpips = load_lpips(net, weights if kind == "lpips" else None, download)
                self.name = f"lpips_{net}"
            except MissingWeightsError:
                if kind == "lpips":
                    raise
        if self.lpips is None:
            self.teacher = EffNetTeacher(input_size, weights if kind == "effnet" else None,
                                         input_size=input_size, download=download)
            self.strides = tuple(strides)
            self.name = "perceptual_effnet"
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "PerceptualLoss":
        """Always in eval mode (BatchNorm statistics and LPIPS dropout stay fixed)."""
        return super().train(False)

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if recon.shape != target.shape:
            raise ValueError(f"recon {tuple(recon.shape)} and target {tuple(target.shape)} differ in shape")
        if self.lpips is not None:
            return self.lpips(recon.float(), target.float()).mean()
        with torch.no_grad():
            target_features = self.teacher.stages(self.teacher.prepare(target), self.strides)
        recon_features = self.teacher.stages(self.teacher.prepare(recon), self.strides)
        loss = recon.new_zeros((), dtype=torch.float32)
        for r, t in zip(recon_features, target_features):
            loss = loss + (unit_normalize(r.float()) - unit_normalize(t.float())).square().sum(1).mean()
        return loss

    def extra_repr(self) -> str:
        return f"name={self.name!r}"
