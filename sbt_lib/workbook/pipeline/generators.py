"""The generator over a frozen tokenizer's tokens (paper §3.2): a class-conditional SiT of ``P.generator`` built for
cached tokens (:func:`~sbt_lib.workbook.pipeline.caches.token_cache`), trained by flow matching through the engine,
sampled in batches, and its tokens decoded back to images by the tokenizer.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ...data.cache import FeatureCache
from ...generation.samplers import sample
from ...generation.transport import FlowMatchingLoss, TokenNormalizer
from ...models.sit import SiT
from ...models.tokenizer import SelfBootTok
from ...train import TrainResult, train
from ..config.params import Params
from .caches import token_cache


def build_generator(P: Params, tokens: FeatureCache, train_set) -> tuple[SiT, TokenNormalizer]:
    """An untrained class-conditional SiT of ``P.generator`` for the cached ``tokens`` of ``train_set``, and the
    tokens' per-channel normaliser.  With ``P.generator.prior == "gaussian"`` its Gaussian prior is fitted to the
    normalised tokens here, so this untrained model already samples each class's Gaussian (the anchor)."""
    g = P.generator
    normalizer = TokenNormalizer(tokens.shape[-1]).fit(tokens.features)
    torch.manual_seed(P.seed)
    model = SiT(num_tokens=tokens.shape[0], token_dim=tokens.shape[-1], num_classes=len(train_set.classes),
                size=g.size, class_dropout=g.class_dropout, prior=g.prior, patch=g.patch)
    if model.prior is not None:
        model.prior.fit(normalizer.normalize(tokens.features.float()), train_set.targets)
    return model, normalizer


def train_generator(P: Params, tokenizer: SelfBootTok, train_set, out_dir: Path, groups: str = "global",
                    tokens: FeatureCache | None = None, progress: bool = True, eval_fn=None,
                    first_cycle: tuple[SiT, float] | None = None) -> TrainResult:
    """A class-conditional SiT of ``P.generator`` (:func:`build_generator`) trained by flow matching on the
    cached tokens of ``tokenizer`` (``groups``: ``global`` or ``all``), through the training engine
    (checkpoints, resume, the NaN guard).  The normaliser and the Gaussian prior are saved with it.
    ``eval_fn(model)``, every ``P.training.eval_every`` steps: e.g. the distribution distance of its samples.

    With ``P.generator.restart_steps`` it trains in two cosine cycles, each a run of the engine: the first in
    ``out_dir``, the second (:func:`final_run`) from the first's EMA weights with a fresh optimizer.
    ``first_cycle`` (a SiT and its training seconds, e.g. a shipped generator trained by the first cycle's recipe)
    stands in for the first run.  The result's ``step`` and ``seconds`` count both cycles."""
    tokens = tokens if tokens is not None else token_cache(tokenizer, train_set, P, groups, progress)
    g = P.generator
    model, normalizer = build_generator(P, tokens, train_set)
    cfg = replace(P.training, steps=g.steps, batch_size=g.batch_size, lr=g.lr, ema=g.ema, progress=progress)
    meta = {"generator": model.cfg.to_dict(), "groups": groups, "tokens": tokens.name,
            "tokenizer": tokenizer.cfg.to_dict(), "time_sampling": g.time_sampling}
    loss = FlowMatchingLoss(tokens, normalizer, g.time_sampling)
    if not g.restart_steps:
        return train(model, loss, train_set, cfg, out_dir=out_dir, eval_fn=eval_fn, meta=meta)
    if first_cycle is None:
        first = train(model, loss, train_set, cfg, out_dir=out_dir, eval_fn=eval_fn, meta=meta)
        start, seconds = first.best_model, first.seconds
    else:
        start, seconds = first_cycle
    model.load_state_dict(start.state_dict())
    cycle = replace(cfg, steps=g.restart_steps, lr=g.restart_lr)
    second = train(model, loss, train_set, cycle, out_dir=final_run(out_dir, P), eval_fn=eval_fn,
                   meta={**meta, "cycle": 2, "first_steps": g.steps})
    return replace(second, step=g.steps + second.step, seconds=seconds + second.seconds)


def final_run(out_dir: str | Path, P: Params) -> Path:
    """The run folder that holds the finished generator of :func:`train_generator`: ``out_dir``, or its
    ``restart`` folder when the training has a second cycle."""
    return Path(out_dir) / "restart" if P.generator.restart_steps else Path(out_dir)


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
                    batch_size: int = 250, guidance_from: float = 0.0, **options) -> torch.Tensor:
    """Tokens (in token units) of ``classes`` sampled from ``generator`` in batches, seeded by ``seed``, guided by
    ``scale`` for t ≥ ``guidance_from``."""
    device = next(generator.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    norm = normalizer.to(device)
    return torch.cat([norm.denormalize(sample(generator, classes[i:i + batch_size].to(device), sampler, steps, scale,
                                              (guidance_from, 1.0), generator=gen, stats=stats, **options))
                      for i in range(0, len(classes), batch_size)])


@torch.no_grad()
def generate_images(tokenizer: SelfBootTok, generator: SiT, normalizer: TokenNormalizer, classes: torch.Tensor,
                    groups: str = "global", sampler: str = "heun", steps: int = 20, scale: float = 1.0,
                    seed: int = 0, stats: dict | None = None, guidance_from: float = 0.0) -> torch.Tensor:
    """Images (clamped to [-1, 1], on the CPU) of ``classes``: tokens sampled from ``generator``, mapped back
    by ``normalizer``, then decoded — through :meth:`~SelfBootTok.decode_from_global` (the aligners
    bootstrap the local tokens) for ``global``, or split into the groups and decoded directly for ``all``."""
    z = generate_tokens(generator, normalizer, classes, sampler, steps, scale, seed, stats, guidance_from=guidance_from)
    return decode_tokens(tokenizer, z, groups)
