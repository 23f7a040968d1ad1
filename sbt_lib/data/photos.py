"""The built-in ``photos`` data set: square crops of real colour photographs that ship inside installed packages.

Every machine has them (they are read from the package folders, never downloaded), so the experiments have
natural images to run on where CIFAR-10 cannot be had (``auto`` falls back to them).  Train and test crops come
from disjoint regions of each photo, so no test crop shares a pixel with a training crop.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from .datasets import ImageDataset


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
