"""The stage-2 objective of two-stage aligner scaling (paper §3.4): the reconstruction term of Eq. 4
from global tokens computed once.

The encoder and the global codebook are frozen in stage 2, so ``z_global`` of every training image is
a constant: :class:`Stage2Loss` reads it from a :class:`~sbt_lib.data.cache.FeatureCache` by the batch's
indices (float32, exact) and a step costs the aligners and the decoder only.  Without a cache it runs
the frozen encoder under ``no_grad`` every step (the reference the cache is measured against).  The
other terms of Eq. 4-5 act on the encoder's tokens or are left to stage 1 in this miniature.

:class:`RefinerLoss` is the objective of the refine stage (:func:`~sbt_lib.workbook.pipeline.trainers.train_refiner`),
where only a pixel refiner after the decoder trains (:func:`~sbt_lib.models.two_stage.refined_tokenizer`): everything before it is frozen, so the
tokenizer's reconstruction of every training image is a constant, read from a cache, and a step costs the
refiner alone.
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


class RefinerLoss(nn.Module):
    """``loss(model, batch)`` → ``{"rec": MSE(model.refiner(x̂), images)}`` with ``x̂`` the frozen tokenizer's
    reconstruction of the batch, read from ``reconstructions`` (a cache over the training set) by index."""

    def __init__(self, reconstructions: FeatureCache):
        super().__init__()
        self.reconstructions = reconstructions

    def forward(self, model, batch) -> dict[str, torch.Tensor]:
        if model.refiner is None:
            raise ValueError("RefinerLoss trains a tokenizer's refiner, and this one has none "
                             "(build it with sbt_lib.models.two_stage.refined_tokenizer)")
        x_hat = self.reconstructions[batch.indices].to(batch.images.device)
        return {"rec": F.mse_loss(model.refiner(x_hat).float(), batch.images.float())}
