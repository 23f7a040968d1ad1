"""Tests for sbt_lib.data.datasets and its sources (photos, shapes, cifar10, folders, imagenet): value ranges,
determinism, split hygiene, caching, errors."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sbt_lib.data import folders
from sbt_lib import weights
from sbt_lib import batch as batches
from sbt_lib.batch import batch_indices
from sbt_lib.data.datasets import DATASETS, load_dataset, resolve_dataset_name, to_float, to_uint8
from sbt_lib.data.photos import PHOTO_FILES, PHOTOS, photo_path, photo_regions, read_photo
from sbt_lib.data.shapes import FACTOR_CLASSES, SHAPE_FACTORS, render_shapes, sample_shape_factors

CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"

@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    """Every test caches into its own temporary folder, never into the repo."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SBT_CACHE", str(cache))
    return cache

def check_images(ds, n, size):
    batch = ds.get_batch(torch.arange(len(ds)))
    images, targets = batch.images, batch.targets
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (n, 3, size, size)
    assert images.dtype == torch.float32 and images.shape == (n, 3, size, size)
    assert images.min() >= -1 and images.max() <= 1
    assert images.min() < -0.5 and images.max() > 0.5  # uses the range
    assert targets.dtype == torch.int64 and targets.shape == (n,)
    image, target = ds[3]
    assert torch.equal(image, images[3]) and target == targets[3]

def make_folder(root, sizes=((8, 8),) * 3, classes=("a", "b"), split="train", mode="RGB"):
    """A tiny ImageFolder <root>/<split>/<class>/<i>.png; returns the file paths."""
    rng = np.random.default_rng(0)
    paths = []
    for cls in classes:
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        for i, (w, h) in enumerate(sizes):
            array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            path = root / split / cls / f"{i}.png"
            Image.fromarray(array).convert(mode).save(path)
            paths.append(path)
    return paths

# ----------------------------------------------------------------------------- conversions

def test_to_float_and_to_uint8_round_trip():
    u = torch.arange(256, dtype=torch.uint8)
    f = to_float(u)
    assert f.dtype == torch.float32 and f[0] == -1 and f[-1] == 1
    assert torch.equal(to_uint8(f), u)
    assert torch.equal(to_uint8(torch.tensor([-3.0, 3.0, 0.0])), torch.tensor([0, 255, 128]))

# ----------------------------------------------------------------------------- photos

def test_photos_are_distinct_colour_photos_shipped_in_packages():
    assert {"astronaut", "grace_hopper", "china", "flower"} <= set(PHOTOS)
    assert {package for package, _ in PHOTO_FILES.values()} == {"skimage", "matplotlib", "sklearn"}
    seen = set()
    for name in PHOTOS:
        package, file = PHOTO_FILES[name]
        path = photo_path(name)  # a file inside the installed package, not a download cache
        assert path.is_file() and path.as_posix().endswith(f"{package}/{file}"), path
        image = read_photo(name)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
        assert min(image.shape[:2]) >= 256, name  # a photograph, not an icon
        spread = image.max(axis=2).astype(int) - image.min(axis=2)  # 0 everywhere in a grey image
        assert (spread > 20).mean() > 0.02, f"{name} looks grey"
        seen.add((image.shape, int(image.sum())))
    assert len(seen) == len(PHOTOS)  # no photo twice

def test_photo_path_explains_a_missing_file(monkeypatch):
    monkeypatch.setitem(PHOTO_FILES, "astronaut", ("skimage", "data/no_such_photo.png"))
    with pytest.raises(FileNotFoundError, match=r"'astronaut'.*no_such_photo\.png"):
        photo_path("astronaut")
    monkeypatch.setitem(PHOTO_FILES, "astronaut", ("no_such_package_sbt", "a.png"))
    with pytest.raises(FileNotFoundError, match=r"'no_such_package_sbt'.*not installed"):
        photo_path("astronaut")

