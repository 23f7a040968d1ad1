"""Principal components: the best *linear* code, as an anchor and as the tokenizer's starting point.

With ``k`` components fitted on the training images, ``decode(encode(x))`` is the best
reconstruction (in mean squared error) that any linear map from ``k`` numbers can give.  It is
therefore the anchor a learned tokenizer with ``k`` values must beat, beside bicubic
interpolation (the classical one).

The tokenizer's *linear path* (:class:`sbt_lib.models.tokenizer_parts.LinearPath`) starts as this code, so
training begins where PCA ends and learns the non-linear rest.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..files import atomic_write, cache_dir, content_key

_CACHE: dict[tuple[str, int], "PCA"] = {}  # the last few fits, by (hash of the images, k)
FIT_VERSION = 2  # part of the name of a fit kept on disk: raise it when _fit changes what it computes


class PCA:
    """``k`` principal components of B×C×H×W images: ``mean`` (C·H·W) and ``basis`` (C·H·W × k,
    orthonormal columns, by decreasing variance), with the ``std`` of each coefficient."""

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, std: torch.Tensor, shape: tuple[int, ...]):
        self.mean, self.basis, self.std, self.shape = mean, basis, std, tuple(shape)

    @classmethod
    def fit(cls, images: torch.Tensor, k: int) -> "PCA":
        """Fit on ``images`` (B×C×H×W, B ≥ k + 1) in float64, exactly (:func:`_principal_directions`).
        Fits are remembered by a hash of the images and ``k``: the last few in memory (an ablation that builds
        many tokenizers on one training set fits once) and on disk, under ``cache_dir()/pca`` (3 MB for 256
        components of 32×32 images; the notebooks that share a training split fit once between them)."""
        key = (content_key(images, length=None), k)
        if key not in _CACHE:
            if len(_CACHE) >= 4:
                _CACHE.pop(next(iter(_CACHE)))
            path = cache_dir() / "pca" / f"v{FIT_VERSION}-{key[0]}-k{k}.safetensors"
            _CACHE[key] = cls._load(path, images.shape[1:]) or cls._fit(images, k)._save(path)
        return _CACHE[key]

    def _save(self, path: Path) -> "PCA":
        atomic_write(path, lambda tmp: save_file({"mean": self.mean, "basis": self.basis, "std": self.std}, tmp))
        return self

    @classmethod
    def _load(cls, path: Path, shape) -> "PCA | None":
        """The fit saved at ``path``, or None where there is none (or it cannot be read: it is fitted again)."""
        try:
            t = load_file(path)
            return cls(t["mean"], t["basis"], t["std"], shape)
        except (OSError, KeyError, SafetensorError):
            return None

    @classmethod
    def _fit(cls, images: torch.Tensor, k: int) -> "PCA":
        if images.ndim != 4:
            raise ValueError(f"PCA.fit expects B×C×H×W images, got shape {tuple(images.shape)}")
        x = images.flatten(1).double()
        if k < 1 or k > min(x.shape[1], len(x) - 1):
            raise ValueError(f"PCA needs 1 ≤ k ≤ min(values per image, images - 1) = "
                             f"{min(x.shape[1], len(x) - 1)}; got k={k} for {len(x)} images")
        mean = x.mean(0)
        basis, var = _principal_directions(x - mean, k)
        std = (var.clamp_min(0) / (len(x) - 1)).sqrt()
        return cls(mean.float(), basis.contiguous().float(), std.float(), images.shape[1:])

    @property
    def k(self) -> int:
        return self.basis.shape[1]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images → B×k coefficients."""
        return (images.flatten(1).float() - self.mean.to(images.device)) @ self.basis.to(images.device)

    def decode(self, coefficients: torch.Tensor) -> torch.Tensor:
        """B×k coefficients → images (unclamped)."""
        x = coefficients.float() @ self.basis.T.to(coefficients.device) + self.mean.to(coefficients.device)
        return x.view(len(x), *self.shape)

    def roundtrip(self, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """The PCA anchor: ``images`` projected onto the components and back, clamped to [-1, 1]."""
        return torch.cat([self.decode(self.encode(images[i : i + batch_size])).clamp(-1, 1)
                          for i in range(0, len(images), batch_size)])


def _principal_directions(xc: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` leading principal directions (D×k, orthonormal columns, by decreasing variance) of the centred
    rows ``xc`` (N×D, float64) and their sums of squares (the squared singular values of ``xc``).

    The eigendecomposition of the smaller of ``xcᵀxc`` (D×D) and ``xc xcᵀ`` (N×N) instead of an SVD of ``xc``: the
    same directions to float64 rounding (``tests/test_pca.py`` checks them against scikit-learn), at less cost: the
    eigenproblem is only min(N, D) × min(N, D).  Each direction's sign is fixed as
    scikit-learn's ``svd_flip`` fixes it (its largest entry positive), so a fit does not depend on the solver."""
    n, d = xc.shape
    if d <= n:
        var, vectors = torch.linalg.eigh(xc.T @ xc)
        var, basis = var[-k:].flip(0), vectors[:, -k:].flip(1)
    else:  # fewer images than values: directions from the Gram matrix, re-orthonormalised (exact in exact arithmetic)
        var, vectors = torch.linalg.eigh(xc @ xc.T)
        var = var[-k:].flip(0)
        basis = torch.linalg.qr(xc.T @ vectors[:, -k:].flip(1))[0]
    largest = basis.abs().argmax(0)
    return basis * basis[largest, torch.arange(k)].sign(), var


def pca_anchor(train_images: torch.Tensor, test_images: torch.Tensor, values: int) -> torch.Tensor:
    """The PCA anchor at ``values`` numbers per image: fitted on ``train_images`` (at most 10,000,
    evenly spaced), applied to ``test_images``."""
    n = len(train_images)
    fit_on = train_images[torch.linspace(0, n - 1, min(n, 10_000)).round().long()] if n > 10_000 else train_images
    return PCA.fit(fit_on, min(values, len(fit_on) - 1, fit_on[0].numel())).roundtrip(test_images)
