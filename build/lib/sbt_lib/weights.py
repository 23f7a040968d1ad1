"""The one place pretrained weights are found: :func:`resolve_weights`.

Every pretrained load in the project (teachers, perceptual loss, FID/KID feature spaces) asks this
function for a file.  It looks, in this order, and returns the first hit:

1. the explicit ``path`` argument (a file, or a folder holding the file); a path that does not
   exist is an error, never silently skipped;
2. the folder named by the environment variable ``$SBT_WEIGHTS`` (the file itself or one level of
   subfolders; several folders may be joined with ``os.pathsep``);
3. known local copies the caller names (``local=``, e.g. a file shipped inside a pip package);
4. the local caches: torch hub (``torch.hub.get_dir()/checkpoints/<filename>``) and the Hugging
   Face cache (``huggingface_hub.try_to_load_from_cache``);
5. a download, when the network allows: ``torch.hub.download_url_to_file`` for ``url`` (into the
   torch hub cache) or ``huggingface_hub.hf_hub_download`` for ``hf_repo`` (into the HF cache).

Downloads are skipped when ``download=False`` or when ``$SBT_OFFLINE`` / ``$HF_HUB_OFFLINE`` is set.
The machines that build this project have no internet, so a download must fail fast: the host
(or proxy) is probed first with a short connect timeout run in a thread (which also bounds a hung
DNS lookup), and the download itself runs with a socket timeout of ``$SBT_DOWNLOAD_TIMEOUT``
seconds (default 5; it bounds each network wait, not the whole transfer).

When nothing is found, :class:`MissingWeightsError` (a ``FileNotFoundError``) says which file,
what it is for, every place looked, and how to supply it.
"""
from __future__ import annotations

import os
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import torch

ENV_WEIGHTS = "SBT_WEIGHTS"
ENV_OFFLINE = ("SBT_OFFLINE", "HF_HUB_OFFLINE")
ENV_TIMEOUT = "SBT_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT = 5.0


class MissingWeightsError(FileNotFoundError):
    """A pretrained weight file could not be found or fetched.

    ``filename`` is the file asked for, ``looked`` the places searched (one line each).
    """

    def __init__(self, message: str, filename: str = "", looked: Sequence[str] = ()):
        super().__init__(message)
        self.filename = filename
        self.looked = list(looked)

    def __str__(self) -> str:  # FileNotFoundError would format (errno, strerror); keep the message
        return self.args[0]


# ----------------------------------------------------------------------------- helpers

def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def offline_reason(download: bool | None = None) -> str | None:
    """Why downloads are off (``download=False`` or an offline environment variable), else None."""
    if download is False:
        return "download=False"
    for name in ENV_OFFLINE:
        if _truthy(os.environ.get(name)):
            return f"${name}={os.environ[name]}"
    return None


def download_timeout() -> float:
    """Seconds to wait on the network before a download counts as failed ($SBT_DOWNLOAD_TIMEOUT)."""
    try:
        return float(os.environ.get(ENV_TIMEOUT, DEFAULT_TIMEOUT))
    except ValueError:
        raise ValueError(f"${ENV_TIMEOUT} must be a number of seconds, got {os.environ[ENV_TIMEOUT]!r}") from None


def _names(filename: str | Sequence[str], url: str | None) -> list[str]:
    names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
    if not names:
        raise ValueError("resolve_weights needs at least one file name")
    if url:
        names.append(_url_name(url))
    return list(dict.fromkeys(str(n) for n in names))  # unique, order kept


def _url_name(url: str) -> str:
    return Path(urllib.parse.urlparse(url).path).name


def _find_in_flat(folder: Path, names: list[str]) -> Path | None:
    """``folder/<name>`` for the first name that exists (no subfolders: a cache folder)."""
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _find_in(folder: Path, names: list[str]) -> Path | None:
    """``folder/<name>``, else ``folder/<sub>/<name>`` (subfolders in sorted order)."""
    hit = _find_in_flat(folder, names)
    if hit is None and folder.is_dir():
        subs = sorted(p for p in folder.iterdir() if p.is_dir())
        hit = next((h for h in (_find_in_flat(sub, names) for sub in subs) if h), None)
    return hit


