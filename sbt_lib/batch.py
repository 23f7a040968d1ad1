"""Training batches: what one step sees (:class:`Batch`) and which images it draws (:func:`batch_indices`).

The batch of step ``t`` is a pure function of (data set size, batch size, seed, t), so a resumed run
draws exactly the batches a straight run would; under data parallelism each rank takes its shard of it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """One training batch: images B×3×H×W in [-1, 1], their targets, their indices in the data set
    (what per-image caches, such as teacher features or 2D latents, are looked up by), and the
    training step that drew it (what step-dependent terms, such as a GAN's start step, read)."""

    images: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor
    step: int = 0

    def to(self, device) -> "Batch":
        return Batch(self.images.to(device, non_blocking=True), self.targets.to(device, non_blocking=True),
                     self.indices, self.step)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def batch_indices(n: int, batch_size: int, step: int, seed: int, rank: int = 0, world_size: int = 1) -> torch.LongTensor:
    """Indices of the batch at training ``step`` (0-based): a pure function of its args.

    Each epoch is a seeded permutation of range(n) and consecutive batches walk
    through it; a batch crossing the end of an epoch continues into the next one's
    permutation, so every batch is full and every epoch shows each index once.

    Under data parallelism the global batch stays the same and ``rank`` takes its own contiguous
    shard of it (``batch_size / world_size`` indices), so the ranks' shards of a step are disjoint,
    cover the global batch, and the run does not depend on the world size.
    """
    if n < 1 or batch_size < 1 or step < 0:
        raise ValueError(f"need n >= 1, batch_size >= 1, step >= 0; got {n}, {batch_size}, {step}")
    if world_size < 1 or not 0 <= rank < world_size or batch_size % world_size:
        raise ValueError(f"rank {rank} of world size {world_size} cannot take an equal shard of a batch of {batch_size}")
    if world_size > 1:
        shard = batch_size // world_size
        return batch_indices(n, batch_size, step, seed)[rank * shard:(rank + 1) * shard]
    epoch, offset = divmod(step * batch_size, n)
    parts, missing = [], batch_size
    while missing > 0:
        part = _epoch_permutation(n, seed, epoch)[offset:offset + missing]
        parts.append(part)
        missing -= len(part)
        epoch, offset = epoch + 1, 0
    return torch.cat(parts)  # a copy: the cached permutation stays untouched


def inference_batch_size(device: torch.device | str | None = None) -> int:
    """Images per forward when a frozen network runs over a whole set: 250 on a GPU; 64 on a CPU, where a
    smaller batch keeps its activations in the CPU's cache, so each image costs less time."""
    return 250 if torch.device(device or "cpu").type == "cuda" else 64


@torch.no_grad()
def map_batches(fn, images: torch.Tensor, batch_size: int | None = None, device: torch.device | str | None = None):
    """``fn`` over ``images`` in batches of ``batch_size`` (default :func:`inference_batch_size` of the device)
    on ``device``, outputs gathered on the CPU in float32: a tensor, or a tuple / dict of tensors when ``fn``
    returns one (concatenated entry by entry).  Inference over a whole evaluation set without holding its
    activations at once."""
    batch_size = batch_size or inference_batch_size(device if device is not None else images.device)
    outs = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        outs.append(fn(x.to(device) if device is not None else x))

    def cpu(t: torch.Tensor) -> torch.Tensor:
        return t.float().cpu()

    first = outs[0]
    if isinstance(first, dict):
        return {k: torch.cat([cpu(o[k]) for o in outs]) for k in first}
    if isinstance(first, tuple):
        return tuple(torch.cat([cpu(o[j]) for o in outs]) for j in range(len(first)))
    return torch.cat([cpu(o) for o in outs])
