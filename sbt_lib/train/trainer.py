"""The training engine shared by every notebook.

AdamW with linear warm-up and cosine decay, gradient clipping, optional EMA (timm's
``ModelEmaV3``), a tqdm progress bar, periodic held-out evaluation, bf16 autocast on CUDA, and
atomic safetensors checkpoints.

Resume is exact: the batch of step ``t`` is a pure function of (seed, t) (see
:func:`sbt_lib.batch.batch_indices`), the learning rate is a function of ``t``, and the
checkpoint holds the weights, the optimizer moments, the EMA and the RNG state (the CPU's, and every
CUDA device's when CUDA is available).  So ``N`` steps, save, resume, ``N`` steps gives bit-identical
weights to ``2N`` steps straight (on CPU).

Data parallelism (``torchrun``, see :mod:`sbt_lib.distributed`): when a process group is initialised
(``torchrun`` was used, even with one process), the engine wraps the model *and its loss* in PyTorch's
:class:`~torch.nn.parallel.DistributedDataParallel` (one module whose forward is the loss, so gradients are
averaged whichever methods of the model the loss calls; a critic gets a DDP wrapper of its own).
``batch_size`` is the global batch; each rank trains on its own contiguous shard of it
(:func:`~sbt_lib.batch.batch_indices`), split further into micro-batches of ``micro_batch`` with gradient
accumulation when the shard does not fit.  For a loss that is a mean over images, a step is then the same
step at any world size and micro-batch (up to summation order).  Terms computed over the batch as a
whole (Sinkhorn's plan over a batch, the codebook-entropy regulariser, a GAN's adaptive weight) are
computed per micro-batch, as BatchNorm is without synchronisation.  Only the main rank (0) writes
(checkpoints, the history, anything under ``out_dir``) and shows a progress bar; logged values are
averaged over the ranks; evaluation runs on rank 0 while the others wait.  Each rank draws its own random
numbers (rank 0 the stream a single process would; the others are seeded from (seed, rank)), and a
checkpoint keeps every rank's RNG state, so resume at the same world size is exact; a checkpoint resumes
at any other world size too (the data order is exact, the other ranks' random streams start afresh).

Pausing: ``train(..., until=N)`` stops after step ``N`` and ``deadline=T`` after the first step that ends past the
wall-clock time ``T`` (``time.time()``), both with a checkpoint saved and without an error, so that a long run is made
in pieces (the convergence study evaluates a run at chosen steps and stops after a given number of minutes); the
same call again resumes.  Under DDP every rank pauses at the same step (rank 0's clock is not needed: a rank past
the deadline pauses them all, as a held signal does).

Interruption: Ctrl-C (SIGINT) or SIGTERM during a step is held until the step ends; then every rank stops
at that same step, rank 0 saves, and :class:`KeyboardInterrupt` is raised (a second Ctrl-C interrupts at
once).  A non-finite loss on any rank stops every rank with :class:`NonFiniteLossError`, naming the step
and the loss term; nothing is saved after it, so the last good checkpoint stays on disk untouched.  A rank
that crashes ends the others through ``torchrun``; checkpoints are written atomically, so the last good one
survives.

A loss is a callable ``loss_fn(model, batch)`` returning a dict of already-weighted terms.  When it
is an ``nn.Module`` with parameters of its own (alignment projectors, say), they train with the
model in the same optimizer, and its state (parameters and buffers) is part of the checkpoint.
A loss module with a critic (a GAN's discriminator) says so through :class:`CriticLoss`: its
``critic()`` module gets an optimizer of its own, and after every model step on which
``critic_active(step)`` holds, the engine takes a critic step on ``critic_terms(batch)`` (the images
and the outputs of that same step); both optimizers' states are in the checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Protocol

import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .. import distributed as dist
from ..checkpoint import load_checkpoint, prefixed, save_checkpoint, unprefixed, write_json
from ..config import Config
from ..batch import Batch, batch_indices

LossFn = Callable[[torch.nn.Module, Batch], dict[str, torch.Tensor]]
EvalFn = Callable[[torch.nn.Module], dict[str, float]]


class DifferentRunError(ValueError):
    """A run folder holds a checkpoint written with other settings (see ``Trainer._check_same_run``)."""


class CriticLoss(Protocol):
    """What a loss module with a critic of its own (a GAN) offers the engine.  The engine knows
    nothing else about it: the tokenizer objective implements it for its adversarial term."""

    def critic(self) -> torch.nn.Module | None: ...  # trained by its own optimizer; None: no critic

    def critic_active(self, step: int) -> bool: ...  # whether step ``step`` is followed by a critic step

    def critic_terms(self, batch: Batch) -> dict[str, torch.Tensor]: ...  # the critic's weighted loss terms


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf."""


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


