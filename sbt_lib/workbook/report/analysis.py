"""What a trained tokenizer carries: every group's tokens, decodes with groups removed, linear probes
to known factors, and the cost (parameters, FLOPs) of every part."""
from __future__ import annotations

import torch

from ...batch import map_batches
from ...eval.flops import flops_by_module, num_params
from ...eval.metrics import psnr
from ...eval.reconstruction import reconstruct, swapped_local_tokens
from ...eval.probes import probe_table
from ...models.pca import PCA
from ...models.teachers import available_teachers, load_teacher
from ...models.tokenizer import SelfBootTok


def encode_groups(model: SelfBootTok, images: torch.Tensor, batch_size: int | None = None) -> dict[str, torch.Tensor]:
    """Every group's (soft-quantized) tokens for ``images``, batched on the model's device, on the CPU."""
    model.eval()
    return map_batches(lambda x: model.encode(x).tokens, images, batch_size, next(model.parameters()).device)


def psnr_of(model: SelfBootTok, images: torch.Tensor, swap_local: bool = False) -> float:
    """Mean reconstruction PSNR of ``model`` on ``images``; with ``swap_local``, when every image gets the local
    tokens of the next one (:func:`~sbt_lib.eval.reconstruction.swapped_local_tokens`): the difference is what the
    decoder reads from the local tokens."""
    recon = swapped_local_tokens(model, images) if swap_local else reconstruct(model, images)
    return psnr(recon, images).mean().item()


@torch.no_grad()
def decode_groups(model: SelfBootTok, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """What each group carries inside one trained model: ``images`` decoded with all groups, and
    with groups removed (scaled to 0 before fusion).  Keys are labels; values are clamped images."""
    model.eval()
    groups = model.cfg.groups
    settings = {"all groups": {}}
    for g in groups[1:]:
        settings[f"without {g}"] = {g: 0.0}
    if len(groups) > 2:
        settings["global only"] = {g: 0.0 for g in groups[1:]}
    if len(groups) > 1:
        settings["local only"] = {"global": 0.0}
    enc = model.encode(images)
    return {label: model.decode(enc, scales=sc).clamp(-1, 1) for label, sc in settings.items()}


def probe_groups(model: SelfBootTok, train_set, test_set, reference: bool = True,
                 teacher: str | None = "effnet_lite0") -> dict[str, dict[str, float]]:
    """Linear-probe accuracy from every token group to every ground-truth factor of ``train_set``
    (``shapes``), fit on ``train_set`` and scored on ``test_set``; with the chance level per factor.

    ``reference`` adds the row ``pixels (PCA)``: the same probe on as many principal components of the
    pixels as the tokenizer has values.  It is what a linear code of that size makes linearly readable,
    the reference for tokens that start as such a code (the linear path).  ``teacher`` adds the row
    ``teacher (<name>)``: the probe on a frozen ImageNet network's patch features of the same images
    (where its weights resolve), which shows whether a factor is in the images at all, in a
    non-linear form."""
    if train_set.factors is None or test_set.factors is None:
        raise ValueError(f"linear probes need ground-truth factors; dataset {train_set.name!r} has none (use 'shapes')")
    images = [d.images_at(torch.arange(len(d))) for d in (train_set, test_set)]
    feats = [encode_groups(model, x) for x in images]
    if reference:
        pca = PCA.fit(images[0], model.cfg.token_values)
        for f, x in zip(feats, images):
            f["pixels (PCA)"] = pca.encode(x)
    if teacher and available_teachers(model.cfg.image_size)[teacher]:
        net = load_teacher(teacher, model.cfg.image_size).eval()
        with torch.no_grad():
            for f, x in zip(feats, images):
                f[f"teacher ({teacher})"] = map_batches(net, x)
    factors = [{k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in d.factors.items()}
               for d in (train_set, test_set)]
    return probe_table(feats[0], feats[1], factors[0], factors[1])


def cost_table(model: SelfBootTok) -> dict[str, dict]:
    """Parameters and forward MFLOPs per image of every part of the tokenizer, and the total."""
    parts = ("encoder", "quantizers", "aligner_1d", "aligner_2d", "fusion", "decoder")
    s = model.cfg.image_size
    flops = flops_by_module(model, torch.zeros(1, 3, s, s, device=next(model.parameters()).device), parts=parts)
    table = {p: {"params": num_params(getattr(model, p)), "mflops": flops[p] / 1e6} for p in parts}
    table["total"] = {"params": num_params(model), "mflops": flops["total"] / 1e6}
    return table
