"""Two-stage aligner scaling (paper §3.4): grow the local 2D aligner of a trained tokenizer while its
encoder and global codebook stay frozen, so ``z_global`` — the only tokens a generator produces — stays
bit for bit what stage 1 made, and one generator serves every aligner size.

The paper gives two readings of what else stays frozen, and :func:`stage2_tokenizer` offers both:

- ``freeze="encoder"`` (§4.1, "keeping the ViT encoder frozen"): the encoder and the global codebook
  are frozen; the new 2D aligner, the local codebooks, the 1D aligner, the fusion and the decoder train;
- ``freeze="all"`` (§3.4, "fine-tune it while freezing the remaining components"): only the new 2D
  aligner and its codebook train.

Anything that would train the encoder or the global codebook is refused: it would change ``z_global``.

:func:`on_base` is stage 2 for the notebooks' variants: a tokenizer with other decoder-side switches (which local
groups, causal or not, fusion, decoder, shared codebook) on the frozen encoder and global codebook of a base
tokenizer, so every variant has *equal* global tokens (Table 3's "at equal global tokens" taken literally).

:func:`refined_tokenizer` is the same idea for the decoder side: a copy of a trained tokenizer with a
pixel-space refiner (:mod:`~sbt_lib.models.refiner`) added after its decoder, where only the refiner trains.
"""
from __future__ import annotations

import torch

from .tokenizer import SelfBootTok

FREEZE = {
    "encoder": "the encoder and the global codebook are frozen; everything after them trains (§4.1)",
    "all": "everything but the new 2D aligner and its codebook is frozen (§3.4)",
}
_ALWAYS_FROZEN = ("encoder.", "linear_path.", "quantizers.global.", "quantizers.shared.")


def check_freeze(freeze: str) -> None:
    """Refuse a stage-2 setting that would let ``z_global`` change, saying why that matters."""
    if freeze not in FREEZE:
        raise ValueError(
            f"stage 2 cannot use freeze={freeze!r}. Stage 2 keeps the encoder and the global codebook frozen: "
            "if they trained, z_global would change, and a generator trained on the stage-1 global tokens could "
            "not be reused with the larger aligner — that reuse is what two-stage scaling saves (paper §3.4). "
            f"Valid: {', '.join(f'{k!r} ({v})' for k, v in FREEZE.items())}.")


def is_trainable(name: str, freeze: str) -> bool:
    """Whether the parameter ``name`` of a stage-2 tokenizer trains under ``freeze``."""
    if name.startswith(_ALWAYS_FROZEN):
        return False
    return freeze == "encoder" or name.startswith(("aligner_2d.", "quantizers.local_2d."))


def stage2_tokenizer(parent: SelfBootTok, local_2d: str, freeze: str = "encoder", seed: int = 0) -> SelfBootTok:
    """A copy of the stage-1 tokenizer ``parent`` with a new, freshly initialised 2D aligner of preset
    ``local_2d`` (seeded by ``seed``) and every part but the new aligner loaded from the parent, with the
    parts ``freeze`` names frozen (``requires_grad=False``: the training engine leaves them out)."""
    check_freeze(freeze)
    if parent.aligner_2d is None:
        raise ValueError("stage 2 grows the local 2D aligner, and this stage-1 tokenizer has none: "
                         "train stage 1 with local_2d set (e.g. local_2d='xs')")
    torch.manual_seed(seed)
    child = SelfBootTok(parent.cfg, local_2d=local_2d)
    inherited = {k: v for k, v in parent.state_dict().items() if not k.startswith("aligner_2d.")}
    missing, unexpected = child.load_state_dict(inherited, strict=False)
    if unexpected or any(not k.startswith("aligner_2d.") for k in missing):
        raise RuntimeError(f"stage-1 and stage-2 tokenizers differ beyond the 2D aligner: "
                           f"missing {missing}, unexpected {unexpected}")
    for name, p in child.named_parameters():
        p.requires_grad_(is_trainable(name, freeze))
    return child