def _optimizer(modules: list[torch.nn.Module], cfg: TrainConfig, exclude=()) -> torch.optim.AdamW:
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


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v for i, s in opt.state_dict()["state"].items() for k, v in s.items()}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        i, k = key.split(".", 1)
        state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


def _nonfinite_error(terms: dict[str, torch.Tensor], total: torch.Tensor, step: int) -> NonFiniteLossError:
    bad = [f"{k}={v.item()}" for k, v in terms.items() if not torch.isfinite(v)] or [f"total={total.item()}"]
    return NonFiniteLossError(
        f"non-finite loss at step {step}: {', '.join(bad)}. Training stopped; the last good checkpoint "
        f"(if any) is untouched. Try a lower learning rate, a smaller loss weight, or grad_clip."
    )


def _cuda_rng_tensors() -> dict[str, torch.Tensor]:
    """The RNG state of every CUDA device (``rng.cuda.<device>``), beside ``rng.cpu``; none without CUDA."""
    if not torch.cuda.is_available():
        return {}
    return prefixed("rng.cuda", {str(i): state for i, state in enumerate(torch.cuda.get_rng_state_all())})


def _restore_cuda_rng(tensors: dict[str, torch.Tensor]) -> list[int]:
    """Restore the CUDA RNG states a checkpoint holds to the devices present; returns those restored.

    Older checkpoints hold none, a CPU-only machine restores none, and where the device count
    differs the states of the devices present on both sides are restored."""
    states = unprefixed("rng.cuda", tensors)
    if not states or not torch.cuda.is_available():
        return []
    restored = sorted(int(i) for i in states if int(i) < torch.cuda.device_count())
    for i in restored:
        torch.cuda.set_rng_state(states[str(i)].cpu(), i)
    return restored


def _rank_seed(seed: int, step: int, rank: int) -> int:
    """The seed of rank ``rank``'s random stream when it starts (or restarts) at ``step`` without a saved state."""
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % 2**63


class _LossStep(nn.Module):
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


class _CriticStep(nn.Module):
    """A loss's critic with a forward that computes the critic's terms (what the critic's DDP wraps)."""

    def __init__(self, loss: CriticLoss):
        super().__init__()
        self.critic = loss.critic()
        object.__setattr__(self, "_loss", loss)  # not a submodule: the critic's DDP owns the critic only

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self._loss.critic_terms(batch)


def _ddp(module: nn.Module, device: torch.device, ignore: nn.Module | None = None) -> DistributedDataParallel:
    """``module`` under DDP on ``device``, leaving out the parameters and buffers of ``ignore`` (a critic,
    trained by its own optimizer and its own DDP).  Every trainable parameter must take part in every step's
    loss (true of the tokenizer, stage 2 and the generator; a frozen part has ``requires_grad=False``), so
    DDP skips the extra graph traversal of ``find_unused_parameters``; if a new loss breaks this, DDP's
    error says so."""
    if ignore is not None:
        skip = {id(t) for t in (*ignore.parameters(), *ignore.buffers())}
        names = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if id(t) in skip]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)
    index = (device.index if device.index is not None else torch.cuda.current_device()) if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=[index] if index is not None else None,
                                   find_unused_parameters=False, gradient_as_bucket_view=True)


