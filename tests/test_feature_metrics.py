"""FD/KID through torch-fidelity with honest labels, and LPIPS with resolved backbone weights."""
import pytest
import torch
import torchvision

from sbt_lib.eval import fidelity as fm
from sbt_lib.data.datasets import load_dataset, to_uint8
from sbt_lib.eval.fidelity import as_uint8, feature_metrics, lpips_metric
from sbt_lib.models.lpips_net import lpips_available
from sbt_lib.weights import MissingWeightsError

SIZE = 64  # EfficientNet input size for these tests: cheap on CPU (the default is 224)


@pytest.fixture(scope="module")
def photos():
    """16 real photo crops (uint8) and a noised copy."""
    images = load_dataset("photos", "test", image_size=32, size=16, seed=0).images
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    noised = to_uint8((images.float() / 127.5 - 1 + 0.4 * noise).clamp(-1, 1))
    return images, noised


def test_offline_uses_effnet_with_honest_labels(offline, photos):
    real, _ = photos
    out = feature_metrics(real, real, effnet_size=SIZE)
    assert {"fd_effnet", "kid_effnet", "kid_effnet_std"} <= set(out)
    assert not {"fid", "kid", "kid_std"} & set(out)
    assert out["feature_space"].startswith("FD-EffNetLite0") and f"{SIZE} px" in out["feature_space"]
    assert out["num_real"] == out["num_fake"] == 16 and out["kid_subset_size"] == 16
    assert abs(out["fd_effnet"]) < 1e-2  # identical sets


def test_distortion_raises_fd_and_is_deterministic(offline, photos):
    real, noised = photos
    first = feature_metrics(real, noised, effnet_size=SIZE, feature_extractor="effnet")
    again = feature_metrics(real, to_uint8(noised.float() / 127.5 - 1), effnet_size=SIZE, feature_extractor="effnet")
    assert first == again  # same seed, same numbers; float [-1, 1] input is the same images
    assert first["fd_effnet"] > 10 and first["kid_effnet"] > 0


def test_inception_labels_when_its_weights_resolve(offline, monkeypatch):
    """Label selection with the resolver and torch-fidelity stubbed (a real Inception pass with
    a 2048-d Fréchet distance takes too long on this CPU for a unit test)."""
    fake_path = offline / fm.INCEPTION_FILE
    seen = {}

    def calculate_metrics(**kw):
        seen.update(kw)
        return {"frechet_inception_distance": 12.5, "kernel_inception_distance_mean": 0.01,
                "kernel_inception_distance_std": 0.001}

    monkeypatch.setattr(fm, "resolve_inception_weights", lambda download=None: fake_path)
    monkeypatch.setattr(fm.torch_fidelity, "calculate_metrics", calculate_metrics)
    out = feature_metrics(torch.zeros(5, 3, 8, 8, dtype=torch.uint8), torch.zeros(7, 3, 8, 8, dtype=torch.uint8))
    assert (out["fid"], out["kid"], out["kid_std"]) == (12.5, 0.01, 0.001)
    assert not any(k.endswith("_effnet") for k in out) and out["feature_space"].startswith("FID (Inception")
    assert seen["feature_extractor"] == "inception-v3-compat"
    assert seen["feature_extractor_weights_path"] == str(fake_path)
    assert seen["kid_subset_size"] == 5 and (out["num_real"], out["num_fake"]) == (5, 7)


def test_inception_required_but_missing(offline):
    with pytest.raises(MissingWeightsError, match=fm.INCEPTION_FILE):
        feature_metrics(torch.zeros(4, 3, 8, 8), torch.zeros(4, 3, 8, 8), feature_extractor="inception")


def test_too_few_images(offline):
    with pytest.raises(ValueError, match="at least 2 images"):
        feature_metrics(torch.zeros(1, 3, 8, 8), torch.zeros(4, 3, 8, 8), feature_extractor="effnet")


def test_inputs_as_batches():
    images = torch.rand(6, 3, 8, 8) * 2 - 1
    expected = to_uint8(images)
    assert torch.equal(as_uint8(images), expected)
    assert torch.equal(as_uint8(lambda: ((images[i:i + 4], None) for i in (0, 4))), expected)
    assert torch.equal(as_uint8([expected[:2], expected[2:]]), expected)
    with pytest.raises(ValueError, match="N×3×H×W"):
        as_uint8(torch.zeros(2, 1, 8, 8))


