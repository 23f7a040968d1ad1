"""The training loop: :class:`Trainer` puts the engine's parts together and takes the steps; :func:`train` runs it.

Each rank trains on its own contiguous shard of a step's global batch (:func:`~sbt_lib.batch.batch_indices`),
split further into micro-batches of ``micro_batch`` with gradient accumulation when the shard does not fit.  For
a loss that is a mean over images, a step is then the same step at any world size and micro-batch (up to
summation order).  Terms computed over the batch as a whole (Sinkhorn's plan over a batch, the codebook-entropy
regulariser, a GAN's adaptive weight) are computed per micro-batch, as BatchNorm is without synchronisation.
Only the main rank (0) writes (checkpoints, the history, anything under ``out_dir``) and shows a progress bar;
logged values are averaged over the ranks; evaluation runs on rank 0 while the others wait.

Pausing: ``train(..., until=N)`` stops after step ``N`` and ``deadline=T`` after the first step that ends past the
wall-clock time ``T`` (``time.time()``), both with a checkpoint saved and without an error, so that a long run is made
in pieces (the convergence study evaluates a run at chosen steps and stops after a given number of minutes); the
same call again resumes.  Under DDP every rank pauses at the same step (:mod:`.stopping`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from timm.utils import ModelEmaV3
from torch import nn
from tqdm.auto import tqdm

from .. import distributed as dist
from ..batch import batch_indices
from ..checkpoint import load_checkpoint
from .config import TrainConfig, TrainResult, resolve_device
from .rng import RankRNG
from .state import (Part, check_same_run, checkpoint_meta, checkpoint_path, load_state, read_history, save_state,
                    state_tensors)
from .steps import (CriticStep, LossFn, LossStep, adamw, autocast, clip_and_step, gradient_sync, set_lr,
                    wrap_ddp)
from .stopping import HeldSignals, agree, nonfinite_error

EvalFn = Callable[[torch.nn.Module], dict[str, float]]


def _shard_size(cfg: TrainConfig, world_size: int) -> int:
    """The images of a step's global batch that one rank takes: the batch must split evenly over the ranks."""
    if cfg.batch_size % world_size:
        raise ValueError(f"batch_size {cfg.batch_size} does not split evenly over {world_size} ranks: "
                         f"choose a multiple of {world_size}")
    return cfg.batch_size // world_size


