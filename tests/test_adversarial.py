"""The discriminator and the adversarial loss terms (hinge, LeCAM, DiffAugment, bCR, adaptive weight)."""
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from sbt_lib.objective.adversarial import (
    ADVERSARIAL_DEFAULTS,
    Adversarial,
    LeCAM,
    adaptive_weight,
    consistency_loss,
    diff_augment,
    hinge_d_loss,
    hinge_g_loss,
)
from sbt_lib.models.discriminator import Discriminator, MinibatchStd


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- hinge and LeCAM


def test_hinge_losses_on_known_logits():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - x) = 0, 0.5, 2   -> mean 5/6
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + x) = 0, 1, 2     -> mean 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1))
    assert hinge_d_loss(torch.full((4,), 1.0), torch.full((4,), -1.0)).item() == 0.0  # margins met
    assert hinge_g_loss(fake).item() == pytest.approx(1 / 3)


def test_lecam_ema_update_and_value():
    lecam = LeCAM(decay=0.9)
    assert not lecam.initialized
    lecam.update(torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.0]))  # first update copies the means
    assert lecam.initialized and lecam.ema_real.item() == 2.0 and lecam.ema_fake.item() == -1.0
    lecam.update(torch.tensor([4.0, 4.0]), torch.tensor([1.0, 1.0]))
    assert lecam.ema_real.item() == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)  # 2.2
    assert lecam.ema_fake.item() == pytest.approx(0.9 * -1.0 + 0.1 * 1.0)  # -0.8
    real, fake = torch.tensor([0.2, -1.0]), torch.tensor([3.0, 1.0])
    # mean relu(real - (-0.8))² = mean(1.0², 0) = 0.5 ; mean relu(2.2 - fake)² = mean(0, 1.2²) = 0.72
    assert lecam(real, fake).item() == pytest.approx(0.5 + 0.72, rel=1e-6)
    with pytest.raises(RuntimeError, match="call update"):
        LeCAM()(real, fake)


def test_lecam_buffers_survive_a_safetensors_round_trip(tmp_path):
    lecam = LeCAM(decay=0.99)
    lecam.update(torch.tensor([0.3, 0.7]), torch.tensor([-0.1]))
    lecam.update(torch.tensor([1.1]), torch.tensor([-0.6, 0.2]))
    state = lecam.state_dict()
    assert set(state) == {"ema_real", "ema_fake", "initialized"}
    save_file(state, tmp_path / "lecam.safetensors")
    fresh = LeCAM(decay=0.99)
    fresh.load_state_dict(load_file(tmp_path / "lecam.safetensors"))
    for name, value in state.items():
        assert torch.equal(fresh.state_dict()[name], value) and fresh.state_dict()[name].dtype == value.dtype, name
    # ... and inside the bundle, next to the discriminator's weights
    adv = Adversarial(16)
    adv.discriminator_loss(torch.rand(4, 3, 16, 16) * 2 - 1, torch.zeros(4, 3, 16, 16), step=0)
    save_file(adv.state_dict(), tmp_path / "adv.safetensors")
    restored = Adversarial(16, seed=1)
    restored.load_state_dict(load_file(tmp_path / "adv.safetensors"))
    assert restored.lecam.initialized and torch.equal(restored.lecam.ema_real, adv.lecam.ema_real)
    assert all(torch.equal(v, adv.state_dict()[k]) for k, v in restored.state_dict().items())


# ----------------------------------------------------------------------------- DiffAugment


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
def test_diff_augment_shape_gradient_reproducibility_and_change(policy):
    images = (torch.rand(6, 3, 16, 16, generator=seeded(1)) * 2 - 1).requires_grad_()
    out = diff_augment(images, policy, seeded(0))
    assert out.shape == images.shape
    torch.testing.assert_close(out, diff_augment(images, policy, seeded(0)), rtol=0, atol=0)
    assert not torch.equal(out, diff_augment(images, policy, seeded(1)))
    assert (out - images).abs().amax((1, 2, 3)).min() > 0  # every image changed (under this seed)
    out.square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_translation_moves_pixels_by_whole_steps_and_fills_zeros():
    image = torch.arange(64.0).reshape(1, 1, 8, 8).expand(1, 3, 8, 8)
    out = diff_augment(image, "translation", seeded(3), translation_ratio=0.25)
    nonzero = out[0, 0][out[0, 0] != 0]
    assert set(nonzero.tolist()) <= set(range(64)) and len(nonzero) >= 36  # a shift of ≤ 2 px each way


