"""Builders from typed parameters: a notebook's data, tokenizer, objective and training run.

Each function takes the run's :class:`~sbt_lib.workbook.config.params.Params` (or one of its typed
sections), so a notebook stays a page of narrative, calls and plots.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ...data.cache import FeatureCache, OnlineFeatures
from ...data.datasets import LazyImageFolder, load_dataset, resolve_dataset_name
from ...eval.reconstruction import evaluate_tokenizer, held_out_images
from ...models.encoder_init import init_encoder
from ...models.teachers import load_teacher
from ...models.tokenizer import SelfBootTok
from ...files import content_key
from ...generation.samplers import sample
from ...generation.transport import FlowMatchingLoss, TokenNormalizer
from ...models.sit import SiT
from ...models.two_stage import ENCODER_SWITCHES, frozen_state, on_base, refined_tokenizer, stage2_tokenizer
from ...models.vae2d import VAE2D, VAE2DConfig
from ...objective.objective import Objective
from ...objective.stage2 import RefinerLoss, Stage2Loss
from ...objective.repa import patches_to_tokens, teacher_tokens
from ...objective.vae_latents import train_vae2d
from ...train import TrainResult, resolve_device, train
from ..config.params import Params


def load_data(P: Params):
    """(train, test) datasets of ``P.data`` at the tokenizer's image size.  ``P`` is only read:
    :func:`~sbt_lib.workbook.config.params.resolve` has already resolved ``auto`` (a hand-made ``auto``
    is resolved here for the loading alone) and ``P.data.note`` says why where it fell back."""
    name, note = resolve_dataset_name(P.data.dataset)
    if note or P.data.note:
        print(note or P.data.note)
    kw = dict(image_size=P.tokenizer.image_size, seed=P.seed)
    return (load_dataset(name, "train", size=P.data.train_size, **kw),
            load_dataset(name, "test", size=P.data.test_size, **kw))


PCA_IMAGES = 10_000  # training images (evenly spaced) whose principal components start the linear path
KMEANS_IMAGES = 2048  # training images whose tokens start the codebooks (codebook_init="kmeans")


def build_tokenizer(P: Params, train_set=None) -> SelfBootTok:
    """A tokenizer of ``P.tokenizer``; the seed fixes its initial weights, and ``encoder_init`` names a
    pretrained ViT its encoder starts from (:mod:`~sbt_lib.models.encoder_init`).  With a linear path,
    ``train_set`` is needed: the path starts at its principal components (fitted on at most
    10,000 evenly spaced training images); so it is with ``codebook_init="kmeans"``: the codebooks start at
    the k-means centroids of the tokens of at most :data:`KMEANS_IMAGES` of them (seeded by the seed)."""
    torch.manual_seed(P.seed)
    model = SelfBootTok(P.tokenizer)
    if P.tokenizer.encoder_init:
        init_encoder(model, P.tokenizer.encoder_init)
    data_init = [name for name, on in (("linear_path=True", model.linear_path is not None),
                                       ("codebook_init='kmeans'", P.tokenizer.codebook_init == "kmeans")) if on]
    if data_init and train_set is None:
        raise ValueError(f"a tokenizer with {' and '.join(data_init)} starts from the training data: "
                         "pass train_set to build_tokenizer")
    if model.linear_path is not None:
        model.fit_linear_path(held_out_images(train_set, PCA_IMAGES))
    if P.tokenizer.codebook_init == "kmeans":
        model.init_codebooks(held_out_images(train_set, KMEANS_IMAGES), torch.Generator().manual_seed(P.seed))
    return model


def train_2d_vae(P: Params, train_set, progress: bool = True) -> VAE2D:
    """The 2D VAE of the OT term for ``train_set``, of ``P.vae``'s size (trained once, then loaded
    from the cache)."""
    v = P.vae
    cfg = VAE2DConfig(image_size=P.tokenizer.image_size, downsample=v.downsample,
                      latent_channels=v.latent_channels, channels=v.channels)
    return train_vae2d(train_set, cfg, steps=v.steps, batch_size=v.batch_size, seed=P.seed, progress=progress)


def latents_2d_cache(P: Params, train_set, progress: bool = True) -> FeatureCache:
    """The 2D latents of every training image under the (cached) 2D VAE, computed once on the
    training device."""
    device = resolve_device(P.training.device)
    vae = train_2d_vae(P, train_set, progress).to(device)
    return _cache(train_set)(vae.latents, train_set, f"vae2d-{vae.fingerprint()}", device=device, progress=progress)


def _cache(train_set) -> type[FeatureCache]:
    """Features of a frozen network over the training set: cached once, or computed per batch for a data set
    read lazily from disk (ImageNet), whose features would not fit (:class:`~sbt_lib.data.cache.OnlineFeatures`)."""
    return OnlineFeatures if isinstance(train_set, LazyImageFolder) else FeatureCache


def teacher_cache(name: str, P: Params, train_set, num_tokens: int, progress: bool = True) -> FeatureCache:
    """The features of every training image under the frozen teacher ``name``
    (:func:`~sbt_lib.models.teachers.load_teacher`), already pooled to the ``num_tokens`` tokens they
    are aligned with (N×C, see :func:`~sbt_lib.objective.repa.patches_to_tokens`; the pooling is
    linear, so caching pooled features is exact and takes P/N times less memory), computed once."""
    device = resolve_device(P.training.device)
    teacher = load_teacher(name, P.tokenizer.image_size).to(device)
    return _cache(train_set)(lambda images: patches_to_tokens(teacher_tokens(teacher(images)), num_tokens), train_set,
                        f"{teacher.cache_name}-pooled{num_tokens}", device=device, progress=progress)


def build_objective(P: Params, model: SelfBootTok, train_set, progress: bool = True,
                    z_global: FeatureCache | None = None) -> Objective:
    """Eq. 4-5 with the weights of ``P.objective``; the frozen inputs its terms need (2D latents,
    teacher features of the training images) are computed and cached first.  ``z_global``: the cached global
    tokens of a frozen encoder, for a decoder-side variant on a base (:func:`train_on_base`)."""
    cfg = P.objective
    latents = latents_2d_cache(P, train_set, progress) if cfg.ot_weight else None
    tokens = {"global": model.cfg.num_tokens, "local": model.cfg.num_group_tokens(cfg.repa_local_group)}
    teachers = {which: teacher_cache(name, P, train_set, tokens[which], progress)
                for which, weight, name in (("global", cfg.repa_global_weight, cfg.repa_global_teacher),
                                            ("local", cfg.repa_local_weight, cfg.repa_local_teacher)) if weight}
    if cfg.glotok_weight:  # GloTok's relations: one global feature per image of the same semantic teacher
        teachers["relation"] = teacher_cache(cfg.repa_global_teacher, P, train_set, 1, progress)
    return Objective(cfg, model.cfg, latents_2d=latents, teacher_features=teachers, z_global=z_global)


def prepare_training(P: Params, train_set, progress: bool = True) -> None:
    """Compute and cache on disk what training the tokenizer of ``P`` reads besides the images: the principal
    components its linear path starts from, the 2D VAE and its latents, the teachers' features.  A sweep calls it
    before its runs start in parallel processes, which then read these rather than each compute (and write) them."""
    with torch.random.fork_rng(devices=[]):  # the throwaway model's initialisation leaves the caller's RNG alone
        model = SelfBootTok(P.tokenizer)
    if model.linear_path is not None:
        model.fit_linear_path(held_out_images(train_set, PCA_IMAGES))
    build_objective(P, model, train_set, progress)


def train_tokenizer(P: Params, train_set, test_set, out_dir: Path, progress: bool = True,
                    evaluate: bool = True, distribution: bool = False, until: int | None = None,
                    deadline: float | None = None) -> TrainResult:
    """Train the tokenizer of ``P`` on ``train_set`` with the objective of ``P``; held-out PSNR on
    ``test_set`` is logged every ``eval_every`` steps and at the end (``evaluate=False``: never, for
    callers that evaluate themselves; ``distribution=True``: also the rFID-style distance and KID at
    ``P.eval.fd_size``, for a training curve).  Checkpoints land in ``out_dir``; a rerun resumes from them.
    ``until`` and ``deadline`` pause the run early (:func:`~sbt_lib.train.train`)."""
    model = build_tokenizer(P, train_set)
    objective = build_objective(P, model, train_set, progress)

    def eval_fn(m):
        r = evaluate_tokenizer(m, test_set, limit=P.eval.eval_size, fd_size=P.eval.fd_size if distribution else None)
        extra = {k: r[k] for k in ("fd_effnet", "kid_effnet", "fid", "kid") if k in r}
        return {"psnr": r["test_psnr"], "ssim": r["test_ssim"], "perplexity": r["codebook_perplexity"], **extra}

    cfg = replace(P.training, progress=progress)
    data = {"dataset": P.data.dataset, "image_size": P.tokenizer.image_size, "train_size": P.data.train_size,
            "seed": P.seed}
    meta = {"tokenizer": model.cfg.to_dict(), "data": data, "objective": objective.cfg.to_dict()}
    return train(model, objective, train_set, cfg, out_dir=out_dir, eval_fn=eval_fn if evaluate else None, meta=meta,
                 until=until, deadline=deadline)


# ----------------------------------------------------------------------------- stage 2 (paper §3.4)

def _weights_key(state: dict[str, torch.Tensor], length: int | None = None) -> str:
    """A content key of a model's tensors (names and values): what names a cache of that model's outputs."""
    kw = {} if length is None else {"length": length}
    return content_key(*[x for k, v in state.items() for x in (k, v)], **kw)


def global_token_cache(model: SelfBootTok, train_set, P: Params, progress: bool = True) -> FeatureCache:
    """``z_global`` of every training image under the frozen encoder and global codebook of ``model``,
    computed once on the training device and kept in float32 (exact); named by those frozen weights, so
    every stage-2 run of one stage-1 tokenizer shares it."""
    device = resolve_device(P.training.device)
    frozen = frozen_state(model)
    key = _weights_key(frozen)
    encoder = model.to(device).eval().encode_global
    return FeatureCache(encoder, train_set, f"zglobal-{key}", dtype=torch.float32, device=device, progress=progress)


def train_stage2(P: Params, parent: SelfBootTok, local_2d: str, train_set, test_set, out_dir: Path,
                 z_global: FeatureCache | None = None, progress: bool = True, evaluate: bool = False) -> TrainResult:
    """Stage 2 of two-stage scaling: a tokenizer with a new 2D aligner of preset ``local_2d`` grown
    from the stage-1 ``parent`` (frozen as ``P.stage2.freeze`` says, seeded by ``P.seed``), fine-tuned
    for ``P.stage2.steps`` steps of ``P.training`` on the cached global tokens ``z_global`` (built by
    :func:`global_token_cache` when not given) through the training engine: checkpoints in ``out_dir``,
    exact resume, progress, the NaN guard."""
    model = stage2_tokenizer(parent, local_2d, P.stage2.freeze, seed=P.seed)
    z_global = z_global if z_global is not None else global_token_cache(parent, train_set, P, progress)

    def eval_fn(m):
        r = evaluate_tokenizer(m, test_set, limit=P.eval.eval_size)
        return {"psnr": r["test_psnr"], "ssim": r["test_ssim"]}

    cfg = replace(P.training, steps=P.stage2.steps, progress=progress)
    meta = {"tokenizer": model.cfg.to_dict(), "stage2": {"freeze": P.stage2.freeze, "local_2d": local_2d,
                                                          "z_global_cache": z_global.name},
            "data": {"dataset": P.data.dataset, "image_size": P.tokenizer.image_size,
                     "train_size": P.data.train_size, "seed": P.seed}}
    return train(model, Stage2Loss(z_global), train_set, cfg, out_dir=out_dir,
                 eval_fn=eval_fn if evaluate else None, meta=meta)


# ----------------------------------------------------------------------------- variants on a base tokenizer

def base_params(P: Params, base: SelfBootTok) -> Params:
    """``P`` with the encoder-side fields of its tokenizer set to ``base``'s (its decoder-side switches kept):
    the parameters of decoder-side variants on ``base`` (:func:`train_on_base`)."""
    return P.replace(**{k: v for k, v in base.cfg.to_dict().items() if k in ENCODER_SWITCHES})


def train_on_base(P: Params, base: SelfBootTok, train_set, test_set, out_dir: Path,
                  z_global: FeatureCache | None = None, progress: bool = True, finetune: bool = False,
                  until: int | None = None, deadline: float | None = None) -> TrainResult:
    """The decoder side of the tokenizer ``P.tokenizer`` trained on the frozen encoder and global codebook of
    ``base`` (:func:`~sbt_lib.models.two_stage.on_base`, fresh from ``P.seed``): every variant has the base's
    ``z_global``, read from the cache ``z_global`` (built by :func:`global_token_cache` when not given), so a
    step runs only the local aligners and the decoder.  The objective is ``P.objective`` (REPA to a local
    teacher and L_OT act on the local tokens); ``P.training`` sets the steps; checkpoints in ``out_dir``.
    With ``finetune``, the whole tokenizer trains from the base's weights instead (no cache: the encoder moves),
    so that terms acting on the encoder (CRT, GloTok) are compared from one learned start.  ``until`` and
    ``deadline`` pause the run early (:func:`~sbt_lib.train.train`)."""
    switches = {k: v for k, v in P.tokenizer.to_dict().items() if k not in ENCODER_SWITCHES}
    model = on_base(base, seed=P.seed, inherit_decoder=finetune, finetune=finetune, **switches)
    if finetune:
        z_global = None
    elif z_global is None:
        z_global = global_token_cache(base, train_set, P, progress)
    objective = build_objective(P, model, train_set, progress, z_global=z_global)
    cfg = replace(P.training, progress=progress)
    where = ({"finetuned_from": _weights_key(base.state_dict(), length=12)} if finetune else
             {"z_global_cache": z_global.name})
    meta = {"tokenizer": model.cfg.to_dict(), "objective": objective.cfg.to_dict(), "base": where,
            "data": {"dataset": P.data.dataset, "image_size": P.tokenizer.image_size,
                     "train_size": P.data.train_size, "seed": P.seed}}
    return train(model, objective, train_set, cfg, out_dir=out_dir, meta=meta, until=until, deadline=deadline)


def reconstruction_cache(model: SelfBootTok, train_set, P: Params, progress: bool = True) -> FeatureCache:
    """The frozen ``model``'s reconstruction of every image of ``train_set``, computed once (float16: a rounding
    error near 1e-3 of the [-1, 1] range); named by all of the model's weights."""
    device = resolve_device(P.training.device)
    model = model.to(device).eval()
    key = _weights_key(model.state_dict(), length=12)
    return FeatureCache(lambda x: model(x)[0], train_set, f"recon-{key}", device=device, progress=progress)


