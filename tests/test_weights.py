"""The weight resolver: order of the search, the error message, offline mode, fast failure."""
import socket
import time

import pytest
import torch

from sbt_lib import weights
from sbt_lib.weights import MissingWeightsError, resolve_weights

NAME = "tiny-weights-0123.pth"
URL = "https://example.invalid/models/" + NAME
REAL_DOWNLOAD_URL = weights._download_url


def _file(folder, name=NAME):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.zeros(2)}, folder / name)
    return folder / name


@pytest.fixture
def clean(tmp_path, monkeypatch):
    """An environment with empty caches, no $SBT_WEIGHTS, and no real downloads."""
    monkeypatch.delenv("SBT_WEIGHTS", raising=False)
    monkeypatch.delenv("SBT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(weights, "_hf_cached", lambda repo, name: None)

    def no_download(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(weights, "_download_url", no_download)
    monkeypatch.setattr(weights, "_download_hf", no_download)
    return tmp_path


def test_explicit_path_wins(clean, monkeypatch):
    explicit = _file(clean / "explicit")
    monkeypatch.setenv("SBT_WEIGHTS", str(_file(clean / "env").parent))
    _file(clean / "hub" / "checkpoints")
    assert resolve_weights(NAME, explicit) == explicit
    assert resolve_weights(NAME, explicit.parent) == explicit  # a folder holding the file also works


def test_explicit_missing_path_is_an_error(clean, monkeypatch):
    monkeypatch.setenv("SBT_WEIGHTS", str(_file(clean / "env").parent))  # would be found, but must not be used
    missing = clean / "nope" / NAME
    with pytest.raises(MissingWeightsError, match=str(missing)):
        resolve_weights(NAME, missing)


def test_env_folder_and_subfolder(clean, monkeypatch):
    env = clean / "env"
    nested = _file(env / "sub")
    monkeypatch.setenv("SBT_WEIGHTS", str(env))
    _file(clean / "hub" / "checkpoints")
    assert resolve_weights(NAME) == nested
    top = _file(env)
    assert resolve_weights(NAME) == top  # the folder itself before its subfolders


def test_alternative_names(clean, monkeypatch):
    monkeypatch.setenv("SBT_WEIGHTS", str(clean / "env"))
    alt = _file(clean / "env", "model.pth")
    assert resolve_weights(["model.safetensors", "model.pth"]) == alt


def test_local_copy_before_caches(clean):
    local = _file(clean / "package")
    _file(clean / "hub" / "checkpoints")
    assert resolve_weights(NAME, local=[local]) == local


def test_torch_hub_cache(clean):
    cached = _file(clean / "hub" / "checkpoints")
    assert resolve_weights(NAME, url=URL) == cached


def test_hf_cache(clean, monkeypatch):
    cached = _file(clean / "hf")
    monkeypatch.setattr(weights, "_hf_cached", lambda repo, name: cached if (repo, name) == ("org/m", NAME) else None)
    assert resolve_weights(NAME, hf_repo="org/m") == cached


def test_download_when_allowed(clean, monkeypatch):
    def fake_download(url, dst, timeout):
        assert url == URL and timeout > 0
        return _file(dst.parent, dst.name)

    monkeypatch.setattr(weights, "_probe", lambda url, timeout: None)
    monkeypatch.setattr(weights, "_download_url", fake_download)
    got = resolve_weights(NAME, url=URL)
    assert got == clean / "hub" / "checkpoints" / NAME and got.is_file()


@pytest.mark.parametrize("how", ["argument", "SBT_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_never_downloads(clean, monkeypatch, how):
    monkeypatch.setattr(weights, "_probe", lambda *a: pytest.fail("the network was probed"))
    if how != "argument":
        monkeypatch.setenv(how, "1")
    with pytest.raises(MissingWeightsError) as err:
        resolve_weights(NAME, url=URL, hf_repo="org/m", download=False if how == "argument" else None)
    assert "skipped" in str(err.value)


def test_error_message_names_everything(clean, monkeypatch):
    monkeypatch.setenv("SBT_OFFLINE", "1")
    monkeypatch.setenv("SBT_WEIGHTS", str(clean / "env"))
    with pytest.raises(FileNotFoundError) as err:  # MissingWeightsError is a FileNotFoundError
        resolve_weights(NAME, url=URL, hf_repo="org/m", what="the frozen test teacher", local=[clean / "pkg" / NAME])
    msg = str(err.value)
    for part in (NAME, "the frozen test teacher", str(clean / "env"), str(clean / "pkg" / NAME),
                 str(clean / "hub" / "checkpoints"), "org/m", "SBT_WEIGHTS", URL, "path"):
        assert part in msg, (part, msg)
    assert isinstance(err.value, MissingWeightsError) and err.value.filename == NAME
    assert len(err.value.looked) >= 4


def test_failed_download_fails_fast(clean, monkeypatch):
    """A server that accepts the connection and never answers: the socket timeout must fire."""
    monkeypatch.setattr(weights, "_download_url", REAL_DOWNLOAD_URL)  # undo the fixture's guard
    monkeypatch.setenv("SBT_DOWNLOAD_TIMEOUT", "1")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)  # never accept(): the kernel completes the handshake, nobody ever replies
    url = f"http://127.0.0.1:{server.getsockname()[1]}/{NAME}"
    try:
        start = time.perf_counter()
        with pytest.raises(MissingWeightsError, match="failed"):
            resolve_weights(NAME, url=url)
        assert time.perf_counter() - start < 5
    finally:
        server.close()
    assert not (clean / "hub" / "checkpoints" / NAME).exists()


def test_unreachable_host_fails_fast(clean, monkeypatch):
    monkeypatch.setenv("SBT_DOWNLOAD_TIMEOUT", "1")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connection refused
    start = time.perf_counter()
    with pytest.raises(MissingWeightsError, match="cannot reach"):
        resolve_weights(NAME, url=f"http://127.0.0.1:{port}/{NAME}")
    assert time.perf_counter() - start < 3