def test_diff_augment_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="valid"):
        diff_augment(torch.zeros(1, 3, 8, 8), "color,flip")
    assert torch.equal(diff_augment(torch.ones(1, 3, 8, 8), ""), torch.ones(1, 3, 8, 8))


def test_consistency_loss_is_zero_without_augmentation_and_positive_with_it():
    torch.manual_seed(0)
    d = Discriminator(16)
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    logits = d(images)
    assert consistency_loss(d, images, logits, seeded(0), policy="").item() == pytest.approx(0.0, abs=1e-12)
    assert consistency_loss(d, images, logits, seeded(0)).item() > 0


# ----------------------------------------------------------------------------- discriminator


@pytest.mark.parametrize("size", [16, 32, 64])
def test_discriminator_gives_one_logit_per_image(size):
    d = Discriminator(size)
    assert d(torch.zeros(5, 3, size, size)).shape == (5,)


def test_discriminator_size_errors_are_clear():
    with pytest.raises(ValueError, match="expects images of shape B×3×32×32"):
        Discriminator(32)(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="power of two"):
        Discriminator(24)


@pytest.mark.parametrize("batch", [1, 3, 6])
def test_minibatch_std_handles_any_batch_size(batch):
    x = torch.randn(batch, 4, 4, 4)
    out = MinibatchStd(4)(x)
    assert out.shape == (batch, 5, 4, 4)
    torch.testing.assert_close(out[:, :4], x)
    if batch == 6:  # groups of 3 images {0, 2, 4} and {1, 3, 5}
        std = x[0::2].var(0, unbiased=False).add(1e-8).sqrt().mean()
        torch.testing.assert_close(out[0, 4], std.expand(4, 4))


def test_discriminator_training_separates_real_from_noise(tiny_shapes):
    """30 discriminator steps of the full recipe (DiffAugment, LeCAM, bCR) on shapes vs noise rank
    every held-out real image above every fresh noise image, which the initial network does not."""
    torch.manual_seed(0)
    adv = Adversarial(16, adaptive=False)
    opt = torch.optim.AdamW(adv.discriminator.parameters(), lr=2e-3, betas=(0.9, 0.95))
    real_train = tiny_shapes.images_at(torch.arange(96))
    real_test = tiny_shapes.images_at(torch.arange(96, 128))
    def noise(n, seed):
        return torch.rand(n, 3, 16, 16, generator=seeded(seed)) * 2 - 1

    @torch.no_grad()
    def held_out():
        real, fake = adv.discriminator(real_test), adv.discriminator(noise(32, 999))
        return (real.mean() - fake.mean()).item(), bool(real.min() > fake.max())

    gap_before, separated_before = held_out()
    for step in range(30):
        idx = torch.randint(0, 96, (16,), generator=seeded(step))
        terms = adv.discriminator_loss(real_train[idx], noise(16, step), step)
        opt.zero_grad()
        sum(terms.values()).backward()
        opt.step()
    gap, separated = held_out()
    assert set(terms) == {"d_hinge", "d_lecam", "d_consistency"}
    assert not separated_before and separated and gap > gap_before + 0.3, (gap_before, gap)
    assert adv.stats["logits_real"] > adv.stats["logits_fake"] and adv.lecam.initialized


# ----------------------------------------------------------------------------- generator side


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 2.0]))
    a = torch.tensor([0.5, 0.0, 0.0])
    rec = w.square().sum()  # ∇ = 2w, norm 6
    g = (a * w).sum()  # ∇ = a, norm 0.5
    assert adaptive_weight(rec, g, w).item() == pytest.approx(6 / (0.5 + 1e-4))
    assert adaptive_weight(rec, 0.0 * g, w, max_weight=100.0).item() == 100.0  # clamped
    rec.backward()  # the graph is kept
    with pytest.raises(ValueError, match="does not depend on last_layer"):
        adaptive_weight(w.sum(), torch.ones(()).requires_grad_(), w)


