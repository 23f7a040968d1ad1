"""Figures of optimal transport (notebook 03): plans as heatmaps, where each 1D token draws its mass
from on the image, the effect of ε, convergence, and an ipywidgets slider for ε.

A plan P is N_x × N_z: row i is a 2D latent position (raster order on a ``grid`` × ``grid``
latent map), column j a 1D token; P_ij is the mass moved from position i to token j.  Like
:mod:`sbt_lib.workbook.report.viz`, each function draws one figure, saves it when given a path, and returns it.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from ...objective.ot import sinkhorn
from .viz import live_kernel, save_figure, show, to_numpy_image


def plot_point_transport(x: torch.Tensor, z: torch.Tensor, plan: torch.Tensor, path=None, title: str = ""):
    """Two 2D point sets and the plan between them: a line per pair, its opacity ∝ the mass moved."""
    x, z, plan = x.cpu().numpy(), z.cpu().numpy(), plan.cpu().numpy()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    top = plan.max()
    for i, j in zip(*np.nonzero(plan > 1e-3 * top)):
        ax.plot([x[i, 0], z[j, 0]], [x[i, 1], z[j, 1]], color="k", alpha=float(plan[i, j] / top), lw=1.5)
    ax.scatter(*x.T, s=30, label=f"x ({len(x)} points, mass 1/{len(x)})", zorder=3)
    ax.scatter(*z.T, s=90, marker="*", label=f"z ({len(z)} points, mass 1/{len(z)})", zorder=3)
    ax.set(aspect="equal", title=title or "entropic OT plan")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_plans(plans: dict[str, torch.Tensor], path=None, title: str = "transport plans (N_x × N_z)"):
    """Plans side by side as heatmaps: rows are 2D latent positions, columns 1D tokens."""
    fig, axes = plt.subplots(1, len(plans), figsize=(2.6 * len(plans), 4), squeeze=False)
    for ax, (label, plan) in zip(axes[0], plans.items()):
        p = plan.detach().float().cpu().numpy()
        im = ax.imshow(p * p.shape[0], aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set(title=label, xlabel="1D token j", ylabel="2D position i" if ax is axes[0, 0] else None)
        fig.colorbar(im, ax=ax, fraction=0.05, label="P_ij · N_x" if ax is axes[0, -1] else None)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def source_map(plan: torch.Tensor, token: int, grid: int, image_size: int) -> torch.Tensor:
    """Where token ``token`` receives its mass from: its plan column as a grid×grid map, normalised
    to sum 1, upsampled (nearest) to the image size."""
    col = plan[:, token].float().reshape(1, 1, grid, grid)
    col = col / col.sum().clamp_min(1e-12)
    return F.interpolate(col, size=(image_size, image_size), mode="nearest")[0, 0]


def plot_token_sources(images: torch.Tensor, plans: torch.Tensor, tokens: list[int], grid: int, path=None):
    """A grid: one row per image, one column per chosen token; each cell shows the image with the
    2D latent positions the token draws mass from overlaid (bright = more mass)."""
    n, s = len(images), images.shape[-1]
    fig, axes = plt.subplots(n, len(tokens) + 1, figsize=(1.6 * (len(tokens) + 1), 1.6 * n), squeeze=False)
    for r in range(n):
        axes[r, 0].imshow(to_numpy_image(images[r]))
        for c, token in enumerate(tokens, start=1):
            m = source_map(plans[r], token, grid, s).cpu().numpy()
            m = m / max(m.max(), 1e-12)
            heat = plt.get_cmap("inferno")(m)
            heat[..., 3] = 0.9 * np.sqrt(m)  # opaque where the mass is, the image shows through elsewhere
            axes[r, c].imshow(to_numpy_image(images[r]) * 0.6)
            axes[r, c].imshow(heat)
            if r == 0:
                axes[r, c].set_title(f"token {token}", fontsize=9)
        if r == 0:
            axes[r, 0].set_title("image", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle("where each 1D token receives its mass from (2D latent positions)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plan_entropy(plan: torch.Tensor) -> float:
    """Entropy of a plan, in nats (between log max(N_x, N_z) for a sparse plan and log N_x N_z)."""
    p = plan.flatten().double()
    return float(-(p * p.clamp_min(1e-300).log()).sum())


def eps_sweep(cost: torch.Tensor, eps_values: list[float], tol: float = 1e-6, max_iter: int = 5000) -> dict:
    """Solve one cost matrix (N_x × N_z) at every ε: ε → (plan, iterations, entropy, errors)."""
    out = {}
    for eps in eps_values:
        t = sinkhorn(cost.unsqueeze(0), eps=eps, tol=tol, max_iter=max_iter)
        out[eps] = {"plan": t.plan[0], "iterations": t.iterations, "entropy": plan_entropy(t.plan[0]),
                    "errors": t.errors, "cost": t.cost.item()}
    return out


def plot_eps_sweep(sweep: dict, path=None):
    """The plans of :func:`eps_sweep` side by side, with iterations and entropy in the titles."""
    plans = {f"ε = {eps:g}\n{r['iterations']} it., H = {r['entropy']:.2f}": r["plan"] for eps, r in sweep.items()}
    return plot_plans(plans, path, title="the same problem at different ε: small ε → sparse plan, more iterations")


def plot_convergence(sweep: dict, tol: float, check_every: int = 10, path=None):
    """Marginal error ‖P1 − a‖ against iterations for every ε of :func:`eps_sweep` (log scale)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for eps, r in sweep.items():
        its = check_every * np.arange(1, len(r["errors"]) + 1)
        ax.plot(its, r["errors"], label=f"ε = {eps:g}")
    ax.axhline(tol, ls="--", color="gray", label=f"tolerance {tol:g}")
    ax.set(xlabel="Sinkhorn iteration", ylabel="row-marginal error", yscale="log", xscale="log",
           title="convergence of Sinkhorn")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def epsilon_explorer(cost: torch.Tensor, image: torch.Tensor, grid: int, tokens: list[int]):
    """An ipywidgets slider for ε (log scale) that re-solves ``cost`` (N_x × N_z, one image) and
    redraws its plan and the source maps of ``tokens`` on ``image``.  Headless (:func:`viz.live_kernel`):
    the figures at ε = 0.05, no widgets."""
    import ipywidgets as widgets
    from IPython.display import display

    def draw(eps: float):
        t = sinkhorn(cost.unsqueeze(0), eps=eps, tol=1e-6, max_iter=5000)
        show(plot_plans({f"ε = {eps:.3g}, {t.iterations} iterations": t.plan[0]}))
        show(plot_token_sources(image[None], t.plan, tokens, grid))

    if not live_kernel():
        return draw(0.05)
    slider = widgets.FloatLogSlider(value=0.05, base=10, min=-3, max=0.5, step=0.05, description="ε")
    out = widgets.Output()

    def redraw(_=None):
        with out:
            out.clear_output(wait=True)
            draw(slider.value)

    slider.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([slider, out])
    display(box)
    return box
