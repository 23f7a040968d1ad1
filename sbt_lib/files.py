"""Small helpers for files every part of the library writes: the repository root, the cache folder,
atomic writes, and content keys that name caches.

Writes are atomic (a temporary file beside the target, then ``os.replace``), so an interrupted run
never leaves half a checkpoint, metrics file or cache; the result gets the ordinary permissions of
the user's umask, not the 0600 of the temporary file.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """Where computed things are cached on disk (decoded data sets, features, PCA fits): $SBT_CACHE, else
    ``<repo>/data/cache``."""
    return Path(os.environ.get("SBT_CACHE") or REPO / "data" / "cache").expanduser()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it into place atomically
    with the permissions a plain ``open(path, "w")`` would give (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as indented JSON, atomically."""

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)

    atomic_write(path, write)


def content_key(*parts, length: int | None = 16) -> str:
    """A SHA-1 hex key of ``parts`` (cut to ``length`` characters; ``None``: all 40), naming a cache
    by what it was computed from.  Tensors and arrays count by their bytes, strings by their UTF-8,
    anything else by its sorted-key JSON; the parts are hashed in order."""
    h = hashlib.sha1()
    for part in parts:
        if isinstance(part, torch.Tensor):
            part = part.detach().cpu().contiguous().numpy()
        if isinstance(part, np.ndarray):
            h.update(np.ascontiguousarray(part).tobytes())
        elif isinstance(part, bytes):
            h.update(part)
        elif isinstance(part, str):
            h.update(part.encode())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:length] if length else h.hexdigest()
