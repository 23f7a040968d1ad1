"""Image-folder data sets: any folder laid out as ``<folder>/{train,test}/<class>/*``, held in memory.

Lets the experiments run on any labelled image collection (cifar10 is just such a folder at a known place).
Decoding is slow, so a folder is decoded once and cached as ``.npz`` under ``$SBT_CACHE``.
"""

from __future__ import annotations

import functools
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..files import atomic_write, cache_dir, content_key
from .datasets import ImageDataset, _balanced_subset, _decode, _list_images


def load_folder(folder: Path, split: str, image_size: int, rng: np.random.Generator, *,
                size: int | None = None, resize: bool = False,
                name: str | None = None) -> ImageDataset:
    """Image folder ``<folder>/<split>/<class>/*``, decoded once and cached as .npz.

    With ``size``, a seeded class-balanced subset: taken from the full cache if there
    is one, otherwise only those files are decoded (and not cached).
    """
    files, targets, classes = _list_images(Path(folder), split)
    keep = None if size is None else _balanced_subset(targets, size, rng)
    cache = cache_dir() / _cache_name(Path(folder), split, image_size, resize, files)
    if cache.exists():
        with np.load(cache) as z:
            images = z["images"]
        images = images if keep is None else images[keep]
    elif keep is None:
        images = _decode_all(files, image_size, resize)
        _save_atomic(cache, images=images, targets=targets, classes=np.array(classes))
    else:
        images = _decode_all([files[i] for i in keep], image_size, resize)
    targets = targets if keep is None else targets[keep]
    return ImageDataset(torch.from_numpy(images), targets, classes, name or str(folder), split)



def _cache_name(folder: Path, split: str, image_size: int, resize: bool, files) -> str:
    """Cache file name; the hash covers the source path, split, size and file list."""
    key = "\n".join([str(folder.resolve()), split, str(image_size), str(resize),
                     str(len(files))] + [str(p.relative_to(folder)) for p in files])
    digest = content_key(key)
    return f"{folder.resolve().name}-{split}-{image_size}px-{len(files)}-{digest}.npz"


def _decode_all(files, image_size: int, resize: bool) -> np.ndarray:
    """Decode images to uint8 Nx3xHxW with a progress bar, a few files at a time."""
    decode = functools.partial(_decode, image_size=image_size, resize=resize)
    with ThreadPoolExecutor(max_workers=4) as pool:
        images = list(tqdm(pool.map(decode, files, chunksize=64), total=len(files),
                           desc=f"decoding {Path(files[0]).parents[1]}", unit="img",
                           disable=len(files) < 1000))
    return np.stack(images).transpose(0, 3, 1, 2).copy()



def _save_atomic(path: Path, **arrays) -> None:
    """Write an .npz atomically (:func:`sbt_lib.files.atomic_write`); warn if it cannot."""

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
            np.savez(f, **arrays)

    try:
        atomic_write(path, write)
    except OSError as e:
        warnings.warn(f"could not write cache {path}: {e}")
