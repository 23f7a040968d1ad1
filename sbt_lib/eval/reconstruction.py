"""A tokenizer's held-out reconstruction report: PSNR, SSIM, codebook usage, the rFID-style distance,
and the two anchors every reconstruction table shows at the same number of values (bicubic, PCA)."""
from __future__ import annotations

import torch

from ..batch import map_batches
from ..data.datasets import to_uint8
from ..files import content_key
from ..models.pca import pca_anchor
from ..models.quantizer import codebook_usage
from .metrics import bicubic_roundtrip, bicubic_side, psnr, ssim


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def reconstruct_with_codes(model, images: torch.Tensor,
                           batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstructions of ``images`` (clamped to [-1, 1]) and their global soft code assignments,
    computed in batches on the model's device, returned on the CPU."""
    model.eval()

    def step(x):
        recon, enc = model.reconstruct(x)
        return recon.clamp(-1, 1), enc.probs["global"]

    return map_batches(step, images, batch_size, _device(model))


def reconstruct(model, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Reconstructions of ``images``, clamped to [-1, 1]."""
    return reconstruct_with_codes(model, images, batch_size)[0]


def swapped_local_tokens(model, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Reconstructions (clamped) when every image keeps its global tokens but gets the local tokens of the
    next image of its batch (rolled by one): a check that the decoder reads the local tokens at all.  The
    drop in PSNR against :func:`reconstruct` is what the local tokens carry that the global ones do not
    already give the decoder by another path."""
    locals_ = [g for g in model.cfg.groups if g != "global"]
    if not locals_:
        raise ValueError("this tokenizer has no local tokens to swap (build it with local_1d / local_2d)")
    model.eval()

    def step(x):
        enc = model.encode(x)
        tokens = {g: t.roll(1, 0) if g in locals_ else t for g, t in enc.tokens.items()}
        return model.decode(tokens).clamp(-1, 1)

    return map_batches(step, images, batch_size, _device(model))


def held_out_images(dataset, limit: int | None = None) -> torch.Tensor:
    """The images of ``dataset``, or ``limit`` of them evenly spaced (so class-sorted folders are covered)."""
    n = min(limit or len(dataset), len(dataset))
    return dataset.images_at(torch.linspace(0, len(dataset) - 1, n).round().long())


def anchor_metrics(train_set, images: torch.Tensor, values: int) -> dict[str, dict[str, float]]:
    """The two anchors every reconstruction table shows, at ``values`` numbers per image, on ``images``:
    ``bicubic`` (down to the largest thumbnail of that many numbers and back up) and ``PCA`` (that many
    principal components of ``train_set``, the best linear code).  PSNR, SSIM and the values used."""
    recon = {"bicubic": bicubic_roundtrip(images, values),
             "PCA": pca_anchor(held_out_images(train_set, 10_000), images, values)}
    used = {"bicubic": 3 * bicubic_side(values) ** 2, "PCA": min(values, len(train_set) - 1)}
    return {k: {"psnr": psnr(r, images).mean().item(), "ssim": ssim(r, images).mean().item(), "values": used[k]}
            for k, r in recon.items()}


def _real_cache_name(dataset, images: torch.Tensor) -> str:
    """What names the held-out images' features in torch-fidelity's cache: the data set and the images' content."""
    return f"{dataset.name}-{content_key(to_uint8(images))}"


def prepare_evaluation(dataset, limit: int | None = None, fd_size: int | None = None) -> None:
    """Compute and cache on disk what :func:`evaluate_tokenizer` (same ``limit`` and ``fd_size``) reads of
    ``dataset`` alone: its images' features for the distribution distance.  A sweep calls it before its runs are
    evaluated in parallel processes, which then read them rather than each compute (and write) them."""
    if fd_size:
        from .fidelity import feature_metrics

        images = held_out_images(dataset, limit)  # the real side is what is cached; two images stand in for the fake
        feature_metrics(images, images[:2], effnet_size=fd_size, real_cache_name=_real_cache_name(dataset, images))


def evaluate_tokenizer(model, dataset, limit: int | None = None, batch_size: int | None = None,
                       fd_size: int | None = None, train_set=None) -> dict:
    """Held-out PSNR/SSIM of ``model`` on ``dataset`` and codebook usage, plus the bicubic anchor
    (and, given ``train_set``, the PCA anchor).  With ``limit``, an evenly spaced subset.

    With ``fd_size``, also the distribution distance between reconstructions and originals
    (rFID-style) from :func:`~sbt_lib.eval.fidelity.feature_metrics`: ``fid``/``kid`` when the
    Inception weights resolve, else ``fd_effnet``/``kid_effnet`` with EfficientNet-Lite0 at
    ``fd_size`` px (its ``feature_space`` says which); and ``test_lpips`` when LPIPS resolves."""
    images = held_out_images(dataset, limit)
    recon, probs = reconstruct_with_codes(model, images, batch_size)
    usage = codebook_usage(probs)
    extra = {}
    if fd_size:
        from ..models.lpips_net import lpips_available
        from .fidelity import feature_metrics, lpips_metric

        fm = feature_metrics(images, recon, effnet_size=fd_size, real_cache_name=_real_cache_name(dataset, images))
        extra = {k: v for k, v in fm.items() if k not in ("num_real", "num_fake")}
        if lpips_available():
            extra["test_lpips"] = lpips_metric(recon, images).mean().item()
    bicubic = bicubic_roundtrip(images, model.cfg.token_values)
    if train_set is not None:
        pca = anchor_metrics(train_set, images, model.cfg.token_values)["PCA"]
        extra.update(pca_psnr=pca["psnr"], pca_ssim=pca["ssim"], pca_values=pca["values"])
    return {**extra,
            "test_psnr": psnr(recon, images).mean().item(),
            "test_ssim": ssim(recon, images).mean().item(),
            "bicubic_psnr": psnr(bicubic, images).mean().item(),
            "bicubic_ssim": ssim(bicubic, images).mean().item(),
            "bicubic_side": bicubic_side(model.cfg.token_values),
            "bicubic_values": 3 * bicubic_side(model.cfg.token_values) ** 2,
            "codebook_perplexity": usage["perplexity"],
            "codebook_used_fraction": usage["used_fraction"],
            "codebook_assignment_entropy": usage["assignment_entropy"],
            "codebook_size": model.cfg.codebook_size,
            "test_images": len(images)}
