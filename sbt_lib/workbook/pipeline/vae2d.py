"""The 2D side of ``L_OT`` (paper §3.3): the small 2D VAE of :mod:`sbt_lib.models.vae2d`, trained once per data set
with its own loss and cached, so the OT term reads fixed 2D latents during tokenizer training.  A frozen input of the
objective, made by the pipeline (:func:`~sbt_lib.workbook.pipeline.caches.latents_2d_cache` reads its latents)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ...data.datasets import dataset_fingerprint
from ...files import cache_dir, content_key
from ...models.vae2d import VAE2D, VAE2DConfig
from ...train import RESULT_NEUTRAL, TrainConfig, train


class VAELoss:
    """The training loss of the 2D VAE: mean squared error + ``kl_weight`` × KL per pixel."""

    def __call__(self, model: VAE2D, batch) -> dict[str, torch.Tensor]:
        recon, kl = model(batch.images)
        return {"rec": F.mse_loss(recon, batch.images), "kl": model.cfg.kl_weight * kl.mean() / batch.images[0].numel()}


def train_vae2d(train_set, cfg: VAE2DConfig | None = None, *, steps: int = 600, batch_size: int = 64,
                lr: float = 2e-3, seed: int = 0, cache: str | Path | None = None, progress: bool = True) -> VAE2D:
    """Train the 2D VAE on ``train_set`` once and cache it.

    The run folder is ``<cache>/vae2d/<key>``, where the key hashes the data set's images and every
    setting that changes the weights (not ``progress``), so the same call returns the cached model at once;
    an interrupted run resumes.
    Trains on the default device (CUDA when present); returns the model on the CPU, frozen."""
    cfg = cfg or VAE2DConfig(image_size=train_set.images.shape[-1])
    train_cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup=min(50, steps // 10), seed=seed,
                            weight_decay=0.0, progress=progress, log_every=max(1, steps // 20))
    settings = {k: v for k, v in train_cfg.to_dict().items() if k not in RESULT_NEUTRAL}  # progress bar or not: one VAE
    spec = {"vae": cfg.to_dict(), "train": settings, "data": dataset_fingerprint(train_set)}
    key = content_key(spec, length=12)
    folder = Path(cache or cache_dir()) / "vae2d" / f"{train_set.name}-{key}"
    torch.manual_seed(seed)
    model = VAE2D(cfg)
    result = train(model, VAELoss(), train_set, train_cfg, out_dir=folder, meta={"vae": cfg.to_dict()})
    return result.model.cpu().eval().requires_grad_(False)
