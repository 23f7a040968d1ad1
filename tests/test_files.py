"""sbt_lib.files: atomic writes with ordinary permissions, and content keys for caches."""
from __future__ import annotations

import hashlib
import json
import os
import stat

import numpy as np
import pytest
import torch

from sbt_lib.checkpoint import save_checkpoint
from sbt_lib.data.folders import _save_atomic
from sbt_lib.files import REPO, atomic_write, content_key, write_json


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_repo_is_the_repository_root():
    assert (REPO / "sbt_lib" / "files.py").is_file()
    assert (REPO / "pyproject.toml").is_file()


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")

    def write(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(path, write)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_write_replaces_the_file_and_makes_its_folder(tmp_path):
    path = tmp_path / "new" / "folder" / "out.txt"
    atomic_write(path, lambda tmp: open(tmp, "w").write("new"))
    assert path.read_text() == "new"
    assert [p.name for p in path.parent.iterdir()] == ["out.txt"]


def test_written_files_get_the_umask_permissions_not_0600(tmp_path, umask_022):
    atomic_write(tmp_path / "a.txt", lambda tmp: open(tmp, "w").write("x"))
    write_json(tmp_path / "b.json", {"x": 1})
    save_checkpoint(tmp_path / "ckpt", {"w": torch.ones(2)}, {"step": 3})
    _save_atomic(tmp_path / "c.npz", images=np.zeros((1, 3, 2, 2), np.uint8))
    for name in ("a.txt", "b.json", "ckpt.safetensors", "ckpt.json", "c.npz"):
        assert mode(tmp_path / name) == 0o666 & ~0o022 == 0o644, name
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": 1}
    with np.load(tmp_path / "c.npz") as z:  # a real .npz under the given name (no ".npz.npz")
        assert z["images"].shape == (1, 3, 2, 2)


def test_a_cache_that_cannot_be_written_warns_instead_of_raising(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="could not write cache"):
        _save_atomic(blocker / "sub" / "c.npz", images=np.zeros(1, np.uint8))


def test_content_key_is_deterministic_and_sees_every_byte():
    x = torch.arange(64, dtype=torch.uint8).reshape(4, 16)
    assert content_key(x) == content_key(x.clone()) == content_key(x.numpy())
    y = x.clone()
    y[3, 15] += 1
    assert content_key(y) != content_key(x)
    assert len(content_key(x)) == 16 and len(content_key(x, length=12)) == 12
    assert len(content_key(x, length=None)) == 40


def test_content_key_of_a_tensor_is_the_sha1_of_its_bytes():
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    full = hashlib.sha1(x.numpy().tobytes()).hexdigest()
    assert content_key(x, length=None) == full
    assert content_key(x) == full[:16]
    assert content_key(x.t().contiguous().t()) == full[:16]  # a non-contiguous view: same values, same key


def test_content_key_hashes_parts_in_order_as_the_old_cache_keys_did():
    spec = {"b": [1, 2], "a": "x"}
    assert content_key(spec, length=12) == hashlib.sha1(
        json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]
    h = hashlib.sha1()
    for k, v in (("w", torch.ones(2)), ("b", torch.zeros(1))):
        h.update(k.encode())
        h.update(v.numpy().tobytes())
    assert content_key("w", torch.ones(2), "b", torch.zeros(1), length=12) == h.hexdigest()[:12]
    assert content_key("ab", "c") == content_key("abc")  # parts are concatenated, in order
    assert content_key("a", "b") != content_key("b", "a")