# Switches that change what the encoder or the global codebook compute: a variant on a base may not set them.
ENCODER_SWITCHES = ("image_size", "patch_size", "width", "encoder_depth", "num_heads", "mlp_ratio", "num_tokens",
                    "token_dim", "codebook_size", "tau", "normalize_codes", "conv_channels", "trunk", "linear_path",
                    "keep_norm", "token_mixing", "encoder_init")


def on_base(base: SelfBootTok, seed: int = 0, inherit_decoder: bool = True, finetune: bool = False,
            **switches) -> SelfBootTok:
    """A tokenizer with the decoder-side ``switches`` (e.g. ``local_1d=False, local_2d=None`` for G) on the frozen
    encoder and global codebook of ``base``: its ``z_global`` is exactly the base's.  Everything after the global
    codebook starts fresh (seeded by ``seed``) or, with ``inherit_decoder``, from the base's tensors wherever a
    tensor of the same name and shape exists (a shared starting point for every variant).  With
    ``shared_codebook=True`` the one codebook is the base's global codebook, frozen.

    With ``finetune``, every tensor the base has starts from it and nothing is frozen: a start for methods that act
    on the encoder (CRT, GloTok), compared after the same fine-tuning from one learned code.

    Switches that would change the encoder's shapes or code (:data:`ENCODER_SWITCHES`) are refused."""
    changed = sorted(k for k in switches if k in ENCODER_SWITCHES and switches[k] != getattr(base.cfg, k))
    if changed:
        raise ValueError(f"a variant on a base tokenizer keeps its encoder and global codebook, so it cannot change "
                         f"{changed}: those would change z_global. Train another base for them")
    torch.manual_seed(seed)
    child = SelfBootTok(base.cfg, **switches)
    parent = base.state_dict()
    if child.cfg.shared_codebook and not base.cfg.shared_codebook:
        parent["quantizers.shared.codebook"] = parent["quantizers.global.codebook"]
    own = child.state_dict()
    base_side = {k for k in own if k.startswith(_ALWAYS_FROZEN)}
    frozen = set() if finetune else base_side
    inherited = {k: v for k, v in parent.items() if k in own and v.shape == own[k].shape
                 and (k in base_side or inherit_decoder or finetune)}
    missing = sorted(base_side - set(inherited))
    if missing:
        raise RuntimeError(f"the base lacks the encoder-side tensors {missing} (or their shapes differ)")
    child.load_state_dict(inherited, strict=False)
    for name, p in child.named_parameters():
        p.requires_grad_(name not in frozen)
    return child


def decoder_side_params(model: SelfBootTok) -> int:
    """Parameters after the frozen encoder and global codebook: what a variant on a base trains (the local
    aligners and codebooks, fusion, decoder), the count a parameter-matched control matches."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith(_ALWAYS_FROZEN))


def refined_tokenizer(parent: SelfBootTok, channels: int = 16, seed: int = 0) -> SelfBootTok:
    """A copy of the trained tokenizer ``parent`` with a fresh pixel refiner of ``channels`` channels after its
    decoder (seeded by ``seed``; the identity until trained) and every other part loaded from the parent and
    frozen: ``z_global`` and the decoder's own output stay exactly the parent's, and only the refiner trains."""
    if parent.refiner is not None:
        raise ValueError("this tokenizer already has a refiner; refine its parent, or train this one further")
    if channels < 1:
        raise ValueError(f"the refiner needs channels ≥ 1, got {channels}")
    torch.manual_seed(seed)
    child = SelfBootTok(parent.cfg, refiner=channels)
    missing, unexpected = child.load_state_dict(parent.state_dict(), strict=False)
    if unexpected or any(not k.startswith("refiner.") for k in missing):
        raise RuntimeError(f"parent and refined tokenizer differ beyond the refiner: missing {missing}, "
                           f"unexpected {unexpected}")
    for name, p in child.named_parameters():
        p.requires_grad_(name.startswith("refiner."))
    return child


def frozen_state(model: SelfBootTok) -> dict[str, torch.Tensor]:
    """The tensors that fix ``z_global``: the encoder, the linear path and the global codebook."""
    return {k: v for k, v in model.state_dict().items() if k.startswith(_ALWAYS_FROZEN)}
