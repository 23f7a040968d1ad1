"""Checkpoints: tensors in safetensors, everything else in a small JSON beside them.

A checkpoint is two files, ``<name>.safetensors`` and ``<name>.json``.  Each is written with
:func:`sbt_lib.files.atomic_write` (a temporary file in the same folder, moved into place with
``os.replace``), so a run killed mid-save leaves the previous checkpoint whole.  The JSON is
written last and names the step; :func:`load_checkpoint` refuses a pair whose steps disagree.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .files import atomic_write, write_json  # noqa: F401  (re-exported: older importers)


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Save ``tensors`` to ``path.safetensors`` and ``meta`` (must hold ``step``) to ``path.json``."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path.with_suffix(".safetensors"),
                  lambda tmp: save_file(tensors, tmp, metadata={"step": str(meta["step"])}))
    write_json(path.with_suffix(".json"), meta)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Load a checkpoint saved by :func:`save_checkpoint`; returns (tensors, meta)."""
    path = Path(path)
    st, js = path.with_suffix(".safetensors"), path.with_suffix(".json")
    for f in (st, js):
        if not f.exists():
            raise FileNotFoundError(f"checkpoint file {f} is missing (a checkpoint is {st.name} + {js.name})")
    meta = json.loads(js.read_text())
    with safe_open(str(st), "pt") as f:
        st_step = int(f.metadata().get("step", -1))
    if st_step != meta["step"]:
        raise RuntimeError(f"checkpoint {path}: tensors are from step {st_step} but {js.name} says {meta['step']}")
    return load_file(str(st), device=str(device)), meta


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{k: v}`` → ``{prefix.k: v}``."""
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of ``tensors`` under ``prefix.``, with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