class _HeldSignals:
    """SIGINT and SIGTERM while training are held until the running step ends (so a checkpoint never holds a
    half-applied optimizer step).  A second SIGINT interrupts at once, except under ``torchrun``, whose
    agent forwards the terminal's Ctrl-C a second time (and kills what has not stopped after 30 s).  Only
    in the main thread (where Python delivers signals); elsewhere signals behave as usual."""

    def __init__(self):
        self.received: int | None = None
        self._old: dict[int, object] = {}
        self._second_interrupts = not dist.launched_by_torchrun()

    def _handler(self, signum, frame):
        if self._second_interrupts and self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = self.received or signum

    def __enter__(self) -> "_HeldSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Trainer:
    """Runs :func:`train`; kept as a class so that save/resume share one definition of 'state'."""

    def __init__(self, model, loss_fn: LossFn, data, cfg: TrainConfig, out_dir=None, eval_fn: EvalFn | None = None,
                 meta: dict | None = None):
        self.cfg, self.loss_fn, self.data, self.eval_fn = cfg, loss_fn, data, eval_fn
        self.rank, self.world_size = dist.rank_and_world_size()
        shard = cfg.batch_size // self.world_size
        if cfg.batch_size % self.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} does not split evenly over {self.world_size} ranks: "
                             f"choose a multiple of {self.world_size}")
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        self.loss_module = loss_fn.to(self.device) if isinstance(loss_fn, torch.nn.Module) else None
        self.critic = self.loss_module.critic() if hasattr(self.loss_module, "critic") else None
        if self.critic is not None and cfg.micro_batch and cfg.micro_batch < shard:
            raise ValueError(f"micro_batch={cfg.micro_batch} below a rank's {shard} images is not supported with a "
                             "critic (GAN): its step needs the whole shard's reconstructions. Use more ranks or a "
                             "smaller batch_size instead")
        disc = list(self.critic.parameters()) if self.critic is not None else []
        self.opt = _optimizer([self.model] + ([self.loss_module] if self.loss_module is not None else []), cfg,
                              exclude=disc)
        self.opt_d = _optimizer([self.critic], cfg) if self.critic is not None else None
        self.step_module: nn.Module = _LossStep(self.model, loss_fn)
        self.critic_module: nn.Module | None = _CriticStep(self.loss_module) if self.critic is not None else None
        if dist.in_process_group():  # under torchrun, even of one process; rank 0's weights are broadcast here
            self.step_module = _ddp(self.step_module, self.device, ignore=self.critic)
            if self.critic_module is not None:
                self.critic_module = _ddp(self.critic_module, self.device)
            if self.rank:
                torch.manual_seed(_rank_seed(cfg.seed, 0, self.rank))
        self.ema = ModelEmaV3(self.model, decay=cfg.ema) if cfg.ema > 0 else None  # of the broadcast weights
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.meta = meta or {}
        self.step, self.seconds, self.history = 0, 0.0, []
        self.signals = _HeldSignals()  # installed while run() runs
        self.deadline: float | None = None  # time.time() after which run() pauses (see the module docstring)

    @property
    def is_main(self) -> bool:
        """Whether this process is the main rank: the only one that writes (checkpoints, logs, out_dir)."""
        return self.rank == 0

    # -------------------------------------------------------------------- checkpoints
    @property
    def ckpt_path(self) -> Path | None:
        return self.out_dir / "checkpoint" if self.out_dir is not None else None

    def _rng_tensors(self, collective: bool = True) -> dict[str, torch.Tensor]:
        """Every rank's RNG state: rank 0's as ``rng.cpu`` and ``rng.cuda.<device>`` (as a single process
        saves it), rank r's as ``rng.rank.<r>.cpu`` and ``.cuda``.  Under DDP a collective (every rank calls
        it) unless ``collective`` is false, then only rank 0's state."""
        if self.world_size == 1:
            return {"rng.cpu": torch.get_rng_state(), **_cuda_rng_tensors()}
        own = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            own["cuda"] = torch.cuda.get_rng_state(self.device)
        states = dist.all_objects(own) if collective else [own]
        tensors = {"rng.cpu": states[0]["cpu"]}
        if "cuda" in states[0]:
            tensors[f"rng.cuda.{self.device.index or 0}"] = states[0]["cuda"]
        for r, state in enumerate(states[1:], start=1):
            tensors.update(prefixed(f"rng.rank.{r}", state))
        return tensors

    def _restore_rng(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.rank == 0:
            torch.set_rng_state(tensors["rng.cpu"].cpu())
            if self.world_size == 1:
                _restore_cuda_rng(tensors)
            elif f"rng.cuda.{self.device.index or 0}" in tensors:
                torch.cuda.set_rng_state(tensors[f"rng.cuda.{self.device.index or 0}"].cpu(), self.device)
            return
        own = unprefixed(f"rng.rank.{self.rank}", tensors)
        if "cpu" not in own:  # saved at a smaller world size: this rank starts a fresh stream
            torch.manual_seed(_rank_seed(self.cfg.seed, self.step, self.rank))
            return
        torch.set_rng_state(own["cpu"].cpu())
        if "cuda" in own and self.device.type == "cuda":
            torch.cuda.set_rng_state(own["cuda"].cpu(), self.device)

    def save(self, collective: bool = True) -> None:
        """Write the checkpoint and the history into ``out_dir`` (rank 0 writes; under DDP every rank calls
        this, to hand over its RNG state, unless ``collective`` is false)."""
        if self.ckpt_path is None:
            return
        rng = self._rng_tensors(collective)
        if self.is_main:
            tensors = {**prefixed("model", self.model.state_dict()), **prefixed("optim", _optimizer_tensors(self.opt)),
                       **rng}
            if self.ema is not None:
                tensors.update(prefixed("ema", self.ema.module.state_dict()))
            if self.loss_module is not None:
                tensors.update(prefixed("loss", self.loss_module.state_dict()))
            if self.opt_d is not None:
                tensors.update(prefixed("optim_d", _optimizer_tensors(self.opt_d)))
            meta = {"step": self.step, "seconds": self.seconds, "world_size": self.world_size,
                    "train": asdict(self.cfg), **self.meta}
            save_checkpoint(self.ckpt_path, tensors, meta)
            write_json(self.out_dir / "history.json", self.history)
        if collective:
            dist.barrier()  # no rank reads the run folder before it is whole

    def resume(self) -> bool:
        """Load the checkpoint in ``out_dir`` if there is one (written at any world size); True when resumed."""
        if self.ckpt_path is None or not self.ckpt_path.with_suffix(".json").exists():
            return False
        tensors, meta = load_checkpoint(self.ckpt_path, self.device)
        self._check_same_run(meta)
        self.model.load_state_dict(unprefixed("model", tensors))
        _load_optimizer(self.opt, unprefixed("optim", tensors))
        if self.ema is not None:
            self.ema.module.load_state_dict(unprefixed("ema", tensors))
        if self.loss_module is not None:
            self.loss_module.load_state_dict(unprefixed("loss", tensors))
        if self.opt_d is not None:
            _load_optimizer(self.opt_d, unprefixed("optim_d", tensors))
        self.step, self.seconds = meta["step"], meta["seconds"]
        self._restore_rng(tensors)
        history = self.out_dir / "history.json"
        self.history = [r for r in _read_json(history) if r["step"] <= self.step] if history.exists() else []
        return True

    def _check_same_run(self, meta: dict) -> None:
        """Refuse to resume a checkpoint written with other settings: its weights would not fit,
        or would silently continue a different experiment.  A setting the checkpoint predates counts as
        saved at its default."""
        defaults = {f.name: f.default for f in fields(TrainConfig)}
        saved_meta = {k: _with_new_switches(meta.get(k), v) for k, v in self.meta.items()}
        saved = _fingerprint({**defaults, **meta["train"]}, saved_meta)
        current = _fingerprint(asdict(self.cfg), self.meta)
        diff = sorted({k for k in current["train"] if saved["train"].get(k) != current["train"][k]}
                      | {k for k in self.meta if saved[k] != current[k]})
        if diff:
            raise DifferentRunError(
                f"the run folder {self.out_dir} holds a run with different parameters ({', '.join(diff)}): "
                f"choose another output folder, or delete {self.ckpt_path}.* to start afresh"
            )

    # -------------------------------------------------------------------- steps
    def _micro_batches(self, step: int | None = None) -> list[torch.Tensor]:
        """This rank's shard of the global batch of ``step`` (default: the current one), split into micro-batches
        of ``micro_batch``."""
        cfg = self.cfg
        step = self.step if step is None else step
        indices = batch_indices(len(self.data), cfg.batch_size, step, cfg.seed, self.rank, self.world_size)
        return list(indices.split(cfg.micro_batch)) if cfg.micro_batch else [indices]

    def _prefetch_next(self) -> None:
        """Hand the next step's batches to a data set that decodes in the background (a lazily read folder), so
        decoding overlaps this step's compute.  Data sets held in memory have nothing to prefetch."""
        if hasattr(self.data, "prefetch") and self.step + 1 < self.cfg.steps:
            for indices in self._micro_batches(self.step + 1):
                self.data.prefetch(indices)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.cfg.bf16 and self.device.type == "cuda")

    def train_step(self) -> dict:
        """One optimizer step; returns the loss terms (as tensors, converted only when logged) and, under
        ``stop``, whether a signal asks every rank to stop after it, under ``pause``, whether the deadline passed."""
        cfg = self.cfg
        lr = cfg.lr_at(self.step)
        for opt in [o for o in (self.opt, self.opt_d) if o is not None]:
            for g in opt.param_groups:
                g["lr"] = lr
        self.model.train()
        if self.loss_module is not None:
            self.loss_module.train()
        self.opt.zero_grad(set_to_none=True)
        chunks = self._micro_batches()
        self._prefetch_next()
        n = sum(len(c) for c in chunks)
        logged: dict[str, torch.Tensor] = {}
        for k, indices in enumerate(chunks):
            batch = self.data.get_batch(indices, self.step).to(self.device)
            last = k == len(chunks) - 1
            ddp = isinstance(self.step_module, DistributedDataParallel)
            sync = self.step_module.no_sync() if ddp and not last else contextlib.nullcontext()
            with sync:
                with self._autocast():
                    terms = self.step_module(batch)
                total = sum(terms.values())
                stop, pause = self._agree(terms, total, last)
                (total * (len(indices) / n)).backward()
            for key, v in {"loss": total, **terms}.items():
                logged[key] = logged.get(key, 0) + v.detach() * (len(indices) / n)
        params = [p for group in self.opt.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or float("inf"))
        self.opt.step()
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        row = {**logged, "grad_norm": grad_norm, "lr": lr}
        if self.critic is not None and self.loss_module.critic_active(self.step):
            row.update(self._critic_step(batch))
        self.step += 1
        row["stop"], row["pause"] = stop, pause
        return row

    def _agree(self, terms, total, last: bool) -> tuple[bool, bool]:
        """Raise on a non-finite loss (on every rank when any rank has one, before the gradients are
        exchanged) and return whether a held signal on any rank asks to stop after this step, and whether the
        deadline has passed on any rank (one small collective per step under DDP)."""
        finite = bool(torch.isfinite(total))
        stop_requested = self.signals.received is not None
        pause = self.deadline is not None and time.time() >= self.deadline
        if self.world_size > 1 and last:
            bad_anywhere, stop_requested, pause = dist.any_ranks([not finite, stop_requested, pause])
            if bad_anywhere and finite:
                raise NonFiniteLossError(f"non-finite loss at step {self.step} on another rank; every rank "
                                         "stopped. The last good checkpoint (if any) is untouched.")
        if not finite:
            raise _nonfinite_error(terms, total, self.step)
        return stop_requested, pause

    def _critic_step(self, batch) -> dict[str, torch.Tensor]:
        """One step of the critic on this step's images and (detached) reconstructions."""
        self.opt_d.zero_grad(set_to_none=True)
        with self._autocast():
            terms = self.critic_module(batch)
        total = sum(terms.values())
        if not torch.isfinite(total):
            raise _nonfinite_error(terms, total, self.step)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(list(self.critic.parameters()), self.cfg.grad_clip or float("inf"))
        self.opt_d.step()
        return {**{k: v.detach() for k, v in terms.items()}, "d_grad_norm": grad_norm}

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics of the (EMA) model, computed on rank 0; the other ranks wait and get ``{}``."""
        if self.eval_fn is None:
            return {}
        metrics = {}
        if self.is_main:
            model = self.ema.module if self.ema is not None else self.model
            model.eval()
            with torch.no_grad():
                metrics = {f"eval_{k}": v for k, v in self.eval_fn(model).items()}
        dist.barrier()
        return metrics

    def _log_row(self, row: dict) -> dict[str, float]:
        """The logged values as floats, averaged over the ranks."""
        keys = [k for k in row if k not in ("stop", "pause")]
        values = dist.all_mean(torch.stack([torch.as_tensor(row[k], dtype=torch.float64).cpu() for k in keys]))
        return dict(zip(keys, values.tolist()))

    def run(self, until: int | None = None) -> TrainResult:
        """Train to ``cfg.steps``, or pause (a checkpoint saved) after step ``until`` or past ``self.deadline``."""
        cfg = self.cfg
        end = cfg.steps if until is None else min(until, cfg.steps)
        # A slow refresh: on 2 cores, frequent progress messages from a notebook kernel slow the steps.
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (cfg.progress and self.is_main), desc="train",
                   dynamic_ncols=True, mininterval=1.0)
        try:
            with self.signals:
                while self.step < end:
                    t0 = time.perf_counter()
                    row = self.train_step()
                    self.seconds += time.perf_counter() - t0
                    last = self.step == cfg.steps
                    pause = not last and (self.step == end or row["pause"])
                    if self.step % cfg.log_every == 0 or last:
                        logged = self._log_row(row)
                        self.history.append({"step": self.step, "seconds": self.seconds, **logged})
                        bar.set_postfix(loss=f"{logged['loss']:.4f}", lr=f"{logged['lr']:.2e}", refresh=False)
                    if (cfg.eval_every and self.step % cfg.eval_every == 0) or last:
                        self.history.append({"step": self.step, "seconds": self.seconds, **self.evaluate()})
                    if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or last or row["stop"] or pause:
                        self.save()
                    bar.update(1)
                    if row["stop"]:
                        raise KeyboardInterrupt(f"stopped by a signal after step {self.step}; the checkpoint "
                                                "is saved: run again to resume")
                    if pause:
                        break
        finally:
            bar.close()
        return TrainResult(self.model, self.ema.module if self.ema is not None else None,
                           self.history, self.step, self.seconds)


def _with_new_switches(saved, current):
    """``saved`` (a config dict from a checkpoint) with the entries it lacks that are off in ``current``
    (``None``, ``False``, 0): a switch or weight added to a config after the run was saved, off, does not
    make it another run."""
    if not isinstance(saved, dict) or not isinstance(current, dict):
        return saved
    return {**{k: v for k, v in current.items() if k not in saved and (v is None or v is False or v == 0)},
            **saved}


def _read_json(path: Path):
    return json.loads(path.read_text())


# Settings that do not change the trained weights; a run may be resumed with other values.
# ``micro_batch`` changes only the summation order and the batches of batch-coupled terms, as the world size does
# (which is not a setting at all): a run moved to fewer or smaller GPUs resumes with another micro-batch.
RESULT_NEUTRAL = {"progress", "device", "eval_every", "ckpt_every", "log_every", "micro_batch"}


def _fingerprint(train_cfg: dict, meta: dict) -> dict:
    """What determines a run's weights, as it reads back from JSON (tuples become lists)."""
    train_cfg = {k: v for k, v in train_cfg.items() if k not in RESULT_NEUTRAL}
    return json.loads(json.dumps({"train": train_cfg, **meta}))


