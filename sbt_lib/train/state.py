"""A run folder's state on disk: what its checkpoint holds, writing and reading it, and the check that it holds
this run.

A run folder holds ``checkpoint.safetensors`` and ``checkpoint.json`` (:mod:`sbt_lib.checkpoint`, written
atomically) and ``history.json``.  The tensors are the run's parts, each under its prefix: ``model``, ``optim``
(the optimizer's moments, as ``<parameter index>.<name>``), the RNG states (``rng``, :mod:`.rng`), and where the
run has them ``ema``, ``loss`` (a loss module's own parameters and buffers) and ``optim_d`` (the critic's
optimizer).  The JSON holds the step, the seconds trained, the world size, the :class:`~.config.TrainConfig` and
the caller's ``meta``.

Resume is exact: the batch of step ``t`` is a pure function of (seed, t) (see
:func:`sbt_lib.batch.batch_indices`), the learning rate is a function of ``t``, and the checkpoint holds
everything else a step changes.  So ``N`` steps, save, resume, ``N`` steps gives bit-identical weights to ``2N``
steps straight (on CPU).  A folder written with other settings is refused (:func:`check_same_run`): its weights
would not fit, or would silently continue a different experiment.
"""
from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import prefixed, save_checkpoint, unprefixed, write_json
from .config import RESULT_NEUTRAL, TrainConfig

Part = nn.Module | torch.optim.Optimizer  # what a checkpoint holds under one prefix


class DifferentRunError(ValueError):
    """A run folder holds a checkpoint written with other settings (see :func:`check_same_run`)."""


def checkpoint_path(out_dir: Path) -> Path:
    """The checkpoint of a run folder, without its suffixes (:mod:`sbt_lib.checkpoint`)."""
    return out_dir / "checkpoint"


def checkpoint_meta(step: int, seconds: float, world_size: int, cfg: TrainConfig, meta: dict) -> dict:
    """The checkpoint's JSON: where the run is, the settings it trains with, and the caller's ``meta``."""
    return {"step": step, "seconds": seconds, "world_size": world_size, "train": asdict(cfg), **meta}


def state_tensors(parts: dict[str, Part]) -> dict[str, torch.Tensor]:
    """The tensors of ``parts``, each under its prefix."""
    tensors = {}
    for prefix, part in parts.items():
        own = _optimizer_tensors(part) if isinstance(part, torch.optim.Optimizer) else part.state_dict()
        tensors.update(prefixed(prefix, own))
    return tensors


def load_state(parts: dict[str, Part], tensors: dict[str, torch.Tensor]) -> None:
    """Load each of ``parts`` from its prefix of a checkpoint's ``tensors``."""
    for prefix, part in parts.items():
        own = unprefixed(prefix, tensors)
        if isinstance(part, torch.optim.Optimizer):
            _load_optimizer(part, own)
        else:
            part.load_state_dict(own)


def save_state(out_dir: Path, tensors: dict[str, torch.Tensor], meta: dict, history: list[dict]) -> None:
    """Write the checkpoint (``tensors`` and ``meta``), then the history, into the run folder ``out_dir``."""
    save_checkpoint(checkpoint_path(out_dir), tensors, meta)
    write_json(out_dir / "history.json", history)


def read_history(out_dir: Path, step: int) -> list[dict]:
    """The rows of the run folder's history up to ``step``; none when it has no history."""
    path = out_dir / "history.json"
    return [r for r in json.loads(path.read_text()) if r["step"] <= step] if path.exists() else []


def check_same_run(saved: dict, cfg: TrainConfig, meta: dict, out_dir: Path) -> None:
    """Refuse to resume the checkpoint of ``out_dir``, whose JSON is ``saved``, unless it was written with the
    settings ``cfg`` and ``meta``: its weights would not fit, or would silently continue a different
    experiment.  A setting the checkpoint predates counts as saved at its default."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    saved_meta = {k: _with_new_switches(saved.get(k), v) for k, v in meta.items()}
    before = _fingerprint({**defaults, **saved["train"]}, saved_meta)
    now = _fingerprint(asdict(cfg), meta)
    diff = sorted({k for k in now["train"] if before["train"].get(k) != now["train"][k]}
                  | {k for k in meta if before[k] != now[k]})
    if diff:
        raise DifferentRunError(
            f"the run folder {out_dir} holds a run with different parameters ({', '.join(diff)}): "
            f"choose another output folder, or delete {checkpoint_path(out_dir)}.* to start afresh"
        )


def _with_new_switches(saved, current):
    """``saved`` (a config dict from a checkpoint) with the entries it lacks that are off in ``current``
    (``None``, ``False``, 0): a switch or weight added to a config after the run was saved, off, does not
    make it another run."""
    if not isinstance(saved, dict) or not isinstance(current, dict):
        return saved
    return {**{k: v for k, v in current.items() if k not in saved and (v is None or v is False or v == 0)},
            **saved}


def _fingerprint(train_cfg: dict, meta: dict) -> dict:
    """What determines a run's weights, as it reads back from JSON (tuples become lists)."""
    train_cfg = {k: v for k, v in train_cfg.items() if k not in RESULT_NEUTRAL}
    return json.loads(json.dumps({"train": train_cfg, **meta}))


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v for i, s in opt.state_dict()["state"].items() for k, v in s.items()}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        i, k = key.split(".", 1)
        state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