class Trainer:
    """Runs :func:`train`: builds the step's modules and optimizers from the model and the loss, then takes the
    steps, logging, evaluating and saving as due.  A class so that save and resume share one definition of the
    run's state (:meth:`_parts`)."""

    def __init__(self, model, loss_fn: LossFn, data, cfg: TrainConfig, out_dir=None, eval_fn: EvalFn | None = None,
                 meta: dict | None = None):
        self.cfg, self.loss_fn, self.data, self.eval_fn = cfg, loss_fn, data, eval_fn
        self.rank, self.world_size = dist.rank_and_world_size()
        shard = _shard_size(cfg, self.world_size)
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        self.loss_module = loss_fn.to(self.device) if isinstance(loss_fn, torch.nn.Module) else None
        self.critic = self.loss_module.critic() if hasattr(self.loss_module, "critic") else None
        if self.critic is not None and cfg.micro_batch and cfg.micro_batch < shard:
            raise ValueError(f"micro_batch={cfg.micro_batch} below a rank's {shard} images is not supported with a "
                             "critic (GAN): its step needs the whole shard's reconstructions. Use more ranks or a "
                             "smaller batch_size instead")
        self.opt, self.opt_d = self._optimizers()
        self.step_module, self.critic_module = self._step_modules()  # under DDP, rank 0's weights are broadcast here
        self.rng = RankRNG(self.rank, self.world_size, self.device, cfg.seed)
        self.rng.start()  # rank 0 goes on with the stream a single process would draw; the others start their own
        self.ema = ModelEmaV3(self.model, decay=cfg.ema) if cfg.ema > 0 else None  # of the broadcast weights
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.meta = meta or {}
        self.step, self.seconds, self.history = 0, 0.0, []
        self.signals = HeldSignals()  # installed while run() runs
        self.deadline: float | None = None  # time.time() after which run() pauses (see the module docstring)

    def _optimizers(self) -> tuple[torch.optim.AdamW, torch.optim.AdamW | None]:
        """The model's optimizer (with the loss module's own parameters, but the critic's) and the critic's."""
        trained = [self.model] + ([self.loss_module] if self.loss_module is not None else [])
        critic = list(self.critic.parameters()) if self.critic is not None else []
        opt = adamw(trained, self.cfg, exclude=critic)
        return opt, (adamw([self.critic], self.cfg) if self.critic is not None else None)

    def _step_modules(self) -> tuple[nn.Module, nn.Module | None]:
        """The loss step and the critic step (:mod:`.steps`), each under DDP in a process group (under
        ``torchrun``, even of one process)."""
        step = LossStep(self.model, self.loss_fn)
        critic = CriticStep(self.loss_module) if self.critic is not None else None
        if dist.in_process_group():
            step = wrap_ddp(step, self.device, ignore=self.critic)
            critic = wrap_ddp(critic, self.device) if critic is not None else None
        return step, critic

    @property
    def is_main(self) -> bool:
        """Whether this process is the main rank: the only one that writes (checkpoints, logs, out_dir)."""
        return self.rank == 0

    # -------------------------------------------------------------------- checkpoints
    @property
    def ckpt_path(self) -> Path | None:
        return checkpoint_path(self.out_dir) if self.out_dir is not None else None

    def _parts(self) -> dict[str, Part]:
        """What the checkpoint holds besides the RNG states, by prefix (:mod:`.state`)."""
        parts = {"model": self.model, "optim": self.opt, "ema": self.ema.module if self.ema is not None else None,
                 "loss": self.loss_module, "optim_d": self.opt_d}
        return {prefix: part for prefix, part in parts.items() if part is not None}

    def save(self, collective: bool = True) -> None:
        """Write the checkpoint and the history into ``out_dir`` (rank 0 writes; under DDP every rank calls
        this, to hand over its RNG state, unless ``collective`` is false)."""
        if self.ckpt_path is None:
            return
        rng = self.rng.tensors(collective)
        if self.is_main:
            meta = checkpoint_meta(self.step, self.seconds, self.world_size, self.cfg, self.meta)
            save_state(self.out_dir, {**state_tensors(self._parts()), **rng}, meta, self.history)
        if collective:
            dist.barrier()  # no rank reads the run folder before it is whole

    def resume(self) -> bool:
        """Load the checkpoint in ``out_dir`` if there is one (written at any world size); True when resumed."""
        if self.ckpt_path is None or not self.ckpt_path.with_suffix(".json").exists():
            return False
        tensors, meta = load_checkpoint(self.ckpt_path, self.device)
        check_same_run(meta, self.cfg, self.meta, self.out_dir)
        load_state(self._parts(), tensors)
        self.step, self.seconds = meta["step"], meta["seconds"]
        self.rng.restore(tensors, self.step)
        self.history = read_history(self.out_dir, self.step)
        return True

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
        return autocast(self.device, self.cfg.bf16)

    def train_step(self) -> dict:
        """One optimizer step; returns the loss terms (as tensors, converted only when logged) and, under
        ``stop``, whether a signal asks every rank to stop after it, under ``pause``, whether the deadline passed."""
        lr = self.cfg.lr_at(self.step)
        set_lr([o for o in (self.opt, self.opt_d) if o is not None], lr)
        self.model.train()
        if self.loss_module is not None:
            self.loss_module.train()
        self.opt.zero_grad(set_to_none=True)
        logged, batch, stop, pause = self._accumulate_gradients()
        grad_norm = clip_and_step(self.opt, self.cfg.grad_clip)
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        row = {**logged, "grad_norm": grad_norm, "lr": lr}
        if self.critic is not None and self.loss_module.critic_active(self.step):
            row.update(self._critic_step(batch))
        self.step += 1
        row["stop"], row["pause"] = stop, pause
        return row

    def _accumulate_gradients(self):
        """Forward and backward over this rank's micro-batches, the gradients summed to those of the shard's mean
        loss (and, under DDP, averaged over the ranks on the last one).  Returns the terms as the shard's means,
        the last micro-batch, and whether any rank asks to stop and whether any is past the deadline."""
        chunks = self._micro_batches()
        self._prefetch_next()
        n = sum(len(c) for c in chunks)
        logged: dict[str, torch.Tensor] = {}
        for k, indices in enumerate(chunks):
            batch = self.data.get_batch(indices, self.step).to(self.device)
            last = k == len(chunks) - 1
            with gradient_sync(self.step_module, last):
                with self._autocast():
                    terms = self.step_module(batch)
                total = sum(terms.values())
                stop, pause = self._agree(terms, total, last)
                (total * (len(indices) / n)).backward()
            for key, v in {"loss": total, **terms}.items():
                logged[key] = logged.get(key, 0) + v.detach() * (len(indices) / n)
        return logged, batch, stop, pause

    def _agree(self, terms, total, last: bool) -> tuple[bool, bool]:
        """Raise on a non-finite loss on any rank; whether any rank asks to stop, whether any is past the deadline
        (asked of the other ranks on the ``last`` micro-batch; :func:`~.stopping.agree`)."""
        return agree(terms, total, self.step, signals=self.signals, deadline=self.deadline,
                     collective=self.world_size > 1 and last)

    def _critic_step(self, batch) -> dict[str, torch.Tensor]:
        """One step of the critic on this step's images and (detached) reconstructions."""
        self.opt_d.zero_grad(set_to_none=True)
        with self._autocast():
            terms = self.critic_module(batch)
        total = sum(terms.values())
        if not torch.isfinite(total):
            raise nonfinite_error(terms, total, self.step)
        total.backward()
        grad_norm = clip_and_step(self.opt_d, self.cfg.grad_clip, list(self.critic.parameters()))
        return {**{k: v.detach() for k, v in terms.items()}, "d_grad_norm": grad_norm}

    # -------------------------------------------------------------------- the loop
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
        end = self.cfg.steps if until is None else min(until, self.cfg.steps)
        # A slow refresh: on 2 cores, frequent progress messages from a notebook kernel slow the steps.
        bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not (self.cfg.progress and self.is_main),
                   desc="train", dynamic_ncols=True, mininterval=1.0)
        try:
            with self.signals:
                while self.step < end:
                    t0 = time.perf_counter()
                    row = self.train_step()
                    self.seconds += time.perf_counter() - t0
                    if self._after_step(row, end, bar):
                        break
        finally:
            bar.close()
        return TrainResult(self.model, self.ema.module if self.ema is not None else None,
                           self.history, self.step, self.seconds)

    def _after_step(self, row: dict, end: int, bar) -> bool:
        """Log, evaluate and save as due after the step just taken; raise :class:`KeyboardInterrupt` when a signal
        asked to stop.  Returns whether the run pauses here (after step ``end``, or past the deadline)."""
        cfg = self.cfg
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
        return pause


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
