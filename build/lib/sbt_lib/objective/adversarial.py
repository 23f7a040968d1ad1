"""The adversarial term ``L_adv`` of Eq. 4, and what keeps it stable on little data.

The paper trains its discriminator "similar to SoftVQ, using a StyleGAN-like architecture and
strategies such as LeCAM and consistency regularization".  The pieces, each usable on its own:

- :func:`hinge_d_loss`, :func:`hinge_g_loss` — the hinge GAN loss (Lim & Ye 2017), with the
  discriminator's half-sum convention of VQGAN/SoftVQ: ``½[mean relu(1 − D(x)) + mean relu(1 + D(x̂))]``.
- :class:`LeCAM` — the LeCAM regulariser (Tseng et al. 2021): it pulls D(real) towards the running
  mean of D(fake) and D(fake) towards that of D(real), which bounds how far the discriminator can
  push the two apart and keeps it from overfitting a small training set.  Its running means are
  buffers, so they are saved and restored with the rest of the state.
- :func:`diff_augment` — DiffAugment (Zhao et al. 2020): colour, translation and cutout, applied
  differentiably to what the discriminator sees, real *and* fake, so the generator still gets
  gradients through it.
- :func:`consistency_loss` — consistency regularisation (CR, Zhang et al. 2019), in its balanced
  form (bCR, Zhao et al. 2020): D(augment(x)) should equal D(x), for real *and* for fake images.
- :func:`adaptive_weight` — VQGAN's balance of the GAN gradient against the reconstruction
  gradient at the decoder's last layer (Esser et al. 2021, Eq. 7).

:class:`Adversarial` bundles them with a :class:`~sbt_lib.models.discriminator.Discriminator` for a
two-optimizer training loop (see its docstring).  Every random draw (augmentations) comes from a
``torch.Generator`` seeded from ``(seed, step)``, so a step's losses are a pure function of the
weights, the images and the step — which keeps resume exact.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models.discriminator import Discriminator

DIFF_AUGMENTS = ("color", "translation", "cutout")
# The two strengths of DiffAugment in SoftVQ's loss: what the discriminator is shown in the hinge
# terms (each augmentation on half the images, a small cutout), and the consistency targets.
VIEW_AUGMENT = dict(prob=0.5, cutout_ratio=0.2)
CONSISTENCY_AUGMENT = dict(prob=1.0, cutout_ratio=0.5)

# ----------------------------------------------------------------------------- losses


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """``½[mean relu(1 − D(real)) + mean relu(1 + D(fake))]``; zero once real ≥ 1 and fake ≤ −1."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """``−mean D(fake)``: the generator raises the discriminator's score of its images."""
    return -logits_fake.float().mean()


