"""The perceptual loss: zero on identical images, grows with distortion, gradients reach the input."""
import pytest
import torch
import torchvision

from sbt_lib.data.datasets import load_dataset
from sbt_lib.objective.perceptual import PerceptualLoss
from sbt_lib.weights import MissingWeightsError


@pytest.fixture(scope="module")
def loss():
    return PerceptualLoss("effnet")


@pytest.fixture(scope="module")
def images():
    return load_dataset("photos", "test", image_size=32, size=4, seed=0).images_at(torch.arange(4))


def test_auto_falls_back_to_effnet_offline(offline):
    assert PerceptualLoss("auto").name == "perceptual_effnet"
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth"):
        PerceptualLoss("lpips")


def test_zero_for_identical_and_grows_with_distortion(loss, images):
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(images.shape, generator=g)
    with torch.no_grad():
        values = [loss((images + s * noise).clamp(-1, 1), images).item() for s in (0.0, 0.05, 0.2, 0.5)]
    assert values[0] == 0.0
    assert values[1] < values[2] < values[3], values


def test_gradient_reaches_the_input_only(loss, images):
    recon = (images + 0.1 * torch.randn_like(images)).clamp(-1, 1).requires_grad_()
    loss(recon, images).backward()
    assert recon.grad is not None and torch.isfinite(recon.grad).all() and recon.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.training and not loss.teacher.net.training


def test_lpips_when_its_backbone_resolves(offline, monkeypatch, images):
    torch.manual_seed(0)
    folder = offline / "weights"
    folder.mkdir()
    features = torchvision.models.alexnet().features.state_dict()
    torch.save({f"features.{k}": v for k, v in features.items()}, folder / "alexnet-owt-7be5be79.pth")
    monkeypatch.setenv("SBT_WEIGHTS", str(folder))
    lpips = PerceptualLoss("auto", net="alex")
    assert lpips.name == "lpips_alex"
    recon = (images + 0.2 * torch.randn_like(images)).clamp(-1, 1).requires_grad_()
    value = lpips(recon, images)
    value.backward()
    assert value.item() > 0 and recon.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in lpips.parameters())
