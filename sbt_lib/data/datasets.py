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
"""

from __future__ import annotations

import functools
import importlib.util
import os
import socket
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .. import weights
from ..batch import Batch
from ..files import REPO, atomic_write, cache_dir, content_key

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
        return make_photos(size or DEFAULT_SIZE[split], split, image_size, rng)
    if name == "shapes":
        return make_shapes(size or DEFAULT_SIZE[split], split, image_size, rng)
    if name == "cifar10":
        return load_cifar10(split, image_size, rng, size=size, root=root, resize=resize)
    if name == "imagenet":
        return load_imagenet(split, image_size, rng, size=size, root=root)
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise ValueError(
            f"unknown dataset {name!r}: not a built-in dataset {DATASETS} and no folder "
            f"at {folder.resolve()}. A folder path is also accepted, laid out as {FOLDER_LAYOUT}")
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


# ----------------------------------------------------------------------------- photos

# Photo name -> (installed package, file inside it).  Only real colour photographs (no
# synthetic, logo or grey images), all shipped in the wheels of declared dependencies, so
# reading them needs no network (scikit-image's other photos are pooch downloads).
PHOTO_FILES = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "chelsea": ("skimage", "data/chelsea.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "immunohistochemistry": ("skimage", "data/ihc.png"),
    "hubble_deep_field": ("skimage", "data/hubble_deep_field.jpg"),
    "retina": ("skimage", "data/retina.jpg"),
    "motorcycle": ("skimage", "data/motorcycle_left.png"),  # left view of the stereo pair
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    "china": ("sklearn", "datasets/images/china.jpg"),  # Summer Palace, Beijing
    "flower": ("sklearn", "datasets/images/flower.jpg"),  # dahlia
}
PHOTOS = tuple(PHOTO_FILES)  # class names, in label order: append new photos at the end
TRAIN_FRACTION = 0.75  # of each photo's longer axis; the remaining 25% is the test region
CROP_SCALE = (0.25, 1.0)  # crop side, as a fraction of the short side of the region


def photo_path(name: str) -> Path:
    """Where the photo ``name`` lies inside its installed package (found without importing it)."""
    package, file = PHOTO_FILES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"photo {name!r} ships with the package {package!r}, which is not "
                                "installed; install the project's dependencies (pip install -e .)")
    path = Path(list(spec.submodule_search_locations)[0]) / file
    if not path.is_file():
        raise FileNotFoundError(f"photo {name!r} not found at {path}: the installed {package!r} "
                                "no longer ships it; reinstall it or drop the photo from PHOTO_FILES")
    return path


def read_photo(name: str) -> np.ndarray:
    """The photo ``name`` as uint8 HxWx3 RGB, read from its package file (no download)."""
    with Image.open(photo_path(name)) as im:
        return np.asarray(im.convert("RGB"))


@functools.lru_cache(maxsize=1)
def _photo_pyramids() -> tuple[list[Image.Image], ...]:
    """Each bundled photo as a list of PIL images, each half the size of the previous."""
    pyramids = []
    for name in PHOTOS:
        levels = [Image.fromarray(read_photo(name))]
        while min(levels[-1].size) >= 32:
            levels.append(levels[-1].reduce(2))  # 2x2 box average: antialiased
        pyramids.append(levels)
    return tuple(pyramids)


def photo_regions(split: str) -> dict[str, tuple[int, int, int, int]]:
    """Box (y0, x0, height, width) of each photo that ``split`` crops are drawn from.

    Each photo is cut across its longer axis: the first 75% is the train region and
    the rest the test region, so the two never share a pixel.
    """
    regions = {}
    for name, levels in zip(PHOTOS, _photo_pyramids()):
        w, h = levels[0].size
        long_axis = h if h >= w else w
        cut = int(round(TRAIN_FRACTION * long_axis))
        lo, hi = (0, cut) if split == "train" else (cut, long_axis)
        regions[name] = (lo, 0, hi - lo, w) if h >= w else (0, lo, h, hi - lo)
    return regions


def make_photos(n: int, split: str, image_size: int, rng: np.random.Generator) -> ImageDataset:
    """``n`` square crops of the bundled photos (label = photo), balanced across photos.

    Crop side is uniform in ``CROP_SCALE`` x the region's short side, position uniform
    in the region, resized with antialiased bicubic; train crops are flipped at random.
    """
    regions = np.array(list(photo_regions(split).values()))  # P x (y0, x0, h, w)
    labels = rng.permutation(np.arange(n) % len(PHOTOS))
    y0, x0, h, w = regions[labels].T
    short = np.minimum(h, w)
    side = np.clip(np.round(rng.uniform(*CROP_SCALE, n) * short), 1, short).astype(np.int64)
    y0 = y0 + rng.integers(0, h - side + 1)
    x0 = x0 + rng.integers(0, w - side + 1)
    flip = rng.random(n) < 0.5 if split == "train" else np.zeros(n, bool)

    pyramids = _photo_pyramids()
    out = np.empty((n, image_size, image_size, 3), np.uint8)
    for i in range(n):
        # Read from the smallest pyramid level still >= 2x the output size: cheap and sharp.
        levels = pyramids[labels[i]]
        k = int(np.clip(np.floor(np.log2(side[i] / (2 * image_size))), 0, len(levels) - 1))
        s = 2.0 ** k
        box = (x0[i] / s, y0[i] / s, (x0[i] + side[i]) / s, (y0[i] + side[i]) / s)
        out[i] = np.asarray(levels[k].resize((image_size, image_size), Image.BICUBIC, box=box))
    out[flip] = out[flip, :, ::-1]
    boxes = np.stack([labels, y0, x0, side], axis=1)
    return ImageDataset(out.transpose(0, 3, 1, 2), labels, PHOTOS, "photos", split, boxes=boxes)


# ----------------------------------------------------------------------------- shapes

SHAPE_FACTORS = {"global": ["shape", "colour", "position", "size"],
                 "local": ["texture", "frequency", "orientation"]}
FACTOR_CLASSES = {
    "shape": ["circle", "square", "triangle", "diamond"],
    "colour": ["red", "yellow", "green", "cyan", "blue", "magenta"],
    "position": ["top-left", "top", "top-right", "left", "centre", "right",
                 "bottom-left", "bottom", "bottom-right"],
    "size": ["small", "medium", "large"],
    "texture": ["stripes", "checker", "dots", "noise"],
    "frequency": ["low", "mid", "high"],
    "orientation": ["0", "45", "90", "135"],  # degrees
}
COLOURS = np.array([[0.95, 0.10, 0.10], [0.95, 0.90, 0.10], [0.10, 0.80, 0.10],
                    [0.10, 0.85, 0.90], [0.15, 0.25, 0.95], [0.90, 0.10, 0.90]], np.float32)
SIZES = (0.10, 0.15, 0.20)  # shape "radius" as a fraction of the image side (+-8% jitter)
CYCLES = (2.0, 4.0, 6.0)  # texture periods per image side, across the pattern axis
MARGIN = 0.2  # shape centres lie in [MARGIN, 1 - MARGIN] of the image, cut 3x3
NOISE_GRID = 16  # value-noise lattice size per image


def sample_shape_factors(n: int, rng) -> dict[str, np.ndarray]:
    """Seeded factors for ``n`` shapes images; each factor exactly balanced (+-1)."""
    rng = np.random.default_rng(rng)
    return {k: rng.permutation(np.arange(n) % len(v)) for k, v in FACTOR_CLASSES.items()}


def render_shapes(factors: dict, image_size: int, rng, chunk: int = 1024) -> np.ndarray:
    """Render shapes images (uint8 Nx3xHxW) for the given factor indices.

    Nuisances (position jitter, size jitter, texture phase, grey levels, noise) come
    from ``rng`` (seed or Generator) and do not depend on the factor values, so the
    same seed with one factor changed gives the same image with only that changed.
    """
    rng = np.random.default_rng(rng)
    f = {k: np.asarray(v, np.int64) for k, v in factors.items()}
    n = len(f["shape"])
    nuisance = {  # drawn in a fixed order with fixed shapes
        "jitter": rng.uniform(-0.4, 0.4, (n, 2)).astype(np.float32),
        "scale": rng.uniform(0.92, 1.08, n).astype(np.float32),
        "phase": rng.random((n, 2)).astype(np.float32),
        "grey": rng.uniform(0.2, 0.45, n).astype(np.float32),
        "contrast": rng.uniform(0.2, 0.35, n).astype(np.float32),
        "tint": rng.uniform(-0.04, 0.04, (n, 3)).astype(np.float32),
        "noise": rng.random((n, NOISE_GRID, NOISE_GRID)).astype(np.float32),
    }
    out = np.empty((n, 3, image_size, image_size), np.uint8)
    for lo in range(0, n, chunk):
        part = slice(lo, lo + chunk)
        rgb = _render_chunk({k: v[part] for k, v in f.items()},
                            {k: v[part] for k, v in nuisance.items()}, image_size)
        out[part] = np.round(rgb * 255).astype(np.uint8).transpose(0, 3, 1, 2)
    return out


def make_shapes(n: int, split: str, image_size: int, rng: np.random.Generator) -> ImageDataset:
    """``n`` shapes images with their factors; target = the ``shape`` factor."""
    factors = sample_shape_factors(n, rng)
    images = render_shapes(factors, image_size, rng)
    return ImageDataset(images, factors["shape"], FACTOR_CLASSES["shape"], "shapes", split,
                        factors=factors)


def _render_chunk(f: dict, nz: dict, size: int) -> np.ndarray:
    """Float NxHxWx3 in [0, 1]: grey texture, then the shape composited on top."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size  # pixel centres, image units
    y, x = coords[None, :, None], coords[None, None, :]
    background = _texture(f, nz, x - 0.5, y - 0.5, size)[..., None]  # N x H x W x 1
    background = nz["grey"][:, None, None, None] + nz["contrast"][:, None, None, None] * background
    background = background + nz["tint"][:, None, None, :]

    radius = np.asarray(SIZES, np.float32)[f["size"]] * nz["scale"]
    cell = (1 - 2 * MARGIN) / 3
    row, col = np.divmod(f["position"], 3)
    cy = MARGIN + (row + 0.5 + nz["jitter"][:, 0]) * cell
    cx = MARGIN + (col + 0.5 + nz["jitter"][:, 1]) * cell
    r = radius[:, None, None]
    px, py = np.broadcast_arrays((x - cx[:, None, None]) / r, (y - cy[:, None, None]) / r)
    sdf = np.empty(px.shape, np.float32)  # signed distance, in units of the radius
    for k, sd in enumerate(_SHAPE_SDFS):
        m = f["shape"] == k
        sdf[m] = sd(px[m], py[m])
    alpha = np.clip(0.5 - sdf * r * size, 0, 1)[..., None]  # 1-pixel smooth edge
    return np.clip(background * (1 - alpha) + COLOURS[f["colour"]][:, None, None] * alpha, 0, 1)


