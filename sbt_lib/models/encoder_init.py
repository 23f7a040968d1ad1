"""Starting the tokenizer's encoder from a pretrained ViT (the paper: "the encoder is initialized the same
as pretrained DINOv2"), exactly where the shapes allow.

The encoder (:class:`~sbt_lib.models.tokenizer_parts.Encoder`) is a ViT over the image's patches with the N latent
tokens appended.  From a timm ViT (DINOv2-B for the ``paper`` preset) it takes:

- the transformer blocks, one for one (the encoder may be shallower: it takes the first ones).  DINOv2's
  blocks carry LayerScale (``x + γ ⊙ f(x)``); the encoder's blocks do not, so γ is folded into the last
  linear layer of each branch (``γ ⊙ (Wx + b) = (γW)x + γb``): the same function, exactly;
- the final LayerNorm;
- the patch embedding, resampled to the encoder's patch size with FlexiViT's pseudo-inverse resize
  (``timm.layers.resample_patch_embed``; DINOv2's patches are 14 px, the preset's 16), with the ViT's input
  normalisation folded in (the tokenizer sees images in [-1, 1], DINOv2 ImageNet-normalised ones:
  ``(x + 1) / 2`` then ``(· − mean) / std`` is per channel affine, so it folds into the convolution);
- the position embedding of the patches, resampled to the encoder's grid
  (``timm.layers.resample_abs_pos_embed``).

The latent tokens, the read-in, the projection to the token dimension, and any conv stem stay as
initialised.  The encoder needs ``trunk="patch"`` with ``conv_channels=0`` (a plain patchify convolution)
and the ViT's width and head count.  The weights resolve offline like every teacher's
(:func:`~sbt_lib.models.teachers.resolve_vit_weights`); when they do not, the error says which file to put where.
"""
from __future__ import annotations

import torch
from torch import nn

from .teachers import IMAGENET_MEAN, IMAGENET_STD, VIT_TEACHERS, build_timm_vit, resolve_vit_weights
from .tokenizer import SelfBootTok


def _fold_layer_scale(linear: nn.Linear, gamma: torch.Tensor) -> None:
    linear.weight.mul_(gamma[:, None])
    if linear.bias is not None:
        linear.bias.mul_(gamma)


@torch.no_grad()
def copy_block(target: nn.Module, source: nn.Module) -> None:
    """``source`` (a timm ViT block, with or without LayerScale) into ``target`` (one without): same function."""
    state = {k: v for k, v in source.state_dict().items() if not k.startswith(("ls1.", "ls2."))}
    target.load_state_dict(state, strict=True)
    for ls, linear in ((getattr(source, "ls1", None), target.attn.proj), (getattr(source, "ls2", None), target.mlp.fc2)):
        if ls is not None and hasattr(ls, "gamma"):
            _fold_layer_scale(linear, ls.gamma.to(linear.weight))


@torch.no_grad()
def init_encoder_from_vit(model: SelfBootTok, vit: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> list[str]:
    """Copy ``vit`` (a timm VisionTransformer) into ``model.encoder`` (see the module docstring); returns the
    names of the encoder's parameters that were set.  ``mean``/``std``: the ViT's input normalisation."""
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    cfg, enc = model.cfg, model.encoder
    if cfg.trunk != "patch" or cfg.conv_channels:
        raise ValueError("initialising the encoder from a ViT needs trunk='patch' and conv_channels=0 (a plain "
                         f"patchify convolution); got trunk={cfg.trunk!r}, conv_channels={cfg.conv_channels}")
    if (cfg.width, cfg.num_heads) != (vit.embed_dim, vit.blocks[0].attn.num_heads):
        raise ValueError(f"the encoder (width {cfg.width}, {cfg.num_heads} heads) does not have the ViT's shape "
                         f"(width {vit.embed_dim}, {vit.blocks[0].attn.num_heads} heads)")
    if cfg.encoder_depth > len(vit.blocks):
        raise ValueError(f"the encoder has {cfg.encoder_depth} blocks, the ViT only {len(vit.blocks)}")
    for target, source in zip(enc.blocks, vit.blocks):
        copy_block(target, source)
    enc.norm.load_state_dict(vit.norm.state_dict())
    # patch embedding: resampled to our patch size, with [-1, 1] → ViT normalisation folded in
    conv = enc.patch_embed.net[-1]
    weight = resample_patch_embed(vit.patch_embed.proj.weight.float(), [cfg.patch_size] * 2)
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    conv.weight.copy_(weight / (2 * std))
    conv.bias.copy_(vit.patch_embed.proj.bias + (weight * (0.5 - mean) / std).sum((1, 2, 3)))
    # position embedding of the patches (the prefix tokens' own are dropped)
    pos = vit.pos_embed[:, 0 if vit.no_embed_class else vit.num_prefix_tokens:]
    grid = vit.patch_embed.grid_size
    enc.patch_pos.copy_(resample_abs_pos_embed(pos.float(), [cfg.grid] * 2, list(grid), num_prefix_tokens=0))
    names = [f"encoder.blocks.{i}" for i in range(cfg.encoder_depth)]
    return names + ["encoder.norm", "encoder.patch_embed", "encoder.patch_pos"]


def init_encoder(model: SelfBootTok, name: str, weights=None, download: bool | None = None) -> list[str]:
    """Initialise ``model.encoder`` from the pretrained ViT ``name`` (a key of
    :data:`~sbt_lib.models.teachers.VIT_TEACHERS`, e.g. ``dinov2_b``), its weights resolved offline first."""
    if name not in VIT_TEACHERS:
        raise ValueError(f"unknown encoder initialisation {name!r}; valid: {sorted(VIT_TEACHERS)}")
    timm_name = VIT_TEACHERS[name]
    path = resolve_vit_weights(timm_name, weights, download)  # a clear MissingWeightsError when absent
    patch = int(timm_name.split("patch")[1].split("_")[0])
    vit = build_timm_vit(timm_name, path, patch * model.cfg.grid)  # the ViT's grid = the encoder's grid
    cfg = vit.pretrained_cfg
    return init_encoder_from_vit(model, vit, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
