"""The ``cifar10`` data set: the CIFAR-10 PNGs under ``$SBT_DATA/cifar10``, with torchvision's download as a fallback.

CIFAR-10 is the small natural-image benchmark the experiments compare on; read as an image folder at a known
place when it is there, else fetched by torchvision.  Also decides whether ``auto`` can have it.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import weights
from .datasets import ImageDataset, _balanced_subset, data_dir
from .folders import load_folder


def load_cifar10(split: str, image_size: int, rng: np.random.Generator, *,
                 size: int | None = None, root: str | None = None,
                 resize: bool = False) -> ImageDataset:
    """CIFAR-10 from ``<data_dir>/cifar10/{train,test}/<class>/*.png``, else torchvision."""
    if image_size != 32 and not resize:
        raise ValueError(f"cifar10 images are 32x32; got image_size={image_size}. "
                         "Pass resize=True to resize them.")
    folder = data_dir(root) / "cifar10"
    if folder.is_dir():
        return load_folder(folder, split, image_size, rng, size=size, resize=resize,
                           name="cifar10")
    images, targets, classes = _torchvision_cifar10(folder, split)
    if image_size != 32:
        images = _resize_batch(images, image_size)
    if size is not None:
        keep = _balanced_subset(targets, size, rng)
        images, targets = images[torch.from_numpy(keep)], targets[keep]
    return ImageDataset(images, targets, classes, "cifar10", split)


def _torchvision_cifar10(folder: Path, split: str):
    """CIFAR-10 via torchvision's download into ``folder.parent``; explains failures."""
    try:
        from torchvision.datasets import CIFAR10

        ds = CIFAR10(root=str(folder.parent), train=split == "train", download=True)
    except Exception as e:
        raise RuntimeError(
            f"cifar10 not found at {folder.resolve()} and torchvision's download failed "
            f"({type(e).__name__}: {e}). Set SBT_DATA (or root=) to a folder containing "
            "cifar10/{train,test}/<class>/*.png, or give this machine network access "
            "for torchvision's download.") from e
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)
    return images, np.asarray(ds.targets, np.int64), list(ds.classes)


def _fetch_torchvision_cifar10(root: Path) -> str | None:
    """None when torchvision's CIFAR-10 is in ``root`` or downloads there now, else why not.

    The download is only tried when downloads are allowed ($SBT_OFFLINE unset) and
    torchvision's host answers within a second, so an offline machine decides at once.
    """
    from torchvision.datasets import CIFAR10

    try:
        CIFAR10(root=str(root), train=False, download=False)  # verifies the files' checksums
        return None
    except RuntimeError:  # not there (or corrupt)
        pass
    off = weights.offline_reason()
    reason = f"downloads are off: {off}" if off else weights._probe(CIFAR10.url, timeout=1.0)
    if reason:
        return reason
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(weights.download_timeout())  # a stalled transfer fails, not hangs
    try:
        CIFAR10(root=str(root), train=True, download=True)
        return None
    except Exception as e:  # noqa: BLE001 - any failure means "not available", reported in the note
        return f"download failed: {type(e).__name__}: {e}"
    finally:
        socket.setdefaulttimeout(old)


def _resize_batch(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Antialiased bicubic resize of uint8 Nx3xHxW images."""
    out = F.interpolate(images.float(), size=(image_size, image_size), mode="bicubic",
                        antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)