def train_refiner(P: Params, parent: SelfBootTok, train_set, out_dir: Path, progress: bool = True) -> TrainResult:
    """The refine stage: a pixel refiner of ``P.stage2.refiner`` channels added after the decoder of the trained
    ``parent`` (:func:`~sbt_lib.models.two_stage.refined_tokenizer`: everything else frozen, ``z_global``
    unchanged), trained for ``P.stage2.refiner_steps`` steps of ``P.training`` at ``P.stage2.refiner_lr`` (where
    set) on the parent's reconstructions of ``P.stage2.refiner_images`` training images (a seeded subset of the
    training split; all of ``train_set`` when it is not larger), computed once: checkpoints in ``out_dir``, exact
    resume, progress."""
    s = P.stage2
    if s.refiner < 1 or s.refiner_steps < 1:
        raise ValueError(f"the refine stage needs stage2_refiner ≥ 1 channels and stage2_refiner_steps ≥ 1, "
                         f"got {s.refiner} and {s.refiner_steps}")
    if s.refiner_images and s.refiner_images < len(train_set):
        train_set = load_dataset(P.data.dataset, "train", size=s.refiner_images, image_size=P.tokenizer.image_size,
                                 seed=P.seed)
    model = refined_tokenizer(parent, s.refiner, seed=P.seed)
    recon = reconstruction_cache(parent, train_set, P, progress)
    cfg = replace(P.training, steps=s.refiner_steps, lr=s.refiner_lr or P.training.lr, progress=progress)
    meta = {"tokenizer": model.cfg.to_dict(), "refine": {"channels": s.refiner, "reconstructions": recon.name},
            "data": {"dataset": P.data.dataset, "image_size": P.tokenizer.image_size, "train_size": len(train_set),
                     "seed": P.seed}}
    return train(model, RefinerLoss(recon), train_set, cfg, out_dir=out_dir, meta=meta)