def train(model: torch.nn.Module, loss_fn: LossFn, data, cfg: TrainConfig | None = None, *, out_dir=None,
          eval_fn: EvalFn | None = None, resume: bool = True, meta: dict | None = None, until: int | None = None,
          deadline: float | None = None) -> TrainResult:
    """Train ``model`` on ``data`` (an :class:`~sbt_lib.data.datasets.ImageDataset`) for ``cfg.steps`` steps.

    ``loss_fn(model, batch)`` (a :class:`~sbt_lib.batch.Batch`) returns a dict of (already weighted)
    loss terms; their sum is minimised and each is logged.  ``eval_fn(model)`` returns held-out metrics (run under
    ``no_grad`` on the EMA model when EMA is on).  With ``out_dir`` the run checkpoints there and,
    when ``resume`` is true and a checkpoint exists, continues from it.  ``meta`` is stored in
    the checkpoint JSON (e.g. the model's configuration).  ``until`` (a step) and ``deadline`` (a ``time.time()``)
    pause the run early with a checkpoint saved (module docstring); the result's ``step`` says where it stopped.
    """
    trainer = Trainer(model, loss_fn, data, cfg or TrainConfig(), out_dir, eval_fn, meta)
    trainer.deadline = deadline
    if resume:
        trainer.resume()
    return trainer.run(until)