# Signed distance functions of unit-radius shapes (areas all ~pi), y pointing down.
_SHAPE_SDFS = (
    lambda x, y: np.hypot(x, y) - 1,                                  # circle
    lambda x, y: np.maximum(abs(x), abs(y)) - 0.886,                  # square
    lambda x, y: np.maximum.reduce([y, 0.866 * x - 0.5 * y,           # triangle,
                                    -0.866 * x - 0.5 * y]) - 0.778,   # apex up
    lambda x, y: (abs(x) + abs(y) - 1.253) / np.sqrt(2),              # diamond
)


def _texture(f: dict, nz: dict, x, y, size: int) -> np.ndarray:
    """Texture value NxHxW in [0, 1], in coordinates rotated by the orientation factor.

    Checker, dots and noise repeat half as often along the second axis, so that
    every orientation (0/45/90/135) gives a visibly different pattern.
    """
    theta = np.deg2rad(45 * f["orientation"]).astype(np.float32)[:, None, None]
    cycles = np.asarray(CYCLES, np.float32)[f["frequency"]][:, None, None]
    u = x * np.cos(theta) + y * np.sin(theta)
    v = -x * np.sin(theta) + y * np.cos(theta)
    a = cycles * u + nz["phase"][:, 0, None, None]  # pattern coordinates: 1 unit = 1 period
    b = cycles / 2 * v + nz["phase"][:, 1, None, None]
    to_px = size / cycles  # pixels per period along a

    out = np.empty(a.shape, np.float32)
    kind = f["texture"]
    m = kind == 0  # stripes
    out[m] = 0.5 + 0.5 * np.sin(2 * np.pi * a[m])
    m = kind == 1  # checker, edges smoothed over one pixel
    am, bm, px = a[m], b[m], to_px[m]
    parity = (np.floor(am) + np.floor(bm)) % 2
    edge = np.minimum(abs(am - np.round(am)), 2 * abs(bm - np.round(bm))) * px
    out[m] = 0.5 + (parity - 0.5) * np.clip(2 * edge, 0, 1)
    m = kind == 2  # dots on a rectangular lattice
    am, bm, px = a[m], b[m], to_px[m]
    dist = np.hypot(am - np.floor(am) - 0.5, 2 * (bm - np.floor(bm) - 0.5)) * px
    out[m] = np.clip(0.3 * px - dist + 0.5, 0, 1)
    m = kind == 3  # smooth value noise, stretched to the full [0, 1] range
    noise = _value_noise(a[m], b[m], nz["noise"][m])
    low, high = noise.min(axis=(1, 2), keepdims=True), noise.max(axis=(1, 2), keepdims=True)
    out[m] = (noise - low) / np.maximum(high - low, 1e-6)
    return out


