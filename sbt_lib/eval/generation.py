"""Distribution metrics of generated images against real ones, labelled by their sample count.

Fréchet distance and KID at a few hundred or thousand samples are biased (FD more so at small N), so a
number is only comparable with numbers computed at the same count in the same feature space: the label
says both, ``gFD-EffNet@400`` (EfficientNet-Lite0 features) or ``gFID@10000`` (Inception, when its weights
resolve).  The metrics themselves are torch-fidelity's, through :func:`~sbt_lib.eval.fidelity.feature_metrics`.
"""
from __future__ import annotations

import torch

from ..data.datasets import to_uint8
from ..files import content_key
from .fidelity import feature_metrics


def generation_metrics(real: torch.Tensor, fake: torch.Tensor, fd_size: int = 112) -> dict:
    """``gfd`` and ``kid`` of ``fake`` against ``real`` images (both N×3×S×S in [-1, 1], the same N), with
    ``label`` (e.g. ``gFD-EffNet@400``), ``n`` and ``feature_space``.  The real features are cached."""
    if len(real) != len(fake):
        raise ValueError(f"compare equal counts: {len(real)} real against {len(fake)} generated images")
    fm = feature_metrics(real, fake, effnet_size=fd_size, real_cache_name=f"real-{content_key(to_uint8(real))}")
    inception = "fid" in fm
    fd, kid = ("fid", "kid") if inception else ("fd_effnet", "kid_effnet")
    return {"gfd": fm[fd], "kid": fm[kid], "n": len(fake), "feature_space": fm["feature_space"],
            "label": f"{'gFID' if inception else 'gFD-EffNet'}@{len(fake)}"}
