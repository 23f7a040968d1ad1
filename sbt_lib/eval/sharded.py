"""Evaluation split over the processes of a ``torchrun`` launch (and plain evaluation in one process).

Each rank takes its contiguous shard of the images or samples (:func:`sbt_lib.distributed.shard`),
computes per-image values and the feature vectors of FD/KID (:func:`~sbt_lib.eval.fidelity.image_features`,
torch-fidelity's extractor), and the shards are gathered in rank order, so every rank ends with the metrics
of the whole set (computed by torch-fidelity from the gathered features,
:func:`~sbt_lib.eval.fidelity.metrics_from_features`).  Reconstruction metrics are the same at every world
size; generated samples draw their noise from a per-rank seed, so a sample set depends on the world size
(its distribution does not).  50,000 samples for gFID at the paper scale are 50,000 / K per GPU.
"""
from __future__ import annotations

import torch

from .. import distributed as dist
from ..batch import map_batches
from .fidelity import EFFNET_SIZE, image_features, metrics_from_features
from .metrics import psnr, ssim


def _gathered_features(images: torch.Tensor, effnet_size: int) -> tuple[torch.Tensor, str]:
    features, extractor = image_features(images, effnet_size=effnet_size)
    return dist.gather(features.float().cpu()).double(), extractor


def evenly_spaced(n_total: int, limit: int | None = None) -> torch.Tensor:
    """``limit`` indices spread evenly over ``range(n_total)`` (all of them without a limit): class-sorted
    folders are covered, as :func:`~sbt_lib.eval.reconstruction.held_out_images` does."""
    n = min(limit or n_total, n_total)
    return torch.linspace(0, n_total - 1, n).round().long()


@torch.no_grad()
def reconstruction_metrics(model, dataset, limit: int | None = None, effnet_size: int = EFFNET_SIZE,
                           batch_size: int = 64) -> dict:
    """Held-out PSNR, SSIM and the rFID-style distance of ``model``'s reconstructions of ``limit`` images of
    ``dataset`` (evenly spaced), each rank reconstructing its shard on the model's device."""
    indices = evenly_spaced(len(dataset), limit)
    mine = indices[list(dist.shard(len(indices)))]
    device = next(model.parameters()).device
    model.eval()
    originals, recons, values = [], [], {"psnr": [], "ssim": []}
    for i in range(0, len(mine), batch_size):
        x = dataset.images_at(mine[i:i + batch_size])
        r = map_batches(lambda b: model.reconstruct(b)[0].clamp(-1, 1), x, device=device)
        values["psnr"].append(psnr(r, x))
        values["ssim"].append(ssim(r, x))
        originals.append(x)
        recons.append(r)
    originals, recons = torch.cat(originals), torch.cat(recons)
    per_image = {k: dist.gather(torch.cat(v)) for k, v in values.items()}
    real, extractor = _gathered_features(originals, effnet_size)
    fake, _ = _gathered_features(recons, effnet_size)
    fm = metrics_from_features(real, fake, extractor, effnet_size=effnet_size)
    return {"test_psnr": per_image["psnr"].mean().item(), "test_ssim": per_image["ssim"].mean().item(),
            "test_images": len(per_image["psnr"]), "processes": dist.rank_and_world_size()[1],
            **{k: v for k, v in fm.items() if k not in ("num_real", "num_fake")}}


@torch.no_grad()
def generation_metrics(sample, dataset, n: int, num_classes: int, seed: int = 0, effnet_size: int = EFFNET_SIZE,
                       batch_size: int = 250) -> dict:
    """gFD and KID of ``n`` generated images (balanced classes ``i % num_classes``) against ``n`` held-out images
    of ``dataset`` (evenly spaced; all of them when it has fewer), labelled with the count as
    :mod:`sbt_lib.eval.generation` does.  ``sample(classes, seed)`` returns images in [-1, 1] for a batch of
    class labels; each rank samples its shard, batch ``b`` with the seed (``seed``, rank, ``b``)."""
    rank, world_size = dist.rank_and_world_size()
    if n < world_size:
        raise ValueError(f"{n} samples cannot be shared among {world_size} processes")
    mine = torch.tensor(list(dist.shard(n)), dtype=torch.long)
    fake = torch.cat([sample(mine[i:i + batch_size] % num_classes, (seed * 1_000_003 + rank) * 1_000_003 + i)
                      .float().cpu() for i in range(0, len(mine), batch_size)])
    real_indices = evenly_spaced(len(dataset), n)
    real = dataset.images_at(real_indices[list(dist.shard(len(real_indices)))])
    real_f, extractor = _gathered_features(real, effnet_size)
    fake_f, _ = _gathered_features(fake, effnet_size)
    fm = metrics_from_features(real_f, fake_f, extractor, effnet_size=effnet_size)
    fd_key = "fid" if "fid" in fm else "fd_effnet"
    kid_key = "kid" if "kid" in fm else "kid_effnet"
    return {"gfd": fm[fd_key], "kid": fm[kid_key], "n": len(fake_f), "num_real": len(real_f),
            "feature_space": fm["feature_space"], "processes": world_size,
            "label": f"{'gFID' if fd_key == 'fid' else 'gFD-EffNet'}@{len(fake_f)}"}