def test_photos_range_shape_balance_and_determinism():
    n = 20 * len(PHOTOS)
    ds = load_dataset("photos", size=n, seed=1)
    check_images(ds, n, 32)
    assert ds.classes == list(PHOTOS)
    assert torch.bincount(ds.targets).tolist() == [20] * len(PHOTOS)
    again = load_dataset("photos", size=n, seed=1)
    other = load_dataset("photos", size=n, seed=2)
    assert torch.equal(ds.images, again.images) and torch.equal(ds.boxes, again.boxes)
    assert not torch.equal(ds.images, other.images)
    assert load_dataset("photos", image_size=48, size=8).images.shape == (8, 3, 48, 48)

def test_photos_test_crops_never_touch_train_pixels():
    train, test = photo_regions("train"), photo_regions("test")
    for split, regions in (("train", train), ("test", test)):
        ds = load_dataset("photos", split, size=400, seed=0)
        for photo, y0, x0, side in ds.boxes.tolist():
            ry, rx, rh, rw = regions[PHOTOS[photo]]  # crop lies inside its own region ...
            assert ry <= y0 and y0 + side <= ry + rh and rx <= x0 and x0 + side <= rx + rw
            ty, tx, th, tw = train[PHOTOS[photo]]
            overlaps = y0 < ty + th and ty < y0 + side and x0 < tx + tw and tx < x0 + side
            assert overlaps == (split == "train")  # ... and test crops miss the train region
    for name in PHOTOS:  # the regions split each photo along its longer axis, 75/25
        (_, _, ah, aw), (_, _, bh, bw) = train[name], test[name]
        assert (ah * aw) / (ah * aw + bh * bw) == pytest.approx(0.75, abs=0.01)

# ----------------------------------------------------------------------------- shapes

def test_shapes_factors_classes_and_balance():
    ds = load_dataset("shapes", size=720, seed=0)
    check_images(ds, 720, 32)
    assert set(SHAPE_FACTORS["global"]) | set(SHAPE_FACTORS["local"]) == set(FACTOR_CLASSES)
    assert set(ds.factors) == set(FACTOR_CLASSES)
    for name, values in ds.factors.items():
        counts = torch.bincount(values, minlength=len(FACTOR_CLASSES[name]))
        assert len(counts) == len(FACTOR_CLASSES[name]), name
        assert counts.max() - counts.min() <= 1, name
    assert torch.equal(ds.targets, ds.factors["shape"])
    assert ds.classes == FACTOR_CLASSES["shape"]
    assert len(FACTOR_CLASSES["shape"]) == 4 and len(FACTOR_CLASSES["position"]) == 9

def test_shapes_determinism_and_splits():
    a = load_dataset("shapes", size=50, seed=3)
    assert torch.equal(a.images, load_dataset("shapes", size=50, seed=3).images)
    assert not torch.equal(a.images, load_dataset("shapes", size=50, seed=4).images)
    assert not torch.equal(a.images, load_dataset("shapes", "test", size=50, seed=3).images)

@pytest.mark.parametrize("factor", list(FACTOR_CLASSES))
def test_every_shapes_factor_changes_the_image(factor):
    seed = 5
    factors = sample_shape_factors(24, seed)
    changed = {k: v.copy() for k, v in factors.items()}
    changed[factor] = (changed[factor] + 1) % len(FACTOR_CLASSES[factor])
    before, after = render_shapes(factors, 32, seed), render_shapes(changed, 32, seed)
    assert torch.equal(torch.as_tensor(before), torch.as_tensor(render_shapes(factors, 32, seed)))
    diff = np.abs(before.astype(int) - after.astype(int)).reshape(24, -1)
    assert (diff.max(axis=1) > 20).all(), factor  # every image visibly changed

def test_shapes_colour_change_only_touches_the_shape():
    factors = sample_shape_factors(8, 0)
    changed = dict(factors, colour=(factors["colour"] + 3) % 6)
    before, after = render_shapes(factors, 32, 1), render_shapes(changed, 32, 1)
    touched = (before != after).any(axis=1).mean(axis=(1, 2))
    assert (touched > 0.005).all() and (touched < 0.4).all()  # the shape, not the background

