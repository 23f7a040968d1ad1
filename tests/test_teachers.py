"""Teachers: real EfficientNet-Lite0 weights, HOG against scikit-image, the timm ViT loading path."""
import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from skimage import color, data, feature

from sbt_lib.models import teachers
from sbt_lib.models.teachers import VIT_TEACHERS, available_teachers, hog, load_teacher, load_zipped_state
from sbt_lib.weights import MissingWeightsError


@pytest.fixture(scope="module")
def effnet():
    return load_teacher("effnet_lite0", 32)


def photo(name: str) -> torch.Tensor:
    """A scikit-image photo, centre-cropped square, 1×3×S×S in [-1, 1]."""
    img = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1)[None].float() / 127.5 - 1
    h, w = img.shape[-2:]
    s = min(h, w)
    return img[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]


# ----------------------------------------------------------------------------- EfficientNet-Lite0

def test_effnet_classifies_photos(effnet):
    with torch.no_grad():
        cat = effnet.classify(photo("chelsea"), size=224).argmax(-1).item()
        cup = effnet.classify(photo("coffee"), size=224).argmax(-1).item()
    assert 281 <= cat <= 285, cat  # ImageNet cat classes
    assert cup == 967, cup  # espresso


def test_effnet_stages(effnet):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    strides, channels = (2, 4, 8, 16, 32), (16, 24, 40, 112, 320)
    with torch.no_grad():
        maps = effnet.stages(effnet.prepare(x), strides)
    assert [f.shape for f in maps] == [(2, c, 64 // s, 64 // s) for s, c in zip(strides, channels)]


def test_effnet_teacher_contract(effnet):
    assert effnet.name == "effnet_lite0" and effnet.dim == 112 and effnet.grid(32) == (4, 4)
    assert effnet.cache_name == "effnet_lite0-efficientnet-lite0-57934424-64px-stride16"
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_()
    f = effnet(x)
    assert f.shape == (2, 112, 4, 4) and f.dtype == torch.float32
    assert not any(p.requires_grad for p in effnet.parameters())
    effnet.train()
    assert not effnet.training and not effnet.net.training  # stays in eval mode
    f.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradients reach the input
    with torch.no_grad():
        assert effnet.pooled(x, size=64).shape == (2, 1280)


def test_effnet_explicit_missing_weights(tmp_path):
    with pytest.raises(MissingWeightsError, match="nowhere.pth"):
        load_teacher("effnet_lite0", 32, weights=tmp_path / "nowhere.pth")


def test_zipped_state_checks_count_and_shapes(tmp_path):
    model = nn.Linear(2, 3)
    good = {"other.w": torch.ones(3, 2), "other.b": torch.zeros(3)}
    torch.save(good, tmp_path / "good.pth")
    load_zipped_state(model, tmp_path / "good.pth")
    assert torch.equal(model.weight, torch.ones(3, 2))
    torch.save({"w": torch.ones(3, 2)}, tmp_path / "short.pth")
    with pytest.raises(RuntimeError, match="1 tensors but Linear has 2"):
        load_zipped_state(model, tmp_path / "short.pth")
    torch.save({"w": torch.ones(2, 3), "b": torch.zeros(3)}, tmp_path / "shape.pth")
    with pytest.raises(RuntimeError, match=r"tensor 0 'w' has shape \(2, 3\)"):
        load_zipped_state(model, tmp_path / "shape.pth")


# ----------------------------------------------------------------------------- HOG

def _grey_chelsea():
    return color.rgb2gray(data.chelsea())[:128, 100:228] * 2 - 1  # float64 in [-1, 1]


def _skimage_hog(grey, cell):
    ref = feature.hog(grey, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(1, 1),
                      block_norm="L2", feature_vector=False)
    return torch.from_numpy(ref[:, :, 0, 0, :]).permute(2, 0, 1)  # 9×h×w


@pytest.mark.parametrize("cell", [4, 8])
def test_hog_matches_skimage(cell):
    """Hard binning is skimage's HOG (1×1-cell blocks, L2).  In float64 the only difference is
    that skimage sums each cell in C float32 (relative error ~1e-7 on values ≤ 1): measured max
    |diff| 9e-8, so 1e-6.  In float32 an angle could round across a bin edge; none does on this
    image (measured 5e-7), so 1e-5."""
    grey = _grey_chelsea()
    ref = _skimage_hog(grey, cell)
    x = torch.from_numpy(grey)[None, None]
    torch.testing.assert_close(hog(x, cell, 9, "hard")[0], ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(hog(x.float(), cell, 9, "hard")[0].double(), ref, atol=1e-5, rtol=0)
    # the teacher on the colour photo with grey=skimage's rgb2gray weights: the same numbers
    rgb = torch.from_numpy(data.chelsea()[:128, 100:228]).permute(2, 0, 1)[None].double() / 127.5 - 1
    teacher = load_teacher("hog", 128, cell_size=cell, color=False, binning="hard")
    torch.testing.assert_close(teacher(rgb)[0].double(), ref, atol=1e-5, rtol=0)


def test_hog_soft_binning():
    """Soft votes split each pixel's magnitude between two bins: cell totals equal hard binning's;
    the normalised descriptor stays close to skimage's (mean cosine measured 0.97 at 4-px cells)."""
    grey = _grey_chelsea()
    x = torch.from_numpy(grey)[None, None]
    soft, hard = hog(x, 4, 9, "soft", normalize=False), hog(x, 4, 9, "hard", normalize=False)
    torch.testing.assert_close(soft.sum(1), hard.sum(1))
    ref = _skimage_hog(grey, 4)
    cos = F.cosine_similarity(hog(x, 4, 9, "soft")[0], ref, dim=0)
    assert cos.mean() > 0.95
    # an edge at 45° (bin 2 spans 40°-60°, centre 50°) votes 0.75 / 0.25 into bins 2 and 1
    ramp = torch.arange(16, dtype=torch.float64)
    diag = (ramp[:, None] + ramp[None, :])[None, None] / 30
    cell = hog(diag, 8, 9, "soft", normalize=False)[0, :, 0, 0]
    assert cell.argmax() == 2 and torch.isclose(cell[1] / cell[2], torch.tensor(1 / 3, dtype=torch.float64))


def test_hog_teacher_contract():
    teacher = load_teacher("hog", 32)
    assert teacher.dim == 27 and teacher.grid(32) == (8, 8) and teacher.cache_name == "hog-32px-cell4-9bins-rgb-soft"
    f = teacher(torch.rand(3, 3, 32, 32) * 2 - 1)
    assert f.shape == (3, 27, 8, 8) and f.dtype == torch.float32
    norms = f.view(3, 3, 9, 8, 8).norm(dim=2)
    assert torch.all(norms <= 1 + 1e-6)
    assert load_teacher("hog", 32, input_size=64, cell_size=8, color=False).grid() == (8, 8)
    with pytest.raises(ValueError, match="at least 16"):
        load_teacher("hog", 8)


# ----------------------------------------------------------------------------- timm ViTs

def test_vit_teacher_loads_weights_from_sbt_weights(offline, monkeypatch):
    """dinov2_s with a randomly initialised file in $SBT_WEIGHTS: the features equal those of
    the model the file came from; a file at another resolution is resampled by timm's filter."""
    import timm

    timm_name = VIT_TEACHERS["dinov2_s"]
    torch.manual_seed(0)
    ref = timm.create_model(timm_name, pretrained=False, img_size=28).eval()
    folder = offline / "weights"
    folder.mkdir()
    save_file(ref.state_dict(), folder / f"{timm_name}.safetensors")
    monkeypatch.setenv("SBT_WEIGHTS", str(folder))

    teacher = load_teacher("dinov2_s", 32, input_size=28)
    assert teacher.dim == 384 and teacher.grid(32) == (2, 2)
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    prepared = F.interpolate(x, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(teachers.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(teachers.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = ref.forward_features(((prepared + 1) / 2 - mean) / std)[:, 1:]  # drop the class token
        expected = tokens.transpose(1, 2).reshape(2, 384, 2, 2)
        torch.testing.assert_close(teacher(x), expected)
        # the file's 2×2 position embedding is resampled to a 3×3 grid on load
        assert load_teacher("dinov2_s", 32, input_size=42)(x).shape == (2, 384, 3, 3)


def test_vit_teacher_reads_the_original_dinov2_release(offline, monkeypatch):
    """A file in the layout of Meta's ``dinov2_vits14_pretrain.pth`` (518 px: a 37×37 position
    embedding, plus ``mask_token``) under its own name: converted and resampled by timm."""
    import timm

    torch.manual_seed(0)
    state = timm.create_model(VIT_TEACHERS["dinov2_s"], pretrained=False).state_dict()  # img_size 518
    assert state["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    state["mask_token"] = torch.zeros(1, 384)
    folder = offline / "weights"
    folder.mkdir()
    torch.save(state, folder / "dinov2_vits14_pretrain.pth")
    monkeypatch.setenv("SBT_WEIGHTS", str(folder))
    teacher = load_teacher("dinov2_s", 32, input_size=56)
    with torch.no_grad():
        assert teacher(torch.rand(2, 3, 32, 32) * 2 - 1).shape == (2, 384, 4, 4)


def test_vit_teacher_missing_weights_fails_fast(offline):
    start = time.perf_counter()
    with pytest.raises(MissingWeightsError) as err:
        load_teacher("dinov2_s", 32)
    assert time.perf_counter() - start < 2
    assert "vit_small_patch14_dinov2.lvd142m.safetensors" in str(err.value)


def test_available_teachers(offline):
    avail = available_teachers(32)
    assert set(avail) == set(teachers.TEACHERS)
    assert avail["hog"] and avail["effnet_lite0"]  # weight-free; weights in the pip package
    assert not avail["dinov2_s"] and "vit_small_patch14_dinov2" in avail["dinov2_s"].detail


def test_unknown_teacher():
    with pytest.raises(ValueError, match="unknown teacher 'clip'.*dinov2_s"):
        load_teacher("clip", 32)
