"""Per-image features of a fixed data set under a frozen encoder, computed once and cached.

Frozen networks in the objective (the 2D VAE of the OT term, the REPA teachers) see the same
training images again and again; their outputs never change.  :class:`FeatureCache` runs the
encoder over the whole data set once (batched, with a progress bar), keeps the result in memory,
and stores it on disk as safetensors, keyed by the encoder's name and a hash of the images, so a
second run, or a second notebook, loads it instantly.  A training step then looks its batch up by
:attr:`~sbt_lib.batch.Batch.indices` instead of running the encoder.

Features are stored in float16 by default (half the memory; the alignment losses normalise them
anyway) and returned as float32.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..batch import inference_batch_size
from ..files import atomic_write, cache_dir, content_key
from .datasets import dataset_fingerprint


class FeatureCache:
    """``encoder(images) -> B×…`` over every image of ``dataset``, indexed by data-set index.

    ``name`` identifies the encoder *and its weights and settings* (e.g. ``"vae2d-3f2a…"`` or
    ``"effnet_lite0-64px-stage3"``): two encoders must not share a name.  ``folder=None`` uses
    ``<cache>/features``; ``folder=False`` keeps the features in memory only.  ``batch_size``: images per
    forward (default :func:`~sbt_lib.batch.inference_batch_size` of ``device``); it does not change the features.
    """

    def __init__(self, encoder: Callable[[torch.Tensor], torch.Tensor], dataset, name: str, *,
                 batch_size: int | None = None, dtype: torch.dtype = torch.float16,
                 folder: str | Path | None | bool = None, device: str | torch.device = "cpu", progress: bool = True):
        self.name, self.dataset = name, dataset
        spec = json.dumps({"encoder": name, "data": dataset_fingerprint(dataset), "dtype": str(dtype)}, sort_keys=True)
        key = content_key(spec)
        folder = None if folder is False else Path(folder or cache_dir() / "features")
        self.path = folder / f"{_safe(name)}-{key}.safetensors" if folder is not None else None
        if self.path is not None and self.path.exists():
            self.features = load_file(str(self.path))["features"]
        else:
            self.features = self._compute(encoder, batch_size, dtype, torch.device(device), progress)
            if self.path is not None:
                atomic_write(self.path, lambda tmp: save_file({"features": self.features}, tmp,
                                                                  metadata={"spec": spec}))

    @torch.no_grad()
    def _compute(self, encoder, batch_size, dtype, device, progress) -> torch.Tensor:
        n = len(self.dataset)
        batch_size = batch_size or inference_batch_size(device)
        chunks = []
        for start in tqdm(range(0, n, batch_size), desc=f"features {self.name}", disable=not progress,
                          mininterval=1.0):
            images = self.dataset.images_at(torch.arange(start, min(start + batch_size, n))).to(device)
            chunks.append(encoder(images).to("cpu", dtype))
        return torch.cat(chunks).contiguous()

    def __len__(self) -> int:
        return len(self.features)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one image's features."""
        return tuple(self.features.shape[1:])

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        """The features of the images at ``indices`` (a LongTensor), as float32."""
        return self.features[torch.as_tensor(indices, dtype=torch.int64).cpu()].float()


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


class OnlineFeatures(FeatureCache):
    """A :class:`FeatureCache` that caches nothing: for a data set too large for its features to be kept
    (ImageNet at the paper scale: DINOv2-B features of 1.28M images, pooled to 64 tokens, would take 126 GB in
    float16).  The encoder runs under ``no_grad`` on ``device`` over the images of the indices a step asks
    for (a :class:`~sbt_lib.data.datasets.LazyImageFolder` hands back the batch it has just decoded)."""

    def __init__(self, encoder: Callable[[torch.Tensor], torch.Tensor], dataset, name: str, *,
                 device: str | torch.device = "cpu", **ignored):
        self.name, self.dataset, self.path = name, dataset, None
        self.encoder, self.device = encoder, torch.device(device)
        self._shape = tuple(self[torch.tensor([0])].shape[1:])

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @torch.no_grad()
    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        images = self.dataset.images_at(torch.as_tensor(indices, dtype=torch.int64).cpu()).to(self.device)
        return self.encoder(images).float()