class LeCAM(nn.Module):
    """LeCAM regulariser ``mean relu(D(real) − ema_fake)² + mean relu(ema_real − D(fake))²``.

    ``ema_real`` / ``ema_fake`` are exponential moving averages (decay ``decay``) of the batch mean
    logits, kept as buffers (in ``state_dict``, so checkpoints restore them); ``initialized`` says
    whether they hold a value yet — the first :meth:`update` sets them to the batch means instead of
    averaging with zero.  As in the authors' code, call :meth:`update` before :meth:`forward`.
    Neither reads a buffer back to the host in a training step (no GPU sync): :meth:`update` blends
    with ``torch.where``, and :meth:`forward` checks ``initialized`` once, then remembers it.
    """

    def __init__(self, decay: float = 0.999):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"LeCAM decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._ready = False  # host-side copy of `initialized` once known to be True

    def _load_from_state_dict(self, *args, **kwargs):
        self._ready = False  # the loaded buffers decide again
        super()._load_from_state_dict(*args, **kwargs)

    @torch.no_grad()
    def update(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> None:
        """Fold the batch means of the logits into the moving averages."""
        real, fake = logits_real.detach().float().mean(), logits_fake.detach().float().mean()
        decay = torch.where(self.initialized, self.decay, 0.0)  # the first update takes the batch means
        self.ema_real.copy_(decay * self.ema_real + (1.0 - decay) * real)
        self.ema_fake.copy_(decay * self.ema_fake + (1.0 - decay) * fake)
        self.initialized.fill_(True)
        self._ready = True

    def forward(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        self._ready = self._ready or bool(self.initialized)
        if not self._ready:
            raise RuntimeError("LeCAM's moving averages are not initialised: "
                               "call update(logits_real, logits_fake) first")
        return (F.relu(logits_real.float() - self.ema_fake).square().mean()
                + F.relu(self.ema_real - logits_fake.float()).square().mean())


# ----------------------------------------------------------------------------- augmentation


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """U[0, 1) drawn on the generator's device (so a CPU generator works for CUDA images)."""
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device).to(like.device, like.dtype)


def _randint(low: int, high: int, n: int, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randint(low, high, (n,), generator=generator, device=device).to(like.device)


def _color(x: torch.Tensor, g) -> torch.Tensor:
    """Random brightness (±0.5), saturation (×[0, 2]) and contrast (×[0.5, 1.5]) per image."""
    b = len(x)
    x = x + (_uniform((b, 1, 1, 1), g, x) - 0.5)
    mean = x.mean(1, keepdim=True)
    x = (x - mean) * (_uniform((b, 1, 1, 1), g, x) * 2.0) + mean
    mean = x.mean((1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform((b, 1, 1, 1), g, x) + 0.5) + mean


def _translation(x: torch.Tensor, g, ratio: float) -> torch.Tensor:
    """Shift each image by a whole number of pixels, up to ``ratio`` of its size; zero fill."""
    b, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy, dx = _randint(-sy, sy + 1, b, g, x), _randint(-sx, sx + 1, b, g, x)
    # Gather from a copy padded by one zero pixel; indices that fall outside land on the padding.
    ys = (torch.arange(h, device=x.device)[None, :] + dy[:, None] + 1).clamp(0, h + 1)  # b×h
    xs = (torch.arange(w, device=x.device)[None, :] + dx[:, None] + 1).clamp(0, w + 1)  # b×w
    padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # b×(h+2)×(w+2)×c
    out = padded[torch.arange(b, device=x.device)[:, None, None], ys[:, :, None], xs[:, None, :]]
    return out.permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, g, ratio: float) -> torch.Tensor:
    """Zero one square of side ``ratio`` × the image size per image, centred anywhere in it
    (clipped at the borders)."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    y0 = _randint(0, h + (1 - sh % 2), b, g, x) - sh // 2
    x0 = _randint(0, w + (1 - sw % 2), b, g, x) - sw // 2
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_y = (ys[None] >= y0[:, None]) & (ys[None] < y0[:, None] + sh)  # b×h
    in_x = (xs[None] >= x0[:, None]) & (xs[None] < x0[:, None] + sw)  # b×w
    keep = ~(in_y[:, :, None] & in_x[:, None, :])
    return x * keep[:, None].to(x.dtype)


def diff_augment(images: torch.Tensor, policy: str = "color,translation,cutout",
                 generator: torch.Generator | None = None, *, prob: float = 1.0, translation_ratio: float = 0.125,
                 cutout_ratio: float = 0.5) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020): the comma-separated augmentations of ``policy`` in order,
    each drawn independently per image and applied to it with probability ``prob``.

    Differentiable with respect to ``images``; pass a seeded ``generator`` for reproducible draws
    (it may live on the CPU while the images are on a GPU).  An empty policy returns the images."""
    names = [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [n for n in names if n not in DIFF_AUGMENTS]
    if unknown:
        raise ValueError(f"unknown DiffAugment {unknown} in policy {policy!r}; valid: {list(DIFF_AUGMENTS)}, "
                         f"comma-separated")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"DiffAugment prob must be in [0, 1], got {prob}")
    x = images
    for name in names:
        if name == "color":
            y = _color(x, generator)
        elif name == "translation":
            y = _translation(x, generator, translation_ratio)
        else:
            y = _cutout(x, generator, cutout_ratio)
        if prob < 1.0:
            chosen = _uniform((len(x), 1, 1, 1), generator, x) < prob
            y = torch.where(chosen, y, x)
        x = y
    return x


def consistency_loss(discriminator: nn.Module, images: torch.Tensor, logits: torch.Tensor,
                     generator: torch.Generator | None = None,
                     policy: str = "color,translation,cutout") -> torch.Tensor:
    """bCR: ``mean (D(augment(images)) − logits)²`` where ``logits`` are the discriminator's scores of
    the same images (unaugmented, or under another draw).  ``augment`` is :func:`diff_augment` at
    full strength (every image, cutout half the size).  Gradients flow through both sides."""
    augmented = discriminator(diff_augment(images, policy, generator, **CONSISTENCY_AUGMENT))
    return (augmented.float() - logits.float()).square().mean()


# ----------------------------------------------------------------------------- balancing


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """VQGAN's ``‖∇_last rec_loss‖ / (‖∇_last g_loss‖ + 1e-4)``, clamped to [0, max_weight], detached.

    ``last_layer`` is the weight of the decoder's final layer; both losses must depend on it.  The
    graphs are kept (``retain_graph``) so the losses can still be back-propagated afterwards."""
    grads = []
    for name, loss in (("rec_loss", rec_loss), ("g_loss", g_loss)):
        (grad,) = torch.autograd.grad(loss, last_layer, retain_graph=True, allow_unused=True)
        if grad is None:
            raise ValueError(f"{name} does not depend on last_layer: pass the weight of the decoder's final layer, "
                             f"the one that produces the reconstruction")
        grads.append(grad.float().norm())
    return (grads[0] / (grads[1] + 1e-4)).clamp(0.0, max_weight).detach()


@contextmanager
def frozen(module: nn.Module):
    """Turn off ``requires_grad`` of ``module``'s parameters inside the block (the graph built there
    sends no gradient to them), restoring each flag afterwards."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


# ----------------------------------------------------------------------------- the bundle


@dataclass(frozen=True)
class AdversarialDefaults:
    """The defaults of the adversarial settings that :class:`Adversarial` and
    :class:`~sbt_lib.objective.objective.ObjectiveConfig` share, in one place so that they cannot
    drift: both read :data:`ADVERSARIAL_DEFAULTS` (ObjectiveConfig names them ``disc_channels``,
    ``adv_start``, ``adv_adaptive``, ``lecam_weight``, ``consistency_weight``)."""

    channels: int = 8  # discriminator width at the input resolution
    start_step: int = 0  # the step at which the discriminator and L_adv start
    adaptive: bool = True  # VQGAN's adaptive weight at the decoder's last layer
    lecam_weight: float = 0.001  # LeCAM
    consistency_weight: float = 4.0  # bCR with DiffAugment


ADVERSARIAL_DEFAULTS = AdversarialDefaults()


class Adversarial(nn.Module):
    """The discriminator, its regularisers and the two losses of a GAN-trained tokenizer.

    One training step with two optimizers (the tokenizer's, and AdamW on
    ``adversarial.discriminator.parameters()``)::

        recon = model(images)[0];  rec = F.mse_loss(recon, images)
        terms = {"rec": rec, **adversarial.generator_loss(recon, step, rec, last_layer)}
        opt.zero_grad(); sum(terms.values()).backward(); opt.step()
        if adversarial.active(step):
            d_terms = adversarial.discriminator_loss(images, recon, step)   # recon is detached inside
            opt_d.zero_grad(); sum(d_terms.values()).backward(); opt_d.step()

    Both methods return dicts of already-weighted terms whose sum is the loss to minimise, and leave
    diagnostics (mean logits, the adaptive weight, the LeCAM averages) in :attr:`stats`.  Before
    ``start_step`` both return zeros and run no discriminator.

    - ``weight`` is λ2 of Eq. 4; with ``adaptive`` the generator term is
      ``weight × adaptive_weight(rec_loss, g_loss, last_layer) × g_loss`` (skipped, i.e. factor 1,
      when gradients are off, as in evaluation).
    - ``augment``: the discriminator sees DiffAugment'ed images (``policy``, :data:`VIEW_AUGMENT`) in
      the hinge terms of both steps; ``consistency_weight`` (bCR, :data:`CONSISTENCY_AUGMENT`) and
      ``lecam_weight`` (LeCAM) weight the regularisers of the discriminator step.  A weight of 0
      turns its term off (and drops it from the dict).  The defaults (weight 0.4, adaptive,
      LeCAM 0.001, bCR 4.0, augment) are those of the MAETok configuration in SoftVQ's code base
      (continuous_tokenizer).  Those shared with the tokenizer objective's configuration (width,
      start step, adaptive, LeCAM and bCR weights) come from :data:`ADVERSARIAL_DEFAULTS`; ``weight``
      is not shared: the objective's ``adv_weight`` defaults to 0, which means "no adversarial term",
      and always passes its λ2 here.
    - The discriminator's own weights get no gradient from :meth:`generator_loss`.
    """

    def __init__(self, image_size: int = 32, *, channels: int = ADVERSARIAL_DEFAULTS.channels,
                 max_channels: int = 128, weight: float = 0.4, start_step: int = ADVERSARIAL_DEFAULTS.start_step,
                 adaptive: bool = ADVERSARIAL_DEFAULTS.adaptive, max_weight: float = 1e4,
                 lecam_weight: float = ADVERSARIAL_DEFAULTS.lecam_weight, lecam_decay: float = 0.999,
                 consistency_weight: float = ADVERSARIAL_DEFAULTS.consistency_weight, augment: bool = True,
                 policy: str = "color,translation,cutout", seed: int = 0):
        super().__init__()
        diff_augment(torch.zeros(1, 3, 8, 8), policy)  # an unknown policy fails here, not mid-training
        for name, value in (("weight", weight), ("lecam_weight", lecam_weight),
                            ("consistency_weight", consistency_weight), ("start_step", start_step)):
            if value < 0:
                raise ValueError(f"{name} must be ≥ 0, got {value}")
        self.discriminator = Discriminator(image_size, channels=channels, max_channels=max_channels)
        self.lecam = LeCAM(lecam_decay)
        self.weight, self.start_step, self.adaptive, self.max_weight = weight, start_step, adaptive, max_weight
        self.lecam_weight, self.consistency_weight = lecam_weight, consistency_weight
        self.augment, self.policy, self.seed = augment, policy, seed
        self.stats: dict[str, torch.Tensor] = {}

    def active(self, step: int) -> bool:
        """Whether the adversarial terms are on at ``step`` (``step ≥ start_step``)."""
        return step >= self.start_step

    def rng(self, step: int, stream: int) -> torch.Generator:
        """The CPU generator of one step's draws; ``stream`` 0 for the generator loss, 1 for the
        discriminator loss, so the two never share draws."""
        return torch.Generator().manual_seed(((self.seed * 1_000_003 + step) * 2 + stream) % 2**63)

    def _view(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """What the discriminator is shown: the images, DiffAugment'ed when ``augment`` is on."""
        return diff_augment(images, self.policy, generator, **VIEW_AUGMENT) if self.augment else images

    def generator_loss(self, recon: torch.Tensor, step: int, rec_loss: torch.Tensor | None = None,
                       last_layer: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{"adv_g": weight [× adaptive] × hinge_g_loss(D(recon))}``; zero before ``start_step``.

        ``rec_loss`` is what the adversarial gradient is balanced against: the non-adversarial part
        of the loss (reconstruction + perceptual, VQGAN's "nll"); ``last_layer`` the weight of the
        decoder's final layer."""
        if not self.active(step):
            self.stats = {}
            return {"adv_g": recon.new_zeros((), dtype=torch.float32)}
        if self.adaptive and (rec_loss is None or last_layer is None):
            raise ValueError("adaptive=True needs rec_loss and last_layer (the weight of the decoder's final layer); "
                             "pass them, or build Adversarial(adaptive=False)")
        with frozen(self.discriminator):
            logits = self.discriminator(self._view(recon, self.rng(step, 0)))
        g_loss = hinge_g_loss(logits)
        factor = torch.ones((), device=g_loss.device)
        if self.adaptive and torch.is_grad_enabled():
            factor = adaptive_weight(rec_loss, g_loss, last_layer, self.max_weight)
        self.stats = {"g_hinge": g_loss.detach(), "adaptive_weight": factor, "logits_fake_g": logits.detach().mean()}
        return {"adv_g": self.weight * factor * g_loss}

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """``{"d_hinge", "d_lecam", "d_consistency"}`` (already weighted); ``fake`` is detached, and
        in training mode the LeCAM averages are updated (in eval mode they are only read, and the
        LeCAM term is zero until they hold a value).  Zeros before ``start_step``."""
        names = ["d_hinge"] + ["d_lecam"] * (self.lecam_weight > 0) + ["d_consistency"] * (self.consistency_weight > 0)
        if not self.active(step):
            self.stats = {}
            return {name: real.new_zeros((), dtype=torch.float32) for name in names}
        real, fake = real.detach(), fake.detach()
        g = self.rng(step, 1)
        logits_real = self.discriminator(self._view(real, g))  # real and fake scored separately:
        logits_fake = self.discriminator(self._view(fake, g))  # minibatch-std mixes a batch
        terms = {"d_hinge": hinge_d_loss(logits_real, logits_fake)}
        if self.lecam_weight > 0:
            if self.training:
                self.lecam.update(logits_real, logits_fake)
            ready = self.training or bool(self.lecam.initialized)  # evaluation may come before any update
            terms["d_lecam"] = (self.lecam_weight * self.lecam(logits_real, logits_fake) if ready
                                else logits_real.new_zeros((), dtype=torch.float32))
        if self.consistency_weight > 0:
            cr = (consistency_loss(self.discriminator, real, logits_real, g, self.policy)
                  + consistency_loss(self.discriminator, fake, logits_fake, g, self.policy))
            terms["d_consistency"] = self.consistency_weight * 0.5 * cr
        self.stats = {"logits_real": logits_real.detach().float().mean(),
                      "logits_fake": logits_fake.detach().float().mean(),
                      "lecam_ema_real": self.lecam.ema_real.clone(), "lecam_ema_fake": self.lecam.ema_fake.clone()}
        return terms