def _value_noise(a, b, grid) -> np.ndarray:
    """Smoothly interpolated random lattice values (per-image ``grid``) at (a, b)."""
    a, b = a + NOISE_GRID / 2, b + NOISE_GRID / 2  # |a|, |b| < 6 by construction
    ia, ib = np.floor(a).astype(np.int64), np.floor(b).astype(np.int64)
    ta, tb = a - ia, b - ib
    ta, tb = ta * ta * (3 - 2 * ta), tb * tb * (3 - 2 * tb)  # smoothstep
    n = np.arange(len(grid))[:, None, None]
    g = lambda da, db: grid[n, ia + da, ib + db]  # noqa: E731
    top = g(0, 0) * (1 - tb) + g(0, 1) * tb
    bottom = g(1, 0) * (1 - tb) + g(1, 1) * tb
    return top * (1 - ta) + bottom * ta


# ----------------------------------------------------------------------------- folders

def data_dir(root: str | None = None) -> Path:
    """Folder holding the datasets: ``root``, else $SBT_DATA, else ``<repo>/data``.

    A relative $SBT_DATA is taken relative to the repository, not the current
    directory, so notebooks in subfolders find the same data.
    """
    path = Path(root or os.environ.get("SBT_DATA") or REPO / "data").expanduser()
    return (path if root or path.is_absolute() else REPO / path).resolve()


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


def _save_atomic(path: Path, **arrays) -> None:
    """Write an .npz atomically (:func:`sbt_lib.files.atomic_write`); warn if it cannot."""

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
            np.savez(f, **arrays)

    try:
        atomic_write(path, write)
    except OSError as e:
        warnings.warn(f"could not write cache {path}: {e}")


def _resize_batch(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Antialiased bicubic resize of uint8 Nx3xHxW images."""
    out = F.interpolate(images.float(), size=(image_size, image_size), mode="bicubic",
                        antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


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