# ----------------------------------------------------------------------------- the generator (paper §3.2)

GROUPS = ("global", "all")  # what a generator produces: z_global only, or every group's tokens


def token_cache(tokenizer: SelfBootTok, train_set, P: Params, groups: str = "global",
                progress: bool = True) -> FeatureCache:
    """The tokens a generator learns, of every training image under the frozen ``tokenizer``, computed
    once (float32): ``global`` is ``z_global`` (B×N×d); ``all`` is every group's tokens concatenated along
    the token axis, ``[z_global; z_local_1d; z_local_2d]``, for the comparison the paper's claim rests on."""
    if groups not in GROUPS:
        raise ValueError(f"unknown token groups {groups!r}; valid: {GROUPS}")
    device = resolve_device(P.training.device)
    model = tokenizer.to(device).eval()
    key = _weights_key(model.state_dict(), length=12)
    if groups == "global":
        encoder = model.encode_global
    else:
        def encoder(images):
            enc = model.encode(images)
            return torch.cat([enc.tokens[g] for g in model.cfg.groups], dim=1)
    return FeatureCache(encoder, train_set, f"tokens-{groups}-{key}", dtype=torch.float32, device=device,
                        progress=progress)


def build_generator(P: Params, tokens: FeatureCache, train_set) -> tuple[SiT, TokenNormalizer]:
    """An untrained class-conditional SiT of ``P.generator`` for the cached ``tokens`` of ``train_set``, and the
    tokens' per-channel normaliser.  With ``P.generator.prior == "gaussian"`` its Gaussian prior is fitted to the
    normalised tokens here, so this untrained model already samples each class's Gaussian (the anchor)."""
    g = P.generator
    normalizer = TokenNormalizer(tokens.shape[-1]).fit(tokens.features)
    torch.manual_seed(P.seed)
    model = SiT(num_tokens=tokens.shape[0], token_dim=tokens.shape[-1], num_classes=len(train_set.classes),
                size=g.size, class_dropout=g.class_dropout, prior=g.prior)
    if model.prior is not None:
        model.prior.fit(normalizer.normalize(tokens.features.float()), train_set.targets)
    return model, normalizer


