"""The ``imagenet`` data set: ILSVRC-2012 under ``$SBT_DATA/imagenet/{train,val}``, read lazily.

The ``paper`` scale trains on it; it is far too large to hold in memory, so it is read as a
:class:`~sbt_lib.data.datasets.LazyImageFolder` (decoded batch by batch).  ``test`` is its ``val`` split.
"""

from __future__ import annotations

import os

import numpy as np

from .datasets import LazyImageFolder, _balanced_subset, _list_images, data_dir


IMAGENET_LAYOUT = "imagenet/{train,val}/<wnid>/*.JPEG (ILSVRC-2012: 1000 class folders such as n01440764 in each split)"


def load_imagenet(split: str, image_size: int, rng: np.random.Generator, *, size: int | None = None,
                  root: str | None = None) -> "LazyImageFolder":
    """ImageNet from ``<data_dir>/imagenet/{train,val}`` as a :class:`LazyImageFolder` (``test`` reads ``val``)."""
    folder = data_dir(root) / "imagenet"
    split_dir = folder / ("val" if split == "test" else split)
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"ImageNet not found: no folder {split_dir}. The paper scale reads $SBT_DATA/{IMAGENET_LAYOUT}. "
            f"Extract ILSVRC-2012 there (the validation images sorted into class folders, as the usual "
            f"valprep.sh does), or set SBT_DATA to the folder that holds imagenet/. $SBT_DATA is now "
            f"{os.environ.get('SBT_DATA', '(unset)')}.")
    files, targets, classes = _list_images(folder, split_dir.name)
    if size is not None:
        keep = _balanced_subset(targets, size, rng)
        files, targets = [files[i] for i in keep], targets[keep]
    return LazyImageFolder(files, targets, classes, "imagenet", split, image_size)