def tiny_decoder_step(adv: Adversarial, step: int):
    """A stand-in decoder whose last layer is a 1×1 convolution."""
    torch.manual_seed(1)
    features = torch.randn(4, 3, 16, 16)
    last = torch.nn.Parameter(torch.eye(3)[:, :, None, None] + 0.1 * torch.randn(3, 3, 1, 1))
    recon = F.conv2d(features, last)
    rec = F.mse_loss(recon, torch.zeros_like(recon))
    return recon, rec, last, adv.generator_loss(recon, step, rec, last)


def test_generator_loss_is_zero_before_start_step_and_weighted_after():
    adv = Adversarial(16, start_step=10, weight=0.5, augment=False)
    _, _, last, terms = tiny_decoder_step(adv, step=9)
    assert set(terms) == {"adv_g"} and terms["adv_g"].item() == 0.0 and not adv.active(9)
    assert all(v.item() == 0.0 for v in adv.discriminator_loss(torch.zeros(2, 3, 16, 16),
                                                               torch.zeros(2, 3, 16, 16), 9).values())
    recon, rec, last, terms = tiny_decoder_step(adv, step=10)
    g = hinge_g_loss(adv.discriminator(recon))
    expected = 0.5 * adaptive_weight(rec, g, last) * g
    torch.testing.assert_close(terms["adv_g"], expected)
    assert terms["adv_g"].item() != 0.0
    terms["adv_g"].backward()
    assert last.grad is not None and last.grad.abs().sum() > 0
    assert all(p.grad is None for p in adv.discriminator.parameters())  # D is not trained by the G step
    assert all(p.requires_grad for p in adv.discriminator.parameters())  # ... and is unfrozen again


def test_adaptive_generator_loss_needs_rec_loss_and_last_layer():
    adv = Adversarial(16)
    with pytest.raises(ValueError, match="last_layer"):
        adv.generator_loss(torch.zeros(2, 3, 16, 16), step=0)
    fixed = Adversarial(16, adaptive=False, weight=0.25, augment=False)
    recon = torch.rand(2, 3, 16, 16, requires_grad=True)
    torch.testing.assert_close(fixed.generator_loss(recon, 0)["adv_g"], 0.25 * hinge_g_loss(fixed.discriminator(recon)))


def test_discriminator_loss_detaches_fakes_and_is_reproducible():
    adv = Adversarial(16)
    real = torch.rand(4, 3, 16, 16) * 2 - 1
    fake = (torch.rand(4, 3, 16, 16) * 2 - 1).requires_grad_()
    terms = adv.discriminator_loss(real, fake, step=3)
    sum(terms.values()).backward()
    assert fake.grad is None
    assert all(math.isfinite(v.item()) for v in terms.values())
    assert adv.discriminator.from_rgb.weight.grad.abs().sum() > 0
    again = Adversarial(16)
    again.load_state_dict({k: v for k, v in adv.state_dict().items() if not k.startswith("lecam.")}, strict=False)
    repeat = again.discriminator_loss(real, fake, step=3)
    for name in terms:
        torch.testing.assert_close(repeat[name], terms[name], rtol=0, atol=0)


def test_defaults_come_from_the_shared_table():
    """The settings shared with ObjectiveConfig default to ADVERSARIAL_DEFAULTS (tests/test_objective.py
    checks the config side)."""
    adv = Adversarial(16)
    d = ADVERSARIAL_DEFAULTS
    assert (adv.start_step, adv.adaptive, adv.lecam_weight, adv.consistency_weight) == \
        (d.start_step, d.adaptive, d.lecam_weight, d.consistency_weight)
    assert adv.discriminator.from_rgb.out_channels == d.channels
    with pytest.raises(AttributeError):
        d.lecam_weight = 0.5  # frozen: one value for every run
