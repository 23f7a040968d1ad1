"""The training engine shared by every notebook.

AdamW with linear warm-up and cosine decay, gradient clipping, optional EMA (timm's
``ModelEmaV3``), a tqdm progress bar, periodic held-out evaluation, bf16 autocast on CUDA, and
atomic safetensors checkpoints.

Resume is exact: the batch of step ``t`` is a pure function of (seed, t) (see
:func:`sbt_lib.batch.batch_indices`), the learning rate is a function of ``t``, and the
checkpoint holds the weights, the optimizer moments, the EMA and the RNG state (the CPU's, and every
CUDA device's when CUDA is available).  So ``N`` steps, save, resume, ``N`` steps gives bit-identical
weights to ``2N`` steps straight (on CPU).

Data parallelism: the engine reads its rank and world size from ``torch.distributed`` when a process
group is initialised (else rank 0 of 1).  ``batch_size`` is the global batch; each rank trains on its
own shard of it (:func:`~sbt_lib.batch.batch_indices`), so at world size 1 nothing changes.  Only the
main rank (0) writes: checkpoints, the history JSON, anything under ``out_dir``; and only it shows a
progress bar.  (Wrapping the model for DDP is not done here.)

A non-finite loss stops training with :class:`NonFiniteLossError`, naming the step and the loss
term; nothing is saved after it, so the last good checkpoint stays on disk untouched.

A loss is a callable ``loss_fn(model, batch)`` returning a dict of already-weighted terms.  When it
is an ``nn.Module`` with parameters of its own (alignment projectors, say), they train with the
model in the same optimizer, and its state (parameters and buffers) is part of the checkpoint.
A loss module with a critic (a GAN's discriminator) says so through :class:`CriticLoss`: its
``critic()`` module gets an optimizer of its own, and after every model step on which
``critic_active(step)`` holds, the engine takes a critic step on ``critic_terms(batch)`` (the images
and the outputs of that same step); both optimizers' states are in the checkpoint.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.distributed
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, prefixed, save_checkpoint, unprefixed, write_json
from .config import Config
from .batch import Batch, batch_indices

LossFn = Callable[[torch.nn.Module, Batch], dict[str, torch.Tensor]]
EvalFn = Callable[[torch.nn.Module], dict[str, float]]


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
    batch_size: int = 32
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
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v for i, s in opt.state_dict()["state"].items() for k, v in s.items()}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        i, k = key.split(".", 1)
        state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


def _check_finite(terms: dict[str, torch.Tensor], total: torch.Tensor, step: int) -> None:
    if torch.isfinite(total):
        return
    bad = [f"{k}={v.item()}" for k, v in terms.items() if not torch.isfinite(v)] or [f"total={total.item()}"]
    raise NonFiniteLossError(
        f"non-finite loss at step {step}: {', '.join(bad)}. Training stopped; the last good checkpoint "
        f"(if any) is untouched. Try a lower learning rate, a smaller loss weight, or grad_clip."
    )


def _rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the initialised ``torch.distributed`` process group; (0, 1) without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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


class Trainer:
    """Runs :func:`train`; kept as a class so that save/resume share one definition of 'state'."""

    def __init__(self, model, loss_fn: LossFn, data, cfg: TrainConfig, out_dir=None, eval_fn: EvalFn | None = None,
                 meta: dict | None = None):
        self.cfg, self.loss_fn, self.data, self.eval_fn = cfg, loss_fn, data, eval_fn
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        self.loss_module = loss_fn.to(self.device) if isinstance(loss_fn, torch.nn.Module) else None
        self.critic = self.loss_module.critic() if hasattr(self.loss_module, "critic") else None
        disc = list(self.critic.parameters()) if self.critic is not None else []
        self.opt = _optimizer([self.model] + ([self.loss_module] if self.loss_module is not None else []), cfg,
                              exclude=disc)
        self.opt_d = _optimizer([self.critic], cfg) if self.critic is not None else None
        self.ema = ModelEmaV3(self.model, decay=cfg.ema) if cfg.ema > 0 else None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.meta = meta or {}
        self.step, self.seconds, self.history = 0, 0.0, []
        self.rank, self.world_size = _rank_and_world_size()

    @property
    def is_main(self) -> bool:
        """Whether this process is the main rank: the only one that writes (checkpoints, logs, out_dir)."""
        return self.rank == 0

    # -------------------------------------------------------------------- checkpoints
    @property
    def ckpt_path(self) -> Path | None:
        return self.out_dir / "checkpoint" if self.out_dir is not None else None

    def save(self) -> None:
        """Write the checkpoint and the history into ``out_dir`` (on the main rank only)."""
        if self.ckpt_path is None or not self.is_main:
            return
        tensors = {**prefixed("model", self.model.state_dict()), **prefixed("optim", _optimizer_tensors(self.opt)),
                   "rng.cpu": torch.get_rng_state(), **_cuda_rng_tensors()}
        if self.ema is not None:
            tensors.update(prefixed("ema", self.ema.module.state_dict()))
        if self.loss_module is not None:
            tensors.update(prefixed("loss", self.loss_module.state_dict()))
        if self.opt_d is not None:
            tensors.update(prefixed("optim_d", _optimizer_tensors(self.opt_d)))
        meta = {"step": self.step, "seconds": self.seconds, "train": asdict(self.cfg), **self.meta}
        save_checkpoint(self.ckpt_path, tensors, meta)
        write_json(self.out_dir / "history.json", self.history)

    def resume(self) -> bool:
        """Load the checkpoint in ``out_dir`` if there is one; True when resumed."""
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
        torch.set_rng_state(tensors["rng.cpu"].cpu())
        _restore_cuda_rng(tensors)
        self.step, self.seconds = meta["step"], meta["seconds"]
        history = self.out_dir / "history.json"
        self.history = [r for r in _read_json(history) if r["step"] <= self.step] if history.exists() else []
        return True

    def _check_same_run(self, meta: dict) -> None:
        """Refuse to resume a checkpoint written with other settings: its weights would not fit,
        or would silently continue a different experiment."""
        saved = _fingerprint(meta["train"], {k: meta.get(k) for k in self.meta})
        current = _fingerprint(asdict(self.cfg), self.meta)
        diff = sorted({k for k in current["train"] if saved["train"].get(k) != current["train"][k]}
                      | {k for k in self.meta if saved[k] != current[k]})
        if diff:
            raise ValueError(
                f"the run folder {self.out_dir} holds a run with different parameters ({', '.join(diff)}): "
                f"choose another output folder, or delete {self.ckpt_path}.* to start afresh"
            )

    # -------------------------------------------------------------------- steps
    def train_step(self) -> dict:
        """One optimizer step; returns the loss terms (as tensors, converted only when logged)."""
        cfg = self.cfg
        lr = cfg.lr_at(self.step)
        for opt in [o for o in (self.opt, self.opt_d) if o is not None]:
            for g in opt.param_groups:
                g["lr"] = lr
        indices = batch_indices(len(self.data), cfg.batch_size, self.step, cfg.seed, self.rank, self.world_size)
        batch = self.data.get_batch(indices, self.step)
        batch = batch.to(self.device)
        self.model.train()
        if self.loss_module is not None:
            self.loss_module.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and self.device.type == "cuda"):
            terms = self.loss_fn(self.model, batch)
        total = sum(terms.values())
        _check_finite(terms, total, self.step)
        grad_norm = self._step(self.opt, total)
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        row = {"loss": total.detach(), **{k: v.detach() for k, v in terms.items()}, "grad_norm": grad_norm, "lr": lr}
        if self.critic is not None and self.loss_module.critic_active(self.step):
            row.update(self._critic_step(batch))
        self.step += 1
        return row

    def _step(self, opt: torch.optim.Optimizer, loss: torch.Tensor) -> torch.Tensor:
        """Backward, clip the gradient norm of ``opt``'s parameters, step; returns the norm."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in opt.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip or float("inf"))
        opt.step()
        return grad_norm

    def _critic_step(self, batch) -> dict[str, torch.Tensor]:
        """One step of the critic on this step's images and (detached) reconstructions."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.cfg.bf16 and self.device.type == "cuda"):
            terms = self.loss_module.critic_terms(batch)
        total = sum(terms.values())
        _check_finite(terms, total, self.step)
        grad_norm = self._step(self.opt_d, total)
        return {**{k: v.detach() for k, v in terms.items()}, "d_grad_norm": grad_norm}

    def evaluate(self) -> dict[str, float]:
        if self.eval_fn is None:
            return {}
        model = self.ema.module if self.ema is not None else self.model
        model.eval()
        with torch.no_grad():
            return {f"eval_{k}": v for k, v in self.eval_fn(model).items()}

    def run(self) -> TrainResult:
        cfg = self.cfg
        # A slow refresh: on 2 cores, frequent progress messages from a notebook kernel slow the steps.
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (cfg.progress and self.is_main), desc="train",
                   dynamic_ncols=True, mininterval=1.0)
        try:
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                row = self.train_step()
                self.seconds += time.perf_counter() - t0
                last = self.step == cfg.steps
                if self.step % cfg.log_every == 0 or last:
                    row = {k: float(v) for k, v in row.items()}
                    self.history.append({"step": self.step, "seconds": self.seconds, **row})
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", refresh=False)
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or last:
                    self.history.append({"step": self.step, "seconds": self.seconds, **self.evaluate()})
                if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or last:
                    self.save()
                bar.update(1)
        except KeyboardInterrupt:
            self.save()  # the steps done so far are kept; run again to resume
            raise
        finally:
            bar.close()
        return TrainResult(self.model, self.ema.module if self.ema is not None else None,
                           self.history, self.step, self.seconds)


def _read_json(path: Path):
    return json.loads(path.read_text())


# Settings that do not change the trained weights; a run may be resumed with other values.
_RESULT_NEUTRAL = {"progress", "device", "eval_every", "ckpt_every", "log_every"}


def _fingerprint(train_cfg: dict, meta: dict) -> dict:
    """What determines a run's weights, as it reads back from JSON (tuples become lists)."""
    train_cfg = {k: v for k, v in train_cfg.items() if k not in _RESULT_NEUTRAL}
    return json.loads(json.dumps({"train": train_cfg, **meta}))


def train(model: torch.nn.Module, loss_fn: LossFn, data, cfg: TrainConfig | None = None, *, out_dir=None,
          eval_fn: EvalFn | None = None, resume: bool = True, meta: dict | None = None) -> TrainResult:
    """Train ``model`` on ``data`` (an :class:`~sbt_lib.data.datasets.ImageDataset`) for ``cfg.steps`` steps.

    ``loss_fn(model, batch)`` (a :class:`~sbt_lib.batch.Batch`) returns a dict of (already weighted)
    loss terms; their sum is minimised and each is logged.  ``eval_fn(model)`` returns held-out metrics (run under
    ``no_grad`` on the EMA model when EMA is on).  With ``out_dir`` the run checkpoints there and,
    when ``resume`` is true and a checkpoint exists, continues from it.  ``meta`` is stored in
    the checkpoint JSON (e.g. the model's configuration).
    """
    trainer = Trainer(model, loss_fn, data, cfg or TrainConfig(), out_dir, eval_fn, meta)
    if resume:
        trainer.resume()
    return trainer.run()
