"""The tokenizer's trainers from typed parameters: the tokenizer and its objective built from ``P``, and each stage
trained through the engine (:func:`sbt_lib.train.train`: checkpoints, exact resume, progress, the NaN guard): stage 1
(:func:`train_tokenizer`), stage 2 of two-stage scaling (:func:`train_stage2`), the decoder side of a variant on a
frozen base (:func:`train_on_base`) and the refine stage (:func:`train_refiner`).  What they read besides the images
comes from :mod:`~sbt_lib.workbook.pipeline.caches`.

Each function takes the run's :class:`~sbt_lib.workbook.config.params.Params` (or one of its typed
sections), so a notebook stays a page of narrative, calls and plots.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ...data.cache import FeatureCache
from ...data.datasets import load_dataset
from ...eval.reconstruction import evaluate_tokenizer, held_out_images
from ...models.encoder_init import init_encoder
from ...models.tokenizer import SelfBootTok
from ...models.two_stage import ENCODER_SWITCHES, on_base, refined_tokenizer, stage2_tokenizer
from ...objective.objective import Objective
from ...objective.stage2 import RefinerLoss, Stage2Loss
from ...train import TrainResult, train
from ..config.params import Params
from .caches import frozen_input, global_token_cache, reconstruction_cache, weights_key


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


def build_objective(P: Params, model: SelfBootTok, train_set, progress: bool = True,
                    z_global: FeatureCache | None = None) -> Objective:
    """Eq. 4-5 with the weights of ``P.objective``; the frozen inputs its terms declare (2D latents, teacher
    features of the training images) are computed and cached first, in one loop.  ``z_global``: the cached global
    tokens of a frozen encoder, for a decoder-side variant on a base (:func:`train_on_base`)."""
    frozen = {name: frozen_input(need, P, train_set, progress)
              for name, need in P.objective.frozen_inputs(model.cfg).items()}
    latents = frozen.pop("latents_2d", None)
    return Objective(P.objective, model.cfg, latents_2d=latents, teacher_features=frozen, z_global=z_global)


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
    where = ({"finetuned_from": weights_key(base.state_dict(), length=12)} if finetune else
             {"z_global_cache": z_global.name})
    meta = {"tokenizer": model.cfg.to_dict(), "objective": objective.cfg.to_dict(), "base": where,
            "data": {"dataset": P.data.dataset, "image_size": P.tokenizer.image_size,
                     "train_size": P.data.train_size, "seed": P.seed}}
    return train(model, objective, train_set, cfg, out_dir=out_dir, meta=meta, until=until, deadline=deadline)


# ----------------------------------------------------------------------------- the refine stage

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
