"""The tokenizer objective (paper Eq. 4-5), one weighted, separately logged term per entry.

    L = L_rec + λ1 L_percep + λ2 L_adv + λ3 L_align + λ4 L_KL,
    L_align = μ1 L_repa_global + μ2 L_repa_local + μ3 L_OT

| term | weight | key in the logs | what |
|---|---|---|---|
| L_rec | 1 | ``rec`` | mean squared error in [-1, 1] |
| L_percep | λ1 ``perceptual_weight`` | ``lpips_vgg`` or ``perceptual_effnet`` | :mod:`sbt_lib.objective.perceptual` |
| L_adv | λ2 ``adv_weight`` | ``adv_g`` (and ``d_*`` for the discriminator) | :mod:`sbt_lib.objective.adversarial` |
| L_repa_global | λ3 μ1 | ``repa_global`` | global tokens vs a semantic teacher (:mod:`sbt_lib.objective.repa`) |
| L_repa_local | λ3 μ2 | ``repa_local`` | local tokens (``repa_local_group``) vs a local teacher |
| L_OT | λ3 μ3 | ``ot`` | ``z_local_2d`` vs the 2D VAE latents (:mod:`sbt_lib.objective.ot`) |
| L_KL | λ4 ``kl_weight`` | ``kl`` | :func:`~sbt_lib.models.quantizer.kl_to_uniform`, summed over groups |
| (SoftVQ regulariser) | ``entropy_weight`` | ``entropy`` | :func:`~sbt_lib.models.quantizer.entropy_loss` |
| (CRT) | ``crt_weight`` | ``crt`` | next-code prediction by a small causal transformer (:mod:`sbt_lib.objective.crt`) |
| (GloTok) | ``glotok_weight`` | ``glotok`` | code-histogram relations vs the global teacher's (:mod:`sbt_lib.objective.glotok`) |
| (GloTok) | ``residual_weight`` | ``residual`` | the residual recovery module regressing ẑ − z (:mod:`sbt_lib.models.residual`) |

:class:`Objective` is called as ``objective(model, batch)`` (a :class:`~sbt_lib.batch.Batch`) and
returns the dict of already-weighted terms, the shape the training engine expects.  It is an
``nn.Module``: its learnable parts (REPA and OT projectors, the discriminator with its LeCAM
buffers) train with the tokenizer and are saved in its checkpoints; the training engine gives the
discriminator its own optimizer and calls :meth:`Objective.critic_terms` after every step (the engine's
:class:`~sbt_lib.train.CriticLoss` protocol).
Frozen networks are kept out of the checkpoints: teacher features and 2D latents of the training
images are looked up in :class:`~sbt_lib.data.cache.FeatureCache` by the batch's indices (so no
teacher runs during training), and the perceptual network is held aside.  A term whose weight is
0 costs nothing and is not logged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..data.cache import FeatureCache
from ..models.quantizer import kl_to_uniform
from .adversarial import ADVERSARIAL_DEFAULTS, Adversarial
from .crt import CausalRegularizer
from .glotok import histogram_relation_loss
from .ot import OTAlignment
from .repa import REPAlignment

REPA_GROUPS = ("local_1d", "local_2d")


@dataclass(frozen=True)
class FrozenInput:
    """One frozen input a term reads per training image, by the batch's indices: ``latents_2d`` (the 2D VAE's
    latents, N_x×c) or ``teacher`` (the frozen network ``teacher``'s features pooled to ``tokens`` tokens, P×C)."""

    kind: str
    teacher: str | None = None
    tokens: int | None = None


@dataclass
class ObjectiveConfig(Config):
    """Every weight of Eq. 4-5 and the settings of its terms."""

    entropy_weight: float = 0.0  # SoftVQ's entropy regulariser, summed over groups
    perceptual_weight: float = 0.0  # λ1
    perceptual: str = "auto"  # lpips (when its weights resolve) | effnet | auto
    adv_weight: float = 0.0  # λ2, the generator's hinge loss (× the adaptive weight when adv_adaptive)
    # The adversarial term's settings: their defaults are Adversarial's own (one source, ADVERSARIAL_DEFAULTS).
    adv_start: int = ADVERSARIAL_DEFAULTS.start_step  # the step at which the discriminator and L_adv start
    adv_adaptive: bool = ADVERSARIAL_DEFAULTS.adaptive  # VQGAN's adaptive weight at the decoder's last layer
    lecam_weight: float = ADVERSARIAL_DEFAULTS.lecam_weight  # LeCAM
    consistency_weight: float = ADVERSARIAL_DEFAULTS.consistency_weight  # bCR with DiffAugment
    disc_channels: int = ADVERSARIAL_DEFAULTS.channels  # discriminator width at the input resolution
    align_weight: float = 1.0  # λ3, multiplies every alignment term
    repa_global_weight: float = 0.0  # μ1
    repa_global_teacher: str = "effnet_lite0"
    repa_local_weight: float = 0.0  # μ2
    repa_local_teacher: str = "hog"
    repa_local_group: str = "local_1d"  # which local tokens Eq. 7 aligns: local_1d | local_2d
    ot_weight: float = 0.0  # μ3, the OT term between the 2D latents and z_local_2d (Eq. 12-13)
    ot_eps: float = 0.05  # ε of the entropic OT, in units of the cosine cost (0 … 4)
    ot_tol: float = 1e-5  # Sinkhorn stopping tolerance on the marginal error
    kl_weight: float = 0.0  # λ4
    crt_weight: float = 0.0  # CRT: next-code prediction loss of z_global, into the encoder (objective/crt.py)
    glotok_weight: float = 0.0  # GloTok: histogram relations vs repa_global_teacher's (objective/glotok.py)
    residual_weight: float = 0.0  # GloTok: the residual recovery module regresses ẑ − z (needs residual_recovery)

    def frozen_inputs(self, tokenizer_cfg) -> dict[str, FrozenInput]:
        """What the terms that are on read besides the images, by the name :class:`Objective` takes it under:
        ``latents_2d`` (OT), and the ``teacher_features`` ``global`` and ``local`` (REPA, pooled to the tokens they
        align with) and ``relation`` (GloTok: one global feature per image)."""
        needs = {}
        if self.ot_weight:
            needs["latents_2d"] = FrozenInput("latents_2d")
        if self.repa_global_weight:
            needs["global"] = FrozenInput("teacher", self.repa_global_teacher, tokenizer_cfg.num_tokens)
        if self.repa_local_weight:
            needs["local"] = FrozenInput("teacher", self.repa_local_teacher,
                                         tokenizer_cfg.num_group_tokens(self.repa_local_group))
        if self.glotok_weight:
            needs["relation"] = FrozenInput("teacher", self.repa_global_teacher, 1)
        return needs

    def __post_init__(self):
        if self.repa_local_group not in REPA_GROUPS:
            raise ValueError(f"repa_local_group must be one of {REPA_GROUPS}, got {self.repa_local_group!r}")
        if self.perceptual not in ("auto", "lpips", "effnet"):
            raise ValueError(f"perceptual must be 'auto', 'lpips' or 'effnet', got {self.perceptual!r}")


class Objective(nn.Module):
    """Eq. 4-5 for a tokenizer with configuration ``tokenizer_cfg`` (see the module docstring).

    The frozen inputs of the terms that are on (:meth:`ObjectiveConfig.frozen_inputs` declares them):
    ``latents_2d`` (OT), a :class:`FeatureCache` of the training images' 2D latents (N_x×c each);
    ``teacher_features`` (REPA, GloTok), ``{"global": cache, "local": cache, "relation": cache}`` of teacher patch
    features (P×C each, raster order; see :mod:`sbt_lib.objective.repa`).

    ``z_global``: a cache of the training images' global tokens under a frozen encoder and global codebook (a
    decoder-side variant on a base tokenizer, :func:`~sbt_lib.models.two_stage.on_base`).  The global tokens are
    then read by the batch's indices and only the decoder side runs (the local tokens bootstrapped from them, the
    decoder), so a step costs no encoder; the terms that act on the encoder's own outputs are refused, since
    nothing they could train is left.
    """

    ENCODER_TERMS = ("repa_global_weight", "crt_weight", "glotok_weight", "residual_weight")

    def __init__(self, cfg: ObjectiveConfig | None = None, tokenizer_cfg=None, *,
                 latents_2d: FeatureCache | None = None, teacher_features: dict[str, FeatureCache] | None = None,
                 z_global: FeatureCache | None = None, **overrides):
        super().__init__()
        cfg = cfg or ObjectiveConfig()
        self.cfg = c = ObjectiveConfig.from_dict({**cfg.to_dict(), **overrides})
        self.z_global = z_global
        on_encoder = [k for k in self.ENCODER_TERMS if getattr(c, k)]
        if z_global is not None and on_encoder:
            raise ValueError(f"with cached global tokens the encoder is frozen, and {on_encoder} act only on what it "
                             "outputs: set them to 0 for a decoder-side variant, or train a base with them")
        self.latents_2d, self.teacher_features = latents_2d, teacher_features or {}
        self._frozen: dict[str, nn.Module] = {}  # not submodules: kept out of checkpoints and optimizers
        if c.perceptual_weight:
            from .perceptual import PerceptualLoss

            self._frozen["perceptual"] = PerceptualLoss(c.perceptual)
        self.repa_global = self._repa("global", c.repa_global_weight, tokenizer_cfg, "global")
        self.repa_local = self._repa("local", c.repa_local_weight, tokenizer_cfg, c.repa_local_group)
        self.ot = self._ot(tokenizer_cfg) if c.ot_weight else None
        self.crt = self._crt(tokenizer_cfg) if c.crt_weight else None
        if c.glotok_weight and not isinstance(self.teacher_features.get("relation"), FeatureCache):
            raise ValueError("glotok_weight > 0 needs teacher_features['relation']: a FeatureCache of one global "
                             "teacher feature per training image "
                             "(see sbt_lib.workbook.pipeline.trainers.build_objective)")
        if c.residual_weight and not (tokenizer_cfg is not None and tokenizer_cfg.residual_recovery):
            raise ValueError("residual_weight > 0 needs a tokenizer with residual_recovery=True; or set it to 0")
        self.adversarial = self._adversarial(tokenizer_cfg) if c.adv_weight else None
        self._fake: torch.Tensor | None = None  # this step's reconstructions, for the discriminator step

    # ------------------------------------------------------------------ construction
    def _needs(self, tokenizer_cfg, group: str, term: str) -> None:
        if tokenizer_cfg is None or group not in tokenizer_cfg.groups:
            raise ValueError(f"the {term} term needs a tokenizer with {group} tokens (groups of this one: "
                             f"{list(tokenizer_cfg.groups) if tokenizer_cfg else 'unknown'}); or set its weight to 0")

    def _repa(self, which: str, weight: float, tokenizer_cfg, group: str) -> REPAlignment | None:
        if not weight:
            return None
        self._needs(tokenizer_cfg, group, f"repa_{which}")
        cache = self.teacher_features.get(which)
        if not isinstance(cache, FeatureCache):
            raise ValueError(f"repa_{which}_weight > 0 needs teacher_features[{which!r}]: a FeatureCache of the "
                             "training images' teacher features (see sbt_lib.workbook.pipeline.caches.teacher_cache)")
        return REPAlignment(tokenizer_cfg.token_dim, cache.shape[-1])

    def _ot(self, tokenizer_cfg) -> OTAlignment:
        self._needs(tokenizer_cfg, "local_2d", "OT")
        if not isinstance(self.latents_2d, FeatureCache):
            raise ValueError("ot_weight > 0 needs latents_2d: a FeatureCache of the training set's 2D latents "
                             "(see sbt_lib.workbook.pipeline.caches.latents_2d_cache)")
        return OTAlignment(tokenizer_cfg.token_dim, self.latents_2d.shape[-1], eps=self.cfg.ot_eps,
                           tol=self.cfg.ot_tol)

    def _crt(self, tokenizer_cfg) -> CausalRegularizer:
        if tokenizer_cfg is None:
            raise ValueError("the CRT term needs tokenizer_cfg (token size, count and codebook size)")
        return CausalRegularizer(tokenizer_cfg.token_dim, tokenizer_cfg.num_tokens, tokenizer_cfg.codebook_size)

    def _adversarial(self, tokenizer_cfg) -> Adversarial:
        c = self.cfg
        if tokenizer_cfg is None:
            raise ValueError("the adversarial term needs tokenizer_cfg (its image size sizes the discriminator)")
        return Adversarial(tokenizer_cfg.image_size, channels=c.disc_channels, weight=c.adv_weight,
                           start_step=c.adv_start, adaptive=c.adv_adaptive, lecam_weight=c.lecam_weight,
                           consistency_weight=c.consistency_weight)

    def _apply(self, fn, *args, **kwargs):
        """``.to()`` / ``.cuda()`` move the frozen networks too (they are not submodules)."""
        for net in self._frozen.values():
            net._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    @property
    def perceptual_name(self) -> str | None:
        """The name of the perceptual loss that runs (``lpips_vgg``, ``perceptual_effnet``), if any."""
        return self._frozen["perceptual"].name if "perceptual" in self._frozen else None

    # ------------------------------------------------------------------ the terms
    def forward(self, model, batch) -> dict[str, torch.Tensor]:
        c, images = self.cfg, batch.images
        if self.z_global is not None:  # a frozen encoder's tokens, looked up: only the decoder side runs
            enc = model.bootstrap(self.z_global[batch.indices].to(images.device))
            recon = model.decode(enc)
        else:
            recon, enc = model(images)
        terms = {"rec": F.mse_loss(recon.float(), images.float())}
        if c.perceptual_weight:
            terms[self.perceptual_name] = c.perceptual_weight * self._frozen["perceptual"](recon, images)
        if c.entropy_weight:
            terms["entropy"] = c.entropy_weight * enc.entropy_loss
        if c.kl_weight:
            terms["kl"] = c.kl_weight * sum(kl_to_uniform(p) for p in enc.probs.values())
        if self.repa_global is not None:
            target = self.teacher_features["global"][batch.indices].to(images.device)
            terms["repa_global"] = c.align_weight * c.repa_global_weight * self.repa_global(enc.z_global, target)
        if self.repa_local is not None:
            target = self.teacher_features["local"][batch.indices].to(images.device)
            tokens = enc.tokens[c.repa_local_group]
            terms["repa_local"] = c.align_weight * c.repa_local_weight * self.repa_local(tokens, target)
        if self.ot is not None:
            loss, _ = self.ot(self.latents_2d[batch.indices].to(images.device), enc.z_local_2d)
            terms["ot"] = c.align_weight * c.ot_weight * loss
        if self.crt is not None:
            terms["crt"] = c.crt_weight * self.crt(enc.z_global, enc.probs["global"])
        if c.glotok_weight:
            target = self.teacher_features["relation"][batch.indices].to(images.device)
            terms["glotok"] = c.glotok_weight * histogram_relation_loss(enc.probs["global"], target)
        if c.residual_weight:
            z = enc.z_global.detach()
            lost = (enc.unquantized["global"] - enc.z_global).detach()
            terms["residual"] = c.residual_weight * F.mse_loss(model.residual.residual(z).float(), lost.float())
        if self.adversarial is not None:
            anchor = terms["rec"] + (terms[self.perceptual_name] if c.perceptual_weight else 0)
            terms.update(self.adversarial.generator_loss(recon, batch.step, anchor, model.last_layer))
            self._fake = recon.detach()
        return terms

    # ---------------------------------------------------------------- the engine's CriticLoss protocol
    def critic(self) -> nn.Module | None:
        """The adversarial term (its discriminator and LeCAM state): trained by its own optimizer."""
        return self.adversarial

    def critic_active(self, step: int) -> bool:
        return self.adversarial is not None and self.adversarial.active(step)

    def critic_terms(self, batch) -> dict[str, torch.Tensor]:
        """The discriminator's loss terms for this step: real images against the reconstructions of
        the last :meth:`forward` (detached)."""
        if self.adversarial is None or self._fake is None:
            raise RuntimeError("critic_terms needs an adversarial term and a forward pass first")
        return self.adversarial.discriminator_loss(batch.images, self._fake, batch.step)
