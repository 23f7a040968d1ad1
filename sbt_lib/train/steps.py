"""What an optimizer step runs and updates: the loss as one module (:class:`LossStep`, what DDP wraps), a loss's
critic (:class:`CriticStep`), their optimizers (:func:`adamw`), and the small pieces every step shares (the
learning rate, bf16 autocast, gradient clipping).

A loss is a callable ``loss_fn(model, batch)`` returning a dict of already-weighted terms.  When it is an
``nn.Module`` with parameters of its own (alignment projectors, say), they train with the model in the same
optimizer.  A loss module with a critic (a GAN's discriminator) says so through :class:`CriticLoss`: its
``critic()`` module gets an optimizer of its own, and after every model step on which ``critic_active(step)``
holds, the engine takes a critic step on ``critic_terms(batch)`` (the images and the outputs of that same step).

Under data parallelism (a process group initialised by ``torchrun``, even of one process) the model *and its
loss* are wrapped in PyTorch's :class:`~torch.nn.parallel.DistributedDataParallel` as one module whose forward is
the loss, so gradients are averaged whichever methods of the model the loss calls; a critic gets a DDP wrapper
of its own (:func:`wrap_ddp`).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..batch import Batch
from .config import TrainConfig

LossFn = Callable[[torch.nn.Module, Batch], dict[str, torch.Tensor]]


class CriticLoss(Protocol):
    """What a loss module with a critic of its own (a GAN) offers the engine.  The engine knows
    nothing else about it: the tokenizer objective implements it for its adversarial term."""

    def critic(self) -> torch.nn.Module | None: ...  # trained by its own optimizer; None: no critic

    def critic_active(self, step: int) -> bool: ...  # whether step ``step`` is followed by a critic step

    def critic_terms(self, batch: Batch) -> dict[str, torch.Tensor]: ...  # the critic's weighted loss terms


class LossStep(nn.Module):
    """The model and its loss as one module whose forward is one evaluation of the loss: what DDP wraps.

    DDP averages the gradients of the parameters of the module it wraps, during the backward pass of that
    module's forward.  The losses call the model's methods (``encode``, ``decode_from_global``...), not
    its ``forward``, so the model alone cannot be wrapped; this module's forward runs the whole loss, and
    every parameter the loss reaches (the model's and the loss's own, e.g. REPA's projectors) is averaged."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss = loss_fn if isinstance(loss_fn, nn.Module) else None
        self.loss_fn = None if self.loss is not None else loss_fn

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return (self.loss or self.loss_fn)(self.model, batch)


class CriticStep(nn.Module):
    """A loss's critic with a forward that computes the critic's terms (what the critic's DDP wraps)."""

    def __init__(self, loss: CriticLoss):
        super().__init__()
        self.critic = loss.critic()
        object.__setattr__(self, "_loss", loss)  # not a submodule: the critic's DDP owns the critic only

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self._loss.critic_terms(batch)


def wrap_ddp(module: nn.Module, device: torch.device, ignore: nn.Module | None = None) -> DistributedDataParallel:
    """``module`` under DDP on ``device``, leaving out the parameters and buffers of ``ignore`` (a critic,
    trained by its own optimizer and its own DDP).  Every trainable parameter must take part in every step's
    loss (true of the tokenizer, stage 2 and the generator; a frozen part has ``requires_grad=False``), so
    DDP skips the extra graph traversal of ``find_unused_parameters``; if a new loss breaks this, DDP's
    error says so."""
    if ignore is not None:
        skip = {id(t) for t in (*ignore.parameters(), *ignore.buffers())}
        names = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if id(t) in skip]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)
    index = None
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
    return DistributedDataParallel(module, device_ids=[index] if index is not None else None,
                                   find_unused_parameters=False, gradient_as_bucket_view=True)


def gradient_sync(module: nn.Module, last: bool):
    """The context of one micro-batch's backward: DDP exchanges the accumulated gradients on the ``last``
    micro-batch only; without DDP there is nothing to hold back."""
    if isinstance(module, DistributedDataParallel) and not last:
        return module.no_sync()
    return contextlib.nullcontext()


def adamw(modules: list[torch.nn.Module], cfg: TrainConfig, exclude=()) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``modules`` (but those in ``exclude``); no weight decay
    on biases, norms, embeddings and codebooks (tensors with < 2 dims or named like a position /
    token / codebook table)."""
    decay, no_decay = [], []
    skip_ids = {id(p) for p in exclude}
    named = [(n, p) for m in modules for n, p in m.named_parameters()]
    for name, p in named:
        if not p.requires_grad or id(p) in skip_ids:
            continue
        skip = p.ndim < 2 or any(k in name for k in ("pos", "latents", "queries", "codebook"))
        (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, foreach=True)  # one kernel per op, CPU too


def set_lr(optimizers: list[torch.optim.Optimizer], lr: float) -> None:
    """The learning rate of every parameter group of ``optimizers``."""
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = lr


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when ``bf16`` holds; a no-op context on the CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")


def clip_and_step(opt: torch.optim.Optimizer, grad_clip: float, params: list | None = None) -> torch.Tensor:
    """Clip the gradient norm of ``params`` (default: every parameter ``opt`` updates) to ``grad_clip`` (0: no
    clipping, the norm still measured), then step ``opt``; returns the norm before clipping."""
    params = [p for group in opt.param_groups for p in group["params"]] if params is None else params
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or float("inf"))
    opt.step()
    return grad_norm
