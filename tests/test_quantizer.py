import math

import pytest
import torch

from sbt_lib.models.quantizer import SoftVQ, codebook_usage, entropy_loss


def test_soft_assignment_is_a_distribution_and_z_is_its_codebook_mix():
    torch.manual_seed(0)
    vq = SoftVQ(dim=4, codebook_size=16, tau=0.5, normalize=False)
    z_hat = torch.randn(2, 5, 4)
    q = vq(z_hat)
    assert q.probs.shape == (2, 5, 16)
    torch.testing.assert_close(q.probs.sum(-1), torch.ones(2, 5))
    torch.testing.assert_close(q.z, q.probs @ vq.codebook)
    # Eq. 2 written out: softmax of minus squared distance over tau
    d2 = torch.cdist(z_hat, vq.codebook.expand(2, -1, -1)).square()
    torch.testing.assert_close(q.probs, torch.softmax(-d2 / 0.5, -1), atol=1e-5, rtol=1e-4)


def test_small_temperature_approaches_hard_nearest_codeword():
    torch.manual_seed(0)
    vq = SoftVQ(dim=8, codebook_size=32, tau=1e-4)
    z_hat = torch.randn(3, 7, 8)
    q = vq(z_hat)
    nearest = torch.nn.functional.normalize(vq.codebook, dim=-1)[q.probs.argmax(-1)]
    torch.testing.assert_close(q.z, nearest, atol=1e-4, rtol=0)
    assert q.probs.max(-1).values.min() > 0.99


def test_gradients_reach_tokens_and_codebook():
    vq = SoftVQ(dim=4, codebook_size=8, tau=0.1)
    z_hat = torch.randn(2, 3, 4, requires_grad=True)
    vq(z_hat).z.square().sum().backward()
    assert z_hat.grad.abs().sum() > 0 and vq.codebook.grad.abs().sum() > 0


def test_normalized_tokens_lie_on_the_unit_sphere():
    q = SoftVQ(dim=6, codebook_size=10, tau=0.07)(torch.randn(4, 3, 6) * 5)
    torch.testing.assert_close(q.z.norm(dim=-1), torch.ones(4, 3))


def test_usage_statistics_extremes():
    k = 8
    uniform = torch.full((100, k), 1 / k)
    assert codebook_usage(uniform)["perplexity"] == pytest.approx(k)
    assert codebook_usage(uniform)["assignment_entropy"] == pytest.approx(math.log(k))
    one_code = torch.zeros(100, k)
    one_code[:, 3] = 1
    stats = codebook_usage(one_code)
    assert stats["perplexity"] == pytest.approx(1.0)
    assert stats["used_fraction"] == pytest.approx(1 / k)
    spread = torch.eye(k).repeat(10, 1)  # each code is some token's one-hot choice
    assert codebook_usage(spread)["used_fraction"] == 1.0
    # the regulariser prefers confident tokens that spread over the codebook
    assert entropy_loss(spread) < entropy_loss(one_code) < entropy_loss(uniform) + 1e-6


def test_bad_inputs_are_explained():
    with pytest.raises(ValueError, match="tau"):
        SoftVQ(dim=4, tau=0)
    with pytest.raises(ValueError, match="dimension 4"):
        SoftVQ(dim=4)(torch.randn(2, 3, 5))


def test_gain_shape_keeps_each_token_length_and_quantizes_its_direction():
    torch.manual_seed(0)
    z_hat = torch.randn(4, 3, 6) * 5
    gain_shape = SoftVQ(dim=6, codebook_size=10, tau=0.07, keep_norm=True)
    shape_only = SoftVQ(dim=6, codebook_size=10, tau=0.07)
    shape_only.load_state_dict(gain_shape.state_dict())
    q, unit = gain_shape(z_hat), shape_only(z_hat)
    torch.testing.assert_close(q.z.norm(dim=-1), z_hat.norm(dim=-1))
    torch.testing.assert_close(q.z, z_hat.norm(dim=-1, keepdim=True) * unit.z)
    torch.testing.assert_close(q.probs, unit.probs)
    with pytest.raises(ValueError, match="normalize"):
        SoftVQ(dim=6, keep_norm=True, normalize=False)