def train_generator(P: Params, tokenizer: SelfBootTok, train_set, out_dir: Path, groups: str = "global",
                    tokens: FeatureCache | None = None, progress: bool = True, eval_fn=None) -> TrainResult:
    """A class-conditional SiT of ``P.generator`` (:func:`build_generator`) trained by flow matching on the
    cached tokens of ``tokenizer`` (``groups``: ``global`` or ``all``), through the training engine
    (checkpoints, resume, the NaN guard).  The normaliser and the Gaussian prior are saved with it.
    ``eval_fn(model)``, every ``P.training.eval_every`` steps: e.g. the distribution distance of its samples."""
    tokens = tokens if tokens is not None else token_cache(tokenizer, train_set, P, groups, progress)
    g = P.generator
    model, normalizer = build_generator(P, tokens, train_set)
    cfg = replace(P.training, steps=g.steps, batch_size=g.batch_size, lr=g.lr, ema=g.ema, progress=progress)
    meta = {"generator": model.cfg.to_dict(), "groups": groups, "tokens": tokens.name,
            "tokenizer": tokenizer.cfg.to_dict(), "time_sampling": g.time_sampling}
    return train(model, FlowMatchingLoss(tokens, normalizer, g.time_sampling), train_set, cfg, out_dir=out_dir,
                 eval_fn=eval_fn, meta=meta)


