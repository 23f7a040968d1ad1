"""The tokenizer objective (paper Eq. 4-5), one weighted term per entry.

    L = L_rec + λ1 L_percep + λ2 L_adv + λ3 L_align + λ4 L_KL,
    L_align = μ1 L_repa_global + μ2 L_repa_local + μ3 L_OT

:class:`Objective` is called as ``objective(model, batch)`` (a :class:`~sbt_lib.data.Batch`) and
returns a dict of already-weighted terms, the shape the training engine expects: it minimises
their sum and logs each one.  It is an ``nn.Module`` because some terms have learnable parts (the
OT projector); the training engine trains them with the tokenizer and keeps them in checkpoints.
Frozen inputs of a term (the 2D latents of the OT term) are looked up per image in a
:class:`~sbt_lib.features.FeatureCache` by the batch's indices (any 2D encoder enters that way:
``FeatureCache(as_2d_encoder(my_encoder), train_set, "my-encoder")``).  A term whose weight is 0
costs nothing and is not logged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config
from .features import FeatureCache
from .ot import OTAlignment


@dataclass
class ObjectiveConfig(Config):
    """Every weight of Eq. 4-5 and the settings of its terms."""

    entropy_weight: float = 0.0  # SoftVQ's entropy regulariser, summed over groups
    align_weight: float = 1.0  # λ3, multiplies every alignment term
    ot_weight: float = 0.0  # μ3, the OT term between the 2D latents and z_local_2d (Eq. 12-13)
    ot_eps: float = 0.05  # ε of the entropic OT, in units of the cosine cost (0 … 4)
    ot_tol: float = 1e-5  # Sinkhorn stopping tolerance on the marginal error


class Objective(nn.Module):
    """Eq. 4-5 for a tokenizer with configuration ``tokenizer_cfg``.

    ``latents_2d`` (needed when ``ot_weight`` > 0): a :class:`FeatureCache` of the training set's
    2D latents, N_x×c per image.
    """

    def __init__(self, cfg: ObjectiveConfig | None = None, tokenizer_cfg=None, *,
                 latents_2d: FeatureCache | None = None, **overrides):
        super().__init__()
        cfg = cfg or ObjectiveConfig()
        self.cfg = c = ObjectiveConfig.from_dict({**cfg.to_dict(), **overrides})
        self.latents_2d = latents_2d
        self.ot = None
        if c.ot_weight:
            if tokenizer_cfg is None or tokenizer_cfg.local_2d is None:
                raise ValueError("the OT term aligns z_local_2d: it needs a tokenizer with a local 2D aligner "
                                 "(local_2d set), or ot_weight=0")
            if not isinstance(latents_2d, FeatureCache):
                raise ValueError("ot_weight > 0 needs latents_2d: a FeatureCache of the training set's 2D latents "
                                 "(see sbt_lib.experiments.latents_2d_cache)")
            self.ot = OTAlignment(tokenizer_cfg.token_dim, latents_2d.shape[-1], eps=c.ot_eps, tol=c.ot_tol)

    def forward(self, model, batch) -> dict[str, torch.Tensor]:
        c = self.cfg
        recon, enc = model(batch.images)
        terms = {"rec": F.mse_loss(recon.float(), batch.images.float())}
        if c.entropy_weight:
            terms["entropy"] = c.entropy_weight * enc.entropy_loss
        if self.ot is not None:
            loss, _ = self.ot(self.latents_2d[batch.indices].to(batch.images.device), enc.z_local_2d)
            terms["ot"] = c.align_weight * c.ot_weight * loss
        return terms