def _hf_cached(hf_repo: str, hf_filename: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    hit = try_to_load_from_cache(hf_repo, hf_filename)
    return Path(hit) if isinstance(hit, str) and os.path.isfile(hit) else None


def _probe(url: str, timeout: float) -> str | None:
    """None when a TCP connection to the url's host (or its proxy) opens within ``timeout``,
    else the reason.  Runs in a daemon thread so a hung DNS lookup cannot block us."""
    parts = urllib.parse.urlparse(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlparse(proxy if "://" in proxy else f"http://{proxy}")
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    result: dict[str, object] = {}

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["ok"] = True
        except OSError as e:
            result["error"] = e

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if result.get("ok"):
        return None
    return f"cannot reach {host}:{port} ({result.get('error') or f'no answer in {timeout:g} s'})"


def _hf_endpoint() -> str:
    try:
        from huggingface_hub import constants
        return constants.ENDPOINT
    except ImportError:
        return "https://huggingface.co"


def _download_url(url: str, dst: Path, timeout: float) -> Path:
    """torch.hub's downloader with a socket timeout (it opens the URL without one)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        torch.hub.download_url_to_file(url, str(dst), progress=True)
    finally:
        socket.setdefaulttimeout(old)
    return dst


def _download_hf(hf_repo: str, hf_filename: str, timeout: float) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(hf_repo, hf_filename, etag_timeout=timeout))


# ----------------------------------------------------------------------------- the resolver

def resolve_weights(filename: str | Sequence[str], path: str | os.PathLike | None = None, *,
                    url: str | None = None, hf_repo: str | None = None, hf_filename: str | None = None,
                    what: str = "", download: bool | None = None,
                    local: Sequence[str | os.PathLike] = ()) -> Path:
    """Find the weight file ``filename`` (or the first of several alternative names); see the
    module docstring for the order.  ``url`` / ``hf_repo`` (+ ``hf_filename``, default the first
    name) say where it can be downloaded from; ``what`` says what it is for (used in messages);
    ``download=False`` forbids downloading (None or True: allowed unless an offline variable is
    set); ``local`` lists known local copies.  Returns the path; raises
    :class:`MissingWeightsError`."""
    names = _names(filename, url)
    label = f"'{names[0]}'" + (f" ({what})" if what else "")
    hf_filename = hf_filename or names[0]

    if path is not None:  # 1. explicit
        p = Path(path).expanduser()
        if p.is_file():
            return p
        hit = _find_in(p, names) if p.is_dir() else None
        if hit:
            return hit
        why = "is a folder without " + " / ".join(names) if p.is_dir() else "does not exist"
        raise MissingWeightsError(f"weights path {p} given for {label} {why}. Pass the path of the "
                                  f"weight file itself (or leave it out to search ${ENV_WEIGHTS} "
                                  "and the caches).", names[0], [str(p)])

    looked: list[str] = []
    env = os.environ.get(ENV_WEIGHTS, "")  # 2. $SBT_WEIGHTS
    if env:
        for folder in (Path(f).expanduser() for f in env.split(os.pathsep) if f):
            hit = _find_in(folder, names)
            if hit:
                return hit
            looked.append(f"${ENV_WEIGHTS}: {folder}/[<subfolder>/]{'|'.join(names)}"
                          + ("" if folder.is_dir() else "  (folder does not exist)"))
    else:
        looked.append(f"${ENV_WEIGHTS}: not set")

    for p in map(Path, local):  # 3. known local copies
        if p.is_file():
            return p
        looked.append(f"local copy: {p}")

    hub = Path(torch.hub.get_dir()) / "checkpoints"  # 4. caches
    hit = _find_in_flat(hub, names)
    if hit:
        return hit
    looked.append(f"torch hub cache: {hub}/{'|'.join(names)}")
    if hf_repo:
        hit = _hf_cached(hf_repo, hf_filename)
        if hit:
            return hit
        looked.append(f"Hugging Face cache: {hf_repo} / {hf_filename}")

    attempts: list[str] = []  # 5. download
    off = offline_reason(download)
    sources = ([("hf", f"https://huggingface.co/{hf_repo}")] if hf_repo else []) + ([("url", url)] if url else [])
    if sources and off:
        attempts.append(f"download: skipped ({off})")
    for kind, src in [] if off else sources:
        timeout = download_timeout()
        probe_url = _hf_endpoint() if kind == "hf" else src
        reason = _probe(probe_url, timeout)
        if reason is None:
            try:
                if kind == "hf":
                    return _download_hf(hf_repo, hf_filename, timeout)
                return _download_url(src, hub / _url_name(src), timeout)
            except Exception as e:  # noqa: BLE001 - any failure means "not available", reported below
                reason = f"{type(e).__name__}: {e}"
        attempts.append(f"download from {src}: failed ({reason})")

    message = _message(label, names, looked + attempts, url, hf_repo, hf_filename, off)
    raise MissingWeightsError(message, names[0], looked + attempts)


def _message(label, names, looked, url, hf_repo, hf_filename, off) -> str:
    """The text of :class:`MissingWeightsError`: what, where we looked, how to supply it."""
    lines = [f"pretrained weights {label} not found.", "Looked in:"]
    lines += [f"  - {entry}" for entry in looked]
    lines += ["To supply them:",
              "  - pass the file's path explicitly (the `weights=` / `path=` argument), or",
              f"  - put the file, named {' or '.join(repr(n) for n in names)}, in a folder and "
              f"`export {ENV_WEIGHTS}=/that/folder`"]
    if url:
        lines.append(f"  - on a machine with a network, download {url} (keep its file name) into that folder")
    if hf_repo:
        lines.append(f"  - on a machine with a network, download https://huggingface.co/{hf_repo}/resolve/main/"
                     f"{hf_filename} and save it in that folder as {names[0]!r}")
    if off and off != "download=False" and (url or hf_repo):
        lines.append(f"  - or let this run download it: unset {off.split('=')[0][1:]}")
    return "\n".join(lines)