@pytest.mark.parametrize("size", [16, 64])
def test_shapes_other_sizes(size):
    check_images(load_dataset("shapes", image_size=size, size=40), 40, size)

# ----------------------------------------------------------------------------- folders

def test_folder_loads_caches_and_invalidates(tmp_path, tmp_cache, monkeypatch):
    paths = make_folder(tmp_path / "ds", sizes=((8, 8),) * 3)
    make_folder(tmp_path / "ds", sizes=((8, 8),) * 2, split="test")
    ds = load_dataset(str(tmp_path / "ds"), image_size=8)
    assert ds.images.shape == (6, 3, 8, 8) and ds.classes == ["a", "b"]
    assert ds.targets.tolist() == [0, 0, 0, 1, 1, 1]
    assert np.array_equal(ds.images[0].permute(1, 2, 0).numpy(), np.asarray(Image.open(paths[0])))
    assert len(list(tmp_cache.glob("*.npz"))) == 1
    assert not list(tmp_cache.glob("*.tmp"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    with monkeypatch.context() as m:  # second load: from the cache, no decoding at all
        m.setattr(folders, "_decode", no_decoding)
        assert torch.equal(load_dataset(str(tmp_path / "ds"), image_size=8).images, ds.images)
        subset = load_dataset(str(tmp_path / "ds"), image_size=8, size=2)  # subset of the cache
        assert sorted(subset.targets.tolist()) == [0, 1]
    assert load_dataset(str(tmp_path / "ds"), "test", image_size=8).images.shape[0] == 4

    make_folder(tmp_path / "ds", sizes=((8, 8),) * 4, classes=("a",))  # one more file
    assert len(load_dataset(str(tmp_path / "ds"), image_size=8)) == 7
    assert len(list(tmp_cache.glob("*train*.npz"))) == 2

def test_folder_grey_and_rgba_become_rgb(tmp_path):
    make_folder(tmp_path, classes=("grey",), mode="L")
    make_folder(tmp_path, classes=("rgba",), mode="RGBA")
    ds = load_dataset(str(tmp_path), image_size=8)
    assert ds.images.shape == (6, 3, 8, 8)
    grey = ds.images[ds.targets == 0]
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])

def test_folder_wrong_size_and_resize(tmp_path):
    make_folder(tmp_path, sizes=((8, 8), (20, 12)))
    with pytest.raises(ValueError, match=r"1\.png.*20x12.*expected 8x8.*resize=True"):
        load_dataset(str(tmp_path), image_size=8)
    ds = load_dataset(str(tmp_path), image_size=8, resize=True)
    assert ds.images.shape == (4, 3, 8, 8)
    assert load_dataset(str(tmp_path), image_size=16, resize=True).images.shape == (4, 3, 16, 16)

def test_folder_corrupt_image(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "train" / "b" / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"cannot read image .*bad\.png"):
        load_dataset(str(tmp_path), image_size=8)

def test_folder_layout_errors(tmp_path):
    make_folder(tmp_path / "flat", split=".")  # class folders with no train/test level
    with pytest.raises(FileNotFoundError, match=r"(?s)flat/train.*class folders directly.*"
                                                r"\{train,test\}/<class>"):
        load_dataset(str(tmp_path / "flat"), image_size=8)
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images in"):
        load_dataset(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"(?s)no folder at .*nowhere.*\{train,test\}/<class>"):
        load_dataset(str(tmp_path / "nowhere"))

def test_bad_names_and_splits():
    with pytest.raises(ValueError) as error:
        load_dataset("imagenet21k")
    assert all(name in str(error.value) for name in DATASETS)
    assert "folder path is also accepted" in str(error.value)
    with pytest.raises(ValueError, match=r"split.*'train', 'test'.*'val'"):
        load_dataset("shapes", "val")
    with pytest.raises(ValueError, match="resize=True"):
        load_dataset("cifar10", image_size=64)

# ----------------------------------------------------------------------------- cifar10

