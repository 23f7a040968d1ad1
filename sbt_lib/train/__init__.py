"""The training engine shared by every notebook: AdamW with linear warm-up and cosine decay, gradient clipping,
optional EMA (timm's ``ModelEmaV3``), a tqdm progress bar, periodic held-out evaluation, bf16 autocast on CUDA,
atomic safetensors checkpoints with exact resume, data parallelism under ``torchrun`` (see
:mod:`sbt_lib.distributed`), and stops that leave a good checkpoint behind.

One concept a module:

- :mod:`~sbt_lib.train.config`: what a run is asked to do (:class:`TrainConfig`, the learning-rate schedule) and
  what it gives back (:class:`TrainResult`);
- :mod:`~sbt_lib.train.steps`: what a step runs and updates: the loss, and a GAN's critic, as modules DDP wraps
  (the :class:`CriticLoss` protocol), their optimizers, autocast and clipping;
- :mod:`~sbt_lib.train.stopping`: a non-finite loss, a held Ctrl-C or SIGTERM, and the deadline, agreed on by
  every rank;
- :mod:`~sbt_lib.train.rng`: every rank's random stream, saved and restored;
- :mod:`~sbt_lib.train.state`: a run folder's checkpoint, its resume, and the check that it holds this run;
- :mod:`~sbt_lib.train.trainer`: :class:`Trainer`, the loop that puts them together, and :func:`train`.

May import: the top level of ``sbt_lib`` only (``config``, ``batch``, ``checkpoint``, ``distributed``).
"""
from .config import RESULT_NEUTRAL, TrainConfig, TrainResult, resolve_device
from .state import DifferentRunError
from .steps import CriticLoss, LossFn
from .stopping import NonFiniteLossError
from .trainer import EvalFn, Trainer, train

__all__ = ["RESULT_NEUTRAL", "CriticLoss", "DifferentRunError", "EvalFn", "LossFn", "NonFiniteLossError",
           "TrainConfig", "TrainResult", "Trainer", "resolve_device", "train"]
