"""Loss terms of the tokenizer objective (paper Eq. 4).

Each loss function takes ``(model, images, targets)`` and returns a dict of already-weighted
terms, the shape the training engine expects: it minimises their sum and logs each one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class ReconstructionLoss:
    """``L_rec`` (mean squared error in [-1, 1]) plus the SoftVQ entropy regulariser.

    This is the baseline objective; the perceptual, adversarial, alignment and KL terms of
    Eq. 4-5 are added on top of it.
    """

    def __init__(self, entropy_weight: float = 0.0):
        self.entropy_weight = entropy_weight

    def __call__(self, model, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        recon, enc = model(images)
        terms = {"rec": F.mse_loss(recon.float(), images.float())}
        if self.entropy_weight:
            terms["entropy"] = self.entropy_weight * enc.entropy_loss
        return terms