@pytest.mark.skipif(not CIFAR10.is_dir(), reason=f"no CIFAR-10 folder at {CIFAR10}")
def test_cifar10_from_shared_folder(monkeypatch):
    monkeypatch.setenv("SBT_DATA", str(CIFAR10.parent))
    ds = load_dataset("cifar10", "test", size=200, seed=0)
    check_images(ds, 200, 32)
    assert len(ds.classes) == 10 and "airplane" in ds.classes
    assert torch.bincount(ds.targets).tolist() == [20] * 10
    assert torch.equal(ds.images, load_dataset("cifar10", "test", size=200, seed=0).images)
    assert not torch.equal(ds.images, load_dataset("cifar10", "test", size=200, seed=1).images)
    resized = load_dataset("cifar10", "test", image_size=16, size=10, resize=True)
    assert resized.images.shape == (10, 3, 16, 16)
    assert resolve_dataset_name("auto") == ("cifar10", None)
    auto = load_dataset("auto", "test", image_size=16, size=10)  # resizes without being asked
    assert auto.name == "cifar10" and torch.equal(auto.images, resized.images)

def test_cifar10_missing_and_no_network(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    monkeypatch.setenv("SBT_DATA", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"(?s)" + re.escape(str(tmp_path / "cifar10")) + r".*SBT_DATA.*"
                                           r"cifar10/\{train,test\}/<class>.*network"):
        load_dataset("cifar10")

# ----------------------------------------------------------------------------- auto

def fake_torchvision_cifar10(monkeypatch, download_error=None):
    """Replace torchvision's CIFAR10: no copy on disk, and a download that raises
    ``download_error`` (or succeeds).  Returns the list of ``download`` flags it was called with."""
    import torchvision.datasets

    calls = []

    def cifar10(root, train, download):
        calls.append(download)
        if not download:
            raise RuntimeError("Dataset not found or corrupted. You can use download=True")
        if download_error:
            raise download_error

    cifar10.url = torchvision.datasets.CIFAR10.url
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", cifar10)
    return calls

def test_auto_passes_other_names_through():
    for name in ("photos", "shapes", "cifar10", "/some/folder"):
        assert resolve_dataset_name(name) == (name, None)

def test_auto_uses_a_cifar10_folder_and_resizes_it(tmp_path, tmp_cache, monkeypatch):
    for split in ("train", "test"):
        make_folder(tmp_path / "cifar10", sizes=((32, 32),) * 2, split=split)
    monkeypatch.setenv("SBT_DATA", str(tmp_path))
    monkeypatch.setenv("SBT_OFFLINE", "1")  # a folder needs no network
    assert resolve_dataset_name("auto") == ("cifar10", None)
    with pytest.warns(UserWarning, match=re.escape(str(tmp_path / "elsewhere" / "cifar10"))):
        assert resolve_dataset_name("auto", root=str(tmp_path / "elsewhere"))[0] == "photos"  # root= wins
    ds = load_dataset("auto")
    assert ds.name == "cifar10" and ds.images.shape == (4, 3, 32, 32)
    assert torch.equal(load_dataset("cifar10").images, ds.images)
    assert len(list(tmp_cache.glob("*train*.npz"))) == 1  # at 32 px, the same cache as cifar10
    with pytest.raises(ValueError, match="resize=True"):
        load_dataset("cifar10", image_size=16)
    small = load_dataset("auto", "test", image_size=16)  # auto resizes without being asked
    assert small.name == "cifar10" and small.images.shape == (4, 3, 16, 16)

def test_auto_falls_back_to_photos_offline_without_probing(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("probed the network although SBT_OFFLINE is set")

    calls = fake_torchvision_cifar10(monkeypatch)
    monkeypatch.setattr(weights, "_probe", no_network)
    monkeypatch.setenv("SBT_DATA", str(tmp_path))
    monkeypatch.setenv("SBT_OFFLINE", "1")
    with pytest.warns(UserWarning, match="CIFAR-10 not found") as record:
        name, note = resolve_dataset_name("auto")
    assert name == "photos" and note == str(record[0].message)
    for text in (str(tmp_path / "cifar10"), "SBT_DATA", "cifar10/{train,test}/<class>/*.png",
                 "network access", "$SBT_OFFLINE=1", "'photos' are used instead"):
        assert text in note, text
    assert calls == [False]  # looked for torchvision's copy, never downloaded

    n = 2 * len(PHOTOS)
    with pytest.warns(UserWarning, match="CIFAR-10 not found"):
        ds = load_dataset("auto", "test", image_size=16, size=n, seed=3)
    assert ds.name == "photos" and ds.classes == list(PHOTOS) and ds.images.shape == (n, 3, 16, 16)
    assert torch.equal(ds.images, load_dataset("photos", "test", image_size=16, size=n, seed=3).images)

@pytest.mark.parametrize("case", ["unreachable", "download fails", "download works"])
def test_auto_online_tries_torchvision_only_when_the_host_answers(case, tmp_path, monkeypatch):
    import socket

    for name in weights.ENV_OFFLINE:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SBT_DATA", str(tmp_path))
    reachable = case != "unreachable"
    monkeypatch.setattr(weights, "_probe", lambda url, timeout: None if reachable else "cannot reach host")
    error = OSError("connection reset") if case == "download fails" else None
    calls = fake_torchvision_cifar10(monkeypatch, download_error=error)
    timeout = socket.getdefaulttimeout()
    if case == "download works":
        assert resolve_dataset_name("auto") == ("cifar10", None)
    else:
        with pytest.warns(UserWarning, match="CIFAR-10 not found"):
            name, note = resolve_dataset_name("auto")
        assert name == "photos"
        assert ("cannot reach host" if case == "unreachable" else "OSError: connection reset") in note
    assert calls == ([False, True] if reachable else [False])
    assert socket.getdefaulttimeout() == timeout  # restored after the download

# ----------------------------------------------------------------------------- batches

def test_batch_indices_deterministic_and_full():
    n, bs = 103, 16
    for step in (0, 5, 6, 7, 100):  # step 6 crosses the end of the first epoch
        a, b = batch_indices(n, bs, step, seed=0), batch_indices(n, bs, step, seed=0)
        assert a.dtype == torch.int64 and len(a) == bs and torch.equal(a, b)
        assert a.min() >= 0 and a.max() < n
    assert len(set(batch_indices(n, bs, 5, seed=0).tolist())) == bs  # within one epoch
    assert not torch.equal(batch_indices(n, bs, 0, 0), batch_indices(n, bs, 0, 1))
    assert len(batch_indices(5, 12, 3, 0)) == 12  # batch bigger than the dataset

def test_batch_indices_epochs_cover_every_index_once():
    n, bs, steps = 50, 7, 50  # 350 positions = 7 whole epochs
    stream = torch.cat([batch_indices(n, bs, s, seed=2) for s in range(steps)])
    epochs = stream.view(-1, n)
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(n))
    assert not torch.equal(epochs[0], epochs[1])  # a fresh permutation each epoch

def test_batch_indices_resume_matches_straight_run():
    straight = [batch_indices(41, 8, s, seed=9) for s in range(30)]
    batches._epoch_permutation.cache_clear()  # a resumed process starts with a cold cache
    for k in (0, 5, 17, 29):
        assert torch.equal(batch_indices(41, 8, k, seed=9), straight[k])
    batch = batch_indices(41, 8, 3, seed=9)
    batch[:] = -1  # callers may modify their copy without corrupting the cache
    assert torch.equal(batch_indices(41, 8, 3, seed=9), straight[3])

def test_dataset_batch_matches_items():
    ds = load_dataset("shapes", size=20)
    batch = ds.get_batch(torch.tensor([4, 0, 4]))
    images, targets = batch.images, batch.targets
    assert torch.equal(images[0], ds[4][0]) and torch.equal(images[1], ds[0][0])
    assert targets.tolist() == [ds[4][1], ds[0][1], ds[4][1]]
