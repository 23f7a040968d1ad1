import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from sbt_lib.eval.metrics import bicubic_roundtrip, bicubic_side, psnr, ssim


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # some spatial structure
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    return x, y


def test_psnr_matches_scikit_image(pair):
    x, y = pair
    ours = psnr(y, x)
    ref = [peak_signal_noise_ratio(x[i].numpy(), y[i].numpy(), data_range=2) for i in range(len(x))]
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5)


def test_ssim_matches_scikit_image(pair):
    x, y = pair
    ours = ssim(y, x)
    ref = [structural_similarity(x[i].numpy(), y[i].numpy(), gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, channel_axis=0, data_range=2) for i in range(len(x))]
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5)


def test_identical_images_are_perfect(pair):
    x, _ = pair
    assert torch.allclose(ssim(x, x), torch.ones(len(x)))
    assert (psnr(x, x) > 100).all()


def test_bicubic_anchor_respects_the_value_budget(pair):
    x, _ = pair
    assert bicubic_side(243) == 9 and bicubic_side(256) == 9 and bicubic_side(384) == 11
    coarse, fine = bicubic_roundtrip(x, 48), bicubic_roundtrip(x, 768)
    assert coarse.shape == x.shape
    assert psnr(fine, x).mean() > psnr(coarse, x).mean()  # more values, better anchor


def test_ssim_rejects_images_smaller_than_its_window():
    with pytest.raises(ValueError, match="11×11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
