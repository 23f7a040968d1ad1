"""A run's data and what is computed once from it: the data sets of ``P.data``, and the per-image caches of frozen
networks that training reads besides the images (the 2D VAE's latents, the teachers' pooled features, a frozen
encoder's global tokens, a frozen tokenizer's reconstructions or tokens), each computed once on the training device
and named by what made it (:class:`~sbt_lib.data.cache.FeatureCache`), so that reruns and every run of a sweep share
it.

Each function takes the run's :class:`~sbt_lib.workbook.config.params.Params` (or one of its typed
sections), so a notebook stays a page of narrative, calls and plots.
"""
from __future__ import annotations

import torch

from ...data.cache import FeatureCache, OnlineFeatures
from ...data.datasets import LazyImageFolder, load_dataset, resolve_dataset_name
from ...eval.reconstruction import held_out_images
from ...files import content_key
from ...models.teachers import load_teacher
from ...models.tokenizer import SelfBootTok
from ...models.two_stage import frozen_state
from ...models.vae2d import VAE2D, VAE2DConfig
from ...objective.objective import FrozenInput
from ...objective.repa import patches_to_tokens, teacher_tokens
from ...train import resolve_device
from ..config.params import Params
from .vae2d import train_vae2d


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


def test_images(P: Params, n: int) -> torch.Tensor:
    """``n`` images of ``P``'s test split, evenly spaced over a class-balanced subset of that size: the reference
    set of a generator's samples, which may need more test images than ``P.data.test_size`` holds."""
    name, _ = resolve_dataset_name(P.data.dataset)
    test = load_dataset(name, "test", size=n, image_size=P.tokenizer.image_size, seed=P.seed)
    return held_out_images(test, n)


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


def frozen_input(need: FrozenInput, P: Params, train_set, progress: bool = True) -> FeatureCache:
    """The cache of one frozen input the objective declares (:meth:`~sbt_lib.objective.objective.ObjectiveConfig.\
frozen_inputs`): the 2D latents or a teacher's pooled features of every training image."""
    if need.kind == "latents_2d":
        return latents_2d_cache(P, train_set, progress)
    if need.kind == "teacher":
        return teacher_cache(need.teacher, P, train_set, need.tokens, progress)
    raise ValueError(f"unknown frozen input {need.kind!r}: latents_2d or teacher")


def weights_key(state: dict[str, torch.Tensor], length: int | None = None) -> str:
    """A content key of a model's tensors (names and values): what names a cache of that model's outputs."""
    kw = {} if length is None else {"length": length}
    return content_key(*[x for k, v in state.items() for x in (k, v)], **kw)


def global_token_cache(model: SelfBootTok, train_set, P: Params, progress: bool = True) -> FeatureCache:
    """``z_global`` of every training image under the frozen encoder and global codebook of ``model``,
    computed once on the training device and kept in float32 (exact); named by those frozen weights, so
    every stage-2 run of one stage-1 tokenizer shares it."""
    device = resolve_device(P.training.device)
    frozen = frozen_state(model)
    key = weights_key(frozen)
    encoder = model.to(device).eval().encode_global
    return FeatureCache(encoder, train_set, f"zglobal-{key}", dtype=torch.float32, device=device, progress=progress)


def reconstruction_cache(model: SelfBootTok, train_set, P: Params, progress: bool = True) -> FeatureCache:
    """The frozen ``model``'s reconstruction of every image of ``train_set``, computed once (float16: a rounding
    error near 1e-3 of the [-1, 1] range); named by all of the model's weights."""
    device = resolve_device(P.training.device)
    model = model.to(device).eval()
    key = weights_key(model.state_dict(), length=12)
    return FeatureCache(lambda x: model(x)[0], train_set, f"recon-{key}", device=device, progress=progress)


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
    key = weights_key(model.state_dict(), length=12)
    if groups == "global":
        encoder = model.encode_global
    else:
        def encoder(images):
            enc = model.encode(images)
            return torch.cat([enc.tokens[g] for g in model.cfg.groups], dim=1)
    return FeatureCache(encoder, train_set, f"tokens-{groups}-{key}", dtype=torch.float32, device=device,
                        progress=progress)
