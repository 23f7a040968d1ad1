"""Datasets for the tokenizer experiments, all held in memory as uint8 tensors.

Three built-in sources, a fallback choice between two of them, and any image folder:

* ``photos``  -- random crops (with scale jitter) of the real colour photographs that
  ship inside installed packages (scikit-image, scikit-learn, matplotlib; see
  ``PHOTO_FILES``).  Read from the package folders, never downloaded, so every machine
  has them.  Train and test crops come from disjoint regions of each photo (see
  ``photo_regions``), so no test crop shares a pixel with any training crop.
* ``shapes``  -- synthetic images (a flat-coloured shape on a grey textured
  background) with ground-truth factors, global (shape, colour, position, size)
  and local (texture, frequency, orientation), for linear probes.
* ``cifar10`` -- the CIFAR-10 PNGs at ``$SBT_DATA/cifar10/{train,test}/<class>/``,
  with torchvision's download as a fallback.
* ``auto``    -- ``cifar10`` when it can be had, else ``photos`` with a warning saying
  why (see ``resolve_dataset_name``); the data set's ``name`` is the one used.
* ``imagenet`` -- ILSVRC-2012 at ``$SBT_DATA/imagenet/{train,val}/<wnid>/*.JPEG`` (the ``paper`` scale), read
  lazily (:class:`LazyImageFolder`: decoded batch by batch, centre-cropped and resized), since 1.28M images
  at 256 px do not fit in memory; ``test`` is its ``val`` split.
* any other name is read as a folder laid out as ``<path>/{train,test}/<class>/*.png``
  (cifar10 is just such a folder at a known place).  Decoding is slow, so folder
  datasets are cached as ``.npz`` under ``$SBT_CACHE`` (default ``<repo>/data/cache``).

Conventions: images are float32 in [-1, 1], shape 3xHxW (Bx3xHxW in batches), but are
stored as uint8 to save memory and converted on access.  Everything random takes an
explicit seed (numpy ``default_rng`` / ``torch.Generator``), never global RNG state;
the test split draws from a different stream than the train split.

This module is the core: the dataset classes (:class:`ImageDataset`, :class:`LazyImageFolder`), the helpers the
sources share, and :func:`load_dataset`, which picks a source by name.  Each source lives in its own module of
``sbt_lib.data``: ``photos``, ``shapes``, ``cifar10``, ``folders`` and ``imagenet``.
"""

from __future__ import annotations

import functools
import os
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..batch import Batch
from ..files import REPO, content_key

DATASETS = ("photos", "shapes", "cifar10", "imagenet", "auto")
SPLITS = ("train", "test")
DEFAULT_SIZE = {"train": 10_000, "test": 1_000}  # photos and shapes
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
FOLDER_LAYOUT = "<folder>/{train,test}/<class>/*.png (or .jpg, .jpeg, .bmp, .webp)"


# ----------------------------------------------------------------------------- tensors