# ----------------------------------------------------------------------------- LPIPS

def test_lpips_missing_offline(offline):
    assert not lpips_available("vgg")
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth"):
        lpips_metric(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16))


def test_lpips_with_backbone_file(offline, monkeypatch):
    """A randomly initialised torchvision AlexNet backbone file in $SBT_WEIGHTS goes the real
    loading path (lpips' linear layers come from the package)."""
    torch.manual_seed(0)
    features = torchvision.models.alexnet().features.state_dict()
    folder = offline / "weights"
    folder.mkdir()
    torch.save({f"features.{k}": v for k, v in features.items()}, folder / "alexnet-owt-7be5be79.pth")
    monkeypatch.setenv("SBT_WEIGHTS", str(folder))
    assert lpips_available("alex")
    a = torch.rand(3, 3, 32, 32) * 2 - 1
    b = (a + 0.5 * torch.randn_like(a)).clamp(-1, 1)
    d = lpips_metric(a, b, net="alex")
    assert d.shape == (3,) and torch.all(d > 0)
    assert torch.allclose(lpips_metric(a, a, net="alex"), torch.zeros(3))


def test_metrics_from_features_equal_torch_fidelitys_on_the_images(offline, photos):
    """The sharded evaluation's path (features first, gathered, then FD/KID) gives torch-fidelity's numbers."""
    real, noised = photos
    whole = feature_metrics(real, noised, effnet_size=SIZE, feature_extractor="effnet")
    real_f, extractor = fm.image_features(real, effnet_size=SIZE, feature_extractor="effnet")
    halves = [fm.image_features(part, effnet_size=SIZE, feature_extractor="effnet")[0] for part in noised.split(9)]
    assert real_f.shape == (16, 1280) and extractor == fm.EFFNET_EXTRACTOR
    from_features = fm.metrics_from_features(real_f, torch.cat(halves), extractor, effnet_size=SIZE)
    for key in ("fd_effnet", "kid_effnet", "kid_effnet_std"):
        assert from_features[key] == pytest.approx(whole[key], rel=1e-6, abs=1e-9), key
    assert from_features["feature_space"] == whole["feature_space"]


def test_kid_draws_one_subset_when_a_subset_is_every_image():
    """With as many images as the subset size, every subset is the whole set reordered: one draw gives
    torch-fidelity's 100-draw mean; with fewer images per subset it still draws many."""
    from torch_fidelity.metric_kid import kid_featuresdict_to_metric

    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(60, 16, generator=g), torch.randn(60, 16, generator=g) + 0.3
    full = kid_featuresdict_to_metric({"f": fake}, {"f": real}, "f", kid_subsets=100, kid_subset_size=60,
                                      rng_seed=2020, verbose=False)
    ours = fm.metrics_from_features(real, fake, fm.EFFNET_EXTRACTOR)
    assert ours["kid_effnet"] == pytest.approx(full["kernel_inception_distance_mean"], rel=1e-5)
    assert fm._kid_subsets(60, 60, 60, 100) == 1
    assert fm._kid_subsets(50, 60, 60, 100) == 100 and fm._kid_subsets(60, 60, 80, 100) == 100


def test_hog_distance_is_the_frechet_distance_of_the_hog_descriptors():
    import numpy as np
    from scipy import linalg

    from sbt_lib.eval.fidelity import hog_distance
    from sbt_lib.models.teachers import hog

    g = torch.Generator().manual_seed(0)
    real = torch.rand(300, 3, 32, 32, generator=g) * 2 - 1
    fake = torch.nn.functional.avg_pool2d(real, 3, 1, 1)
    a, b = (hog(x, 8).flatten(1).double().numpy() for x in (fake, real))
    covmean = linalg.sqrtm(np.cov(a, rowvar=False) @ np.cov(b, rowvar=False)).real
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(np.cov(a, rowvar=False) + np.cov(b, rowvar=False)
                                                              - 2 * covmean)
    assert hog_distance(real, fake) == pytest.approx(expected, rel=1e-4)
    assert abs(hog_distance(real, real)) < 1e-4 < hog_distance(real, fake)
    with pytest.raises(ValueError, match="at least 2"):
        hog_distance(real[:1], fake[:1])
