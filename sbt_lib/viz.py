"""Figures for the notebooks (matplotlib).  Each function draws one figure, saves it when given a
path, and returns it, so notebooks show it inline and the run folder keeps a PNG."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch


def _save(fig, path: str | Path | None):
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def to_numpy_image(img: torch.Tensor) -> np.ndarray:
    """3×H×W in [-1, 1] → H×W×3 in [0, 1] for ``imshow``."""
    return ((img.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()


def plot_training(history: list[dict], path=None, metric: str = "eval_psnr", reference: dict | None = None):
    """Training loss per step (log scale) and a held-out metric per evaluation, side by side.

    ``reference`` maps a label to a value drawn as a horizontal line on the metric panel
    (e.g. the bicubic PSNR)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    rows = [r for r in history if "loss" in r]
    ax1.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1)
    ax1.set(xlabel="step", ylabel="training loss", yscale="log", title="training loss")
    evals = [r for r in history if metric in r]
    ax2.plot([r["step"] for r in evals], [r[metric] for r in evals], "o-", label="tokenizer")
    for i, (label, value) in enumerate((reference or {}).items()):
        ax2.axhline(value, ls="--", color=f"C{i + 1}", label=label)
    name = metric.removeprefix("eval_")
    ax2.set(xlabel="step", ylabel=name.upper() + (" (dB)" if name == "psnr" else ""), title=f"held-out {name.upper()}")
    ax2.legend()
    fig.tight_layout()
    return _save(fig, path)


def image_rows(rows: dict[str, torch.Tensor], n: int = 8, path=None, scale: float = 1.2):
    """A grid with one labelled row per entry of ``rows`` (each B×3×H×W), first ``n`` images."""
    fig, axes = plt.subplots(len(rows), n, figsize=(n * scale, len(rows) * scale), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r, c]
            if c < len(images):
                ax.imshow(to_numpy_image(images[c]), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return _save(fig, path)


def plot_codebook_usage(probs: torch.Tensor, path=None, title: str = "global codebook"):
    """Sorted average assignment mass per codeword (log scale), with the uniform level."""
    mass = probs.detach().reshape(-1, probs.shape[-1]).float().mean(0).sort(descending=True).values.cpu().numpy()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(np.arange(1, len(mass) + 1), mass)
    ax.axhline(1 / len(mass), ls="--", color="gray", label="uniform use")
    ax.set(xlabel="codeword rank", ylabel="mean assignment", yscale="log", title=title)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)