def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounded and clamped (inverse of ``to_float``)."""
    return ((images.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def dataset_fingerprint(dataset: "ImageDataset") -> dict:
    """What identifies a data set's contents: its name, split, size and a hash of its pixels (of its file
    list, for a :class:`LazyImageFolder`).

    Caches keyed by it (features, trained 2D VAEs) are recomputed when the images change."""
    if isinstance(dataset, LazyImageFolder):
        return dataset.fingerprint()
    digest = content_key(dataset.images)
    return {"name": dataset.name, "split": dataset.split, "n": len(dataset),
            "shape": list(dataset.images.shape[1:]), "sha1": digest}


class ImageDataset(Dataset):
    """In-memory dataset: uint8 ``images`` Nx3xHxW, int64 ``targets`` N, class names.

    ``factors`` (shapes only) maps factor name -> int64 tensor N; ``boxes`` (photos
    only) is an int64 Nx4 tensor of crop boxes (photo, y0, x0, side) in source pixels.
    """

    def __init__(self, images, targets, classes, name, split, factors=None, boxes=None):
        self.images = torch.as_tensor(images, dtype=torch.uint8).contiguous()
        self.targets = torch.as_tensor(targets, dtype=torch.int64)
        assert self.images.ndim == 4 and self.images.shape[1] == 3, self.images.shape
        assert len(self.targets) == len(self.images)
        self.classes = list(classes)
        self.name, self.split = name, split
        self.factors = None if factors is None else {
            k: torch.as_tensor(v, dtype=torch.int64) for k, v in factors.items()}
        self.boxes = None if boxes is None else torch.as_tensor(boxes, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        """(float image 3xHxW in [-1, 1], int target)."""
        return to_float(self.images[i]), int(self.targets[i])

    def images_at(self, indices: torch.Tensor) -> torch.Tensor:
        """The images at ``indices`` as floats B×3×H×W in [-1, 1] (a vectorised gather)."""
        return to_float(self.images[torch.as_tensor(indices, dtype=torch.int64)])

    def get_batch(self, indices: torch.Tensor, step: int = 0) -> Batch:
        """The images at ``indices`` with their targets and indices, as the :class:`Batch` of training
        step ``step`` (what the training engine and the objective read)."""
        indices = torch.as_tensor(indices, dtype=torch.int64)
        return Batch(self.images_at(indices), self.targets[indices], indices, step)

    def __repr__(self) -> str:
        n, _, h, w = self.images.shape
        return (f"ImageDataset({self.name!r}, split={self.split!r}, n={n}, "
                f"size={h}x{w}, classes={len(self.classes)})")


# ----------------------------------------------------------------------------- entry point

def load_dataset(name: str, split: str = "train", image_size: int = 32, *, seed: int = 0,
                 size: int | None = None, root: str | None = None,
                 resize: bool = False) -> ImageDataset:
    """Load a built-in dataset (``DATASETS``) or an image folder by path.

    ``size``: number of images to generate (photos, shapes; default 10,000 train /
    1,000 test), or a seeded class-balanced subset of a folder dataset (default all).
    ``root``: for cifar10 (and auto), the data folder holding ``cifar10/`` (overrides $SBT_DATA).
    ``resize``: folder datasets only; centre-crop and resize images that are not
    ``image_size`` square instead of raising.  ``auto`` sets it for cifar10 when
    ``image_size`` is not 32, since the caller cannot know which data set it will get.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if image_size < 1 or (size is not None and size < 1):
        raise ValueError(f"image_size and size must be positive, got {image_size}, {size}")
    if name == "auto":
        name, _ = resolve_dataset_name(name, root=root)  # warns when it falls back
        resize = resize or (name == "cifar10" and image_size != 32)  # True at 32 px: another cache key
    rng = np.random.default_rng([seed, SPLITS.index(split)])  # test: its own stream
    if name == "photos":
        from .photos import make_photos

        return make_photos(size or DEFAULT_SIZE[split], split, image_size, rng)
    if name == "shapes":
        from .shapes import make_shapes

        return make_shapes(size or DEFAULT_SIZE[split], split, image_size, rng)
    if name == "cifar10":
        from .cifar10 import load_cifar10

        return load_cifar10(split, image_size, rng, size=size, root=root, resize=resize)
    if name == "imagenet":
        from .imagenet import load_imagenet

        return load_imagenet(split, image_size, rng, size=size, root=root)
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise ValueError(
            f"unknown dataset {name!r}: not a built-in dataset {DATASETS} and no folder "
            f"at {folder.resolve()}. A folder path is also accepted, laid out as {FOLDER_LAYOUT}")
    from .folders import load_folder

    return load_folder(folder, split, image_size, rng, size=size, resize=resize, name=name)


def resolve_dataset_name(name: str, *, root: str | None = None) -> tuple[str, str | None]:
    """The data set that ``name`` stands for, and a note saying why if it fell back.

    Only ``auto`` is resolved; any other name comes back as is, with no note.  ``auto`` is
    ``cifar10`` when CIFAR-10 can be had: the folder ``data_dir(root)/cifar10/{train,test}``
    exists, or torchvision's copy is in ``data_dir(root)`` or downloads there now (only
    tried when the network answers).  Otherwise it is ``photos``, and the note, also
    issued as a warning, says where CIFAR-10 was looked for and how to supply it.
    Record both in a run's metrics so it says which data it trained on, and why.
    """
    if name != "auto":
        return name, None
    folder = data_dir(root) / "cifar10"
    if all((folder / split).is_dir() for split in SPLITS):
        return "cifar10", None
    from .cifar10 import _fetch_torchvision_cifar10

    reason = _fetch_torchvision_cifar10(folder.parent)
    if reason is None:
        return "cifar10", None
    note = (f"dataset 'auto': CIFAR-10 not found, so the built-in 'photos' are used instead. "
            f"Looked for {folder}/{{train,test}}/<class>/*.png and for torchvision's copy in "
            f"{folder.parent / 'cifar-10-batches-py'}; downloading it was not possible ({reason}). "
            "To use CIFAR-10, set SBT_DATA (or root=) to a folder holding "
            "cifar10/{train,test}/<class>/*.png, or allow network access (and leave SBT_OFFLINE "
            "unset) for torchvision's download.")
    warnings.warn(note, stacklevel=2)
    return "photos", note


# ----------------------------------------------------------------------------- shared by the sources

def data_dir(root: str | None = None) -> Path:
    """Folder holding the datasets: ``root``, else $SBT_DATA, else ``<repo>/data``.

    A relative $SBT_DATA is taken relative to the repository, not the current
    directory, so notebooks in subfolders find the same data.
    """
    path = Path(root or os.environ.get("SBT_DATA") or REPO / "data").expanduser()
    return (path if root or path.is_absolute() else REPO / path).resolve()


