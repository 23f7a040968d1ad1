"""sbt_lib — the library behind the SelfBootTok workbook.

Subpackages map onto the paper; dependencies point one way, down this list (``tests/test_layout.py``):

- top level: ``config`` (strict dataclass configs), ``files`` (the repository root, atomic writes,
  content keys), ``batch`` (which images a training step draws), ``checkpoint``, ``weights`` (the one
  resolver of pretrained weights);
- ``train``: the training engine (its settings, the steps, stops, RNG streams, checkpoints and resume, the loop);
- ``data``: the built-in sets, CIFAR-10 and image folders, and per-image feature caches;
- ``models``: blocks, SoftVQ, the local aligners, the SelfBootTok tokenizer, PCA (the linear code it
  starts from), the 2D VAE, the discriminator, frozen pretrained encoders (teachers, LPIPS);
- ``objective``: the tokenizer loss (Eq. 4-5) and its terms — perceptual, adversarial, REPA, OT;
- ``eval``: PSNR/SSIM and the anchors, FD/KID and LPIPS, linear probes, FLOPs, the reconstruction report;
- ``workbook``: ``config`` (scales and typed parameters), ``report`` (figures, tables, analysis, the results
  page), ``pipeline`` (caches, trainers, the generator, ablations and studies), ``cli`` (the papermill runner,
  the ``train`` / ``evaluate`` commands).

The names most code needs are re-exported here (imported on first use, so ``import sbt_lib`` stays light):
``from sbt_lib import SelfBootTok, TokenizerConfig, Objective, ObjectiveConfig, TrainConfig``.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "SelfBootTok": "models.tokenizer", "TokenizerConfig": "models.tokenizer_config", "SoftVQ": "models.quantizer",
    "PCA": "models.pca", "Objective": "objective.objective", "ObjectiveConfig": "objective.objective",
    "TrainConfig": "train", "load_dataset": "data.datasets", "psnr": "eval.metrics",
    "ssim": "eval.metrics", "resolve": "workbook.config.params", "Params": "workbook.config.params",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sbt_lib' has no attribute {name!r}")
