"""What a training run is asked to do and what it gives back: :class:`TrainConfig` (the optimisation settings
and the learning-rate schedule), :class:`TrainResult`, and :func:`resolve_device`.

The learning rate is a function of the step alone (linear warm-up, then cosine decay), so a resumed run takes
the steps a straight run would.  ``batch_size`` is the global batch of a step, over all ranks; ``micro_batch``
only splits a rank's shard of it to fit in memory.  :data:`RESULT_NEUTRAL` names the settings that do not change
the trained weights: a run resumes with other values of them, and a cache keyed by a run's settings leaves
them out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..config import Config


@dataclass
class TrainConfig(Config):
    """Optimisation settings.  Steps count optimizer updates; intervals of 0 mean 'only at the end'."""

    steps: int = 1000
    batch_size: int = 32  # the global batch of a step, over all ranks
    micro_batch: int = 0  # images per forward on one rank, accumulated to the batch; 0 = a rank's whole shard
    lr: float = 2e-3
    warmup: int = 100
    min_lr_ratio: float = 0.02  # the cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    ema: float = 0.0  # EMA decay; 0 = off
    eval_every: int = 0
    ckpt_every: int = 0
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    bf16: bool = True  # autocast to bf16 on CUDA (ignored on CPU)
    progress: bool = True

    def lr_at(self, step: int) -> float:
        """Linear warm-up to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at the last step."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


# Settings that do not change the trained weights; a run may be resumed with other values.
# ``micro_batch`` changes only the summation order and the batches of batch-coupled terms, as the world size does
# (which is not a setting at all): a run moved to fewer or smaller GPUs resumes with another micro-batch.
RESULT_NEUTRAL = {"progress", "device", "eval_every", "ckpt_every", "log_every", "micro_batch"}


@dataclass
class TrainResult:
    model: torch.nn.Module
    ema: torch.nn.Module | None
    history: list[dict] = field(default_factory=list)  # one row per logged step / evaluation
    step: int = 0
    seconds: float = 0.0  # wall-clock seconds spent in training steps, summed over resumes

    @property
    def best_model(self) -> torch.nn.Module:
        """The EMA model when EMA is on, else the trained model."""
        return self.ema if self.ema is not None else self.model


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    return torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                        ("cpu" if device == "auto" else device))