class LazyImageFolder(Dataset):
    """An image folder too large for memory: the files are decoded when a batch asks for them (a thread pool,
    centre crop and bicubic resize to ``image_size``, as ADM's ImageNet preprocessing), with the interface of
    :class:`ImageDataset` that training and evaluation use (``images_at``, ``get_batch``, ``targets``,
    ``classes``).  :meth:`prefetch` decodes a batch in the background: the training engine asks for the next
    step's batch (a pure function of the step) while the current step computes."""

    def __init__(self, files: list[Path], targets: np.ndarray, classes: list[str], name: str, split: str,
                 image_size: int, workers: int = 16):
        self.files, self.classes, self.name, self.split = list(files), list(classes), name, split
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
        self.image_size, self.workers = image_size, workers
        self._last: tuple = ((), None)
        self._ahead: dict[tuple, Future] = {}
        self._pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        return self.images_at(torch.tensor([i]))[0], int(self.targets[i])

    def _decoders(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        """(the pool that decodes files, the one thread that runs prefetches), created on first use."""
        if self._pools is None:
            self._pools = ThreadPoolExecutor(self.workers), ThreadPoolExecutor(1)
        return self._pools

    def _decode(self, key: tuple) -> torch.Tensor:
        decode = functools.partial(_decode, image_size=self.image_size, resize=True)
        arrays = list(self._decoders()[0].map(decode, [self.files[i] for i in key]))
        return to_float(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))

    def prefetch(self, indices: torch.Tensor) -> None:
        """Start decoding the images at ``indices`` in the background; :meth:`images_at` picks them up."""
        key = tuple(int(i) for i in indices)
        if key != self._last[0] and key not in self._ahead:
            self._ahead[key] = self._decoders()[1].submit(self._decode, key)

    def images_at(self, indices: torch.Tensor) -> torch.Tensor:
        """The images at ``indices``: prefetched, or decoded now (the last call's are kept: a step's frozen
        teachers ask for the batch it has just drawn)."""
        key = tuple(int(i) for i in indices)
        if key != self._last[0]:
            ahead = self._ahead.pop(key, None)
            self._last = (key, ahead.result() if ahead is not None else self._decode(key))
        return self._last[1]

    def get_batch(self, indices: torch.Tensor, step: int = 0) -> Batch:
        indices = torch.as_tensor(indices, dtype=torch.int64)
        return Batch(self.images_at(indices), self.targets[indices], indices, step)

    def fingerprint(self) -> dict:
        names = "\n".join(str(f) for f in self.files)
        return {"name": self.name, "split": self.split, "n": len(self), "shape": [3, self.image_size, self.image_size],
                "sha1": content_key(names)}

    def __repr__(self) -> str:
        return (f"LazyImageFolder({self.name!r}, split={self.split!r}, n={len(self)}, "
                f"size={self.image_size}x{self.image_size}, classes={len(self.classes)})")


def _list_images(folder: Path, split: str):
    """Sorted image paths, their class indices and the class names of one split."""
    split_dir = folder / split
    if not split_dir.is_dir():
        has_classes = folder.is_dir() and any(
            p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.glob("*/*"))
        hint = (f"{folder} seems to hold class folders directly; move them into "
                f"{folder}/train and {folder}/test. " if has_classes else "")
        raise FileNotFoundError(
            f"no {split!r} folder at {split_dir.resolve()}. {hint}"
            f"Expected layout: {FOLDER_LAYOUT}")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    files, targets = [], []
    for index, cls in enumerate(classes):
        paths = sorted(p for p in (split_dir / cls).iterdir()
                       if p.suffix.lower() in IMAGE_EXTENSIONS)
        files += paths
        targets += [index] * len(paths)
    if not files:
        raise FileNotFoundError(
            f"no images in {split_dir.resolve()}. Expected layout: {FOLDER_LAYOUT}")
    return files, np.array(targets, np.int64), classes


def _decode(path: Path, image_size: int, resize: bool) -> np.ndarray:
    """One image as uint8 HxWx3; centre-cropped and resized if ``resize``."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")  # also loads: grey, palette and RGBA all become RGB
    except Exception as e:
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
    if im.size != (image_size, image_size):
        if not resize:
            raise ValueError(
                f"image {path} is {im.size[0]}x{im.size[1]}, expected "
                f"{image_size}x{image_size}: pass resize=True to centre-crop and resize, "
                "or resize the images")
        w, h = im.size
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        im = im.resize((image_size, image_size), Image.BICUBIC, box=box)
    return np.asarray(im)


def _balanced_subset(targets: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``size`` items, drawn at random and round-robin over classes."""
    if size > len(targets):
        raise ValueError(f"size={size} but only {len(targets)} images are available")
    order = rng.permutation(len(targets))
    labels = targets[order]
    rank = np.empty(len(order), np.int64)  # position of each item within its class
    for c in np.unique(labels):
        rank[labels == c] = np.arange(np.sum(labels == c))
    return np.sort(order[np.lexsort((labels, rank))[:size]])
