"""The stage-2 objective of two-stage aligner scaling (paper §3.4): the reconstruction term of Eq. 4
from global tokens computed once.

The encoder and the global codebook are frozen in stage 2, so ``z_global`` of every training image is
a constant: :class:`Stage2Loss` reads it from a :class:`~sbt_lib.data.cache.FeatureCache` by the batch's
indices (float32, exact) and a step costs the aligners and the decoder only.  Without a cache it runs
the frozen encoder under ``no_grad`` every step (the reference the cache is measured against).  The
other terms of Eq. 4-5 act on the encoder's tokens or are left to stage 1 in this miniature.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.cache import FeatureCache


class Stage2Loss(nn.Module):
    """``loss(model, batch)`` → ``{"rec": MSE(decode_from_global(z_global), images)}``."""

    def __init__(self, z_global: FeatureCache | None = None):
        super().__init__()
        self.z_global = z_global

    def global_tokens(self, model, batch) -> torch.Tensor:
        if self.z_global is not None:
            return self.z_global[batch.indices].to(batch.images.device)
        with torch.no_grad():
            return model.encode_global(batch.images)

    def forward(self, model, batch) -> dict[str, torch.Tensor]:
        recon = model.decode_from_global(self.global_tokens(model, batch))
        return {"rec": F.mse_loss(recon.float(), batch.images.float())}
