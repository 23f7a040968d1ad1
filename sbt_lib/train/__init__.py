"""The training engine shared by every notebook: AdamW with linear warm-up and cosine decay, gradient clipping,
optional EMA, periodic held-out evaluation, atomic checkpoints with exact resume, data parallelism under
``torchrun``, and stops that leave a good checkpoint behind (:mod:`~sbt_lib.train.trainer`).

May import: the top level of ``sbt_lib`` only (``config``, ``batch``, ``checkpoint``, ``distributed``).
"""
from .trainer import (RESULT_NEUTRAL, CriticLoss, DifferentRunError, EvalFn, LossFn, NonFiniteLossError, TrainConfig,
                      Trainer, TrainResult, resolve_device, train)

__all__ = ["RESULT_NEUTRAL", "CriticLoss", "DifferentRunError", "EvalFn", "LossFn", "NonFiniteLossError",
           "TrainConfig", "TrainResult", "Trainer", "resolve_device", "train"]