@torch.no_grad()
def decode_tokens(tokenizer: SelfBootTok, z: torch.Tensor, groups: str = "global") -> torch.Tensor:
    """Images (clamped, on the CPU) of generated tokens ``z`` (in token units): through
    :meth:`~SelfBootTok.decode_from_global` for ``global``, or split into the groups and decoded for ``all``."""
    tokenizer = tokenizer.to(z.device).eval()
    if groups == "global":
        images = tokenizer.decode_from_global(z)
    else:
        sizes = {"global": tokenizer.cfg.num_tokens, "local_1d": tokenizer.cfg.num_tokens,
                 "local_2d": tokenizer.cfg.local_tokens}
        parts = z.split([sizes[g] for g in tokenizer.cfg.groups], dim=1)
        images = tokenizer.decode(dict(zip(tokenizer.cfg.groups, parts)))
    return images.clamp(-1, 1).float().cpu()


@torch.no_grad()
def generate_tokens(generator: SiT, normalizer: TokenNormalizer, classes: torch.Tensor, sampler: str = "heun",
                    steps: int = 20, scale: float = 1.0, seed: int = 0, stats: dict | None = None,
                    batch_size: int = 250, **options) -> torch.Tensor:
    """Tokens (in token units) of ``classes`` sampled from ``generator`` in batches, seeded by ``seed``."""
    device = next(generator.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    norm = normalizer.to(device)
    return torch.cat([norm.denormalize(sample(generator, classes[i:i + batch_size].to(device), sampler, steps, scale,
                                              generator=gen, stats=stats, **options))
                      for i in range(0, len(classes), batch_size)])


@torch.no_grad()
def generate_images(tokenizer: SelfBootTok, generator: SiT, normalizer: TokenNormalizer, classes: torch.Tensor,
                    groups: str = "global", sampler: str = "heun", steps: int = 20, scale: float = 1.0,
                    seed: int = 0, stats: dict | None = None) -> torch.Tensor:
    """Images (clamped to [-1, 1], on the CPU) of ``classes``: tokens sampled from ``generator``, mapped back
    by ``normalizer``, then decoded — through :meth:`~SelfBootTok.decode_from_global` (the aligners
    bootstrap the local tokens) for ``global``, or split into the groups and decoded directly for ``all``."""
    z = generate_tokens(generator, normalizer, classes, sampler, steps, scale, seed, stats)
    return decode_tokens(tokenizer, z, groups)
