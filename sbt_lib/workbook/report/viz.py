"""Figures for the notebooks (matplotlib).  Each function draws one figure, saves it when given a
path, and returns it, so notebooks show it inline and the run folder keeps a PNG."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import torch


def save_figure(fig, path: str | Path | None):
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
    return save_figure(fig, path)


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
    return save_figure(fig, path)


def plot_codebook_usage(probs: torch.Tensor | dict[str, torch.Tensor], path=None, title: str = "codebook usage"):
    """Sorted average assignment mass per codeword (log scale), with the uniform level; ``probs``
    is one B×N×K assignment or a dict of them (one line per token group)."""
    groups = probs if isinstance(probs, dict) else {"global": probs}
    fig, ax = plt.subplots(figsize=(6, 3))
    for name, p in groups.items():
        mass = p.detach().reshape(-1, p.shape[-1]).float().mean(0).sort(descending=True).values.cpu().numpy()
        ax.plot(np.arange(1, len(mass) + 1), mass, label=name)
    ax.axhline(1 / len(mass), ls="--", color="gray", label="uniform use")
    ax.set(xlabel="codeword rank", ylabel="mean assignment", yscale="log", title=title)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def probe_chart(table: dict[str, dict[str, float]], path=None, kinds: dict[str, list[str]] | None = None):
    """Linear-probe accuracy per factor (x) and token group (bars), chance level as a black tick.
    ``table`` is the output of :func:`sbt_lib.eval.probes.probe_table`; ``kinds`` (e.g. ``{"global":
    [...], "local": [...]}``) labels the factors by kind."""
    factors = list(table)
    groups = [g for g in table[factors[0]] if g != "chance"]
    fig, ax = plt.subplots(figsize=(1.3 * len(factors) + 2, 3.5))
    width = 0.8 / len(groups)
    x = np.arange(len(factors))
    for i, g in enumerate(groups):
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, [table[f][g] for f in factors], width, label=g)
    ax.plot(x, [table[f]["chance"] for f in factors], "k_", ms=30, mew=2, label="chance")
    kind_of = {f: k for k, fs in (kinds or {}).items() for f in fs}
    ax.set_xticks(x, [f"{f}\n({kind_of[f]})" if f in kind_of else f for f in factors])
    ax.set(ylim=(0, 1.22), yticks=np.linspace(0, 1, 6), ylabel="held-out accuracy",
           title="linear probes: which tokens carry which factor")
    ax.legend(fontsize=8, ncol=len(groups) + 1, loc="upper center", frameon=False)  # above the bars (≤ 1)
    fig.tight_layout()
    return save_figure(fig, path)


def difference_map(a: torch.Tensor, b: torch.Tensor, gain: float = 4.0) -> torch.Tensor:
    """|a - b| averaged over channels, amplified by ``gain`` and shown as a grey image in [-1, 1]
    (black = identical; white = a difference of 2/gain or more, in [-1, 1] units)."""
    d = ((a - b).abs().mean(1, keepdim=True) * gain / 2).clamp(0, 1)
    return (d * 2 - 1).expand(-1, 3, -1, -1)


def bar_chart(summary: dict[str, dict], metric: str = "test_psnr", path=None, reference: dict | None = None,
              ylabel: str | None = None, title: str | None = None):
    """Mean ± std per variant (the output of :func:`sbt_lib.workbook.report.seed_stats.summarize`), with every seed
    drawn as a dot when ``summary`` entries carry ``values``; ``reference`` lines as in
    :func:`plot_training`."""
    names = list(summary)
    means = np.array([summary[n][f"{metric}_mean"] for n in names])
    stds = np.array([summary[n][f"{metric}_std"] for n in names])
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 3.5))
    x = np.arange(len(names))
    ax.bar(x, means, yerr=stds, capsize=4, color=[f"C{i}" for i in range(len(names))], alpha=0.8)
    for i, n in enumerate(names):
        vals = summary[n].get("values", {}).get(metric, [])
        ax.plot([i] * len(vals), vals, "k.", ms=5)
    for i, (label, value) in enumerate((reference or {}).items()):
        ax.axhline(value, ls=("--", ":")[i % 2], color="gray", label=label)
    refs = list((reference or {}).values())
    lo, hi = min([(means - stds).min(), *refs]), max([(means + stds).max(), *refs])
    pad = max(hi - lo, 1e-3) * 0.6
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set(ylabel=ylabel or metric, title=title or f"{metric}: mean ± std over seeds")
    if reference:
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def count_label(n: float) -> str:
    """A tick label for a count: 12,345 → '12.35k'; 409,600 → '409.6k'; 1,800,000 → '1.8M'."""
    return f"{n / 1e6:.4g}M" if n >= 1e6 else f"{n / 1e3:.4g}k" if n >= 1e3 else f"{n:.0f}"


def scaling_plot(curves: dict[str, dict[str, dict]], metrics: dict[str, str], path=None,
                 references: dict[str, dict[str, float]] | None = None, title: str | None = None):
    """Fig. 6 in miniature: each metric against the 2D aligner's parameters (log axis), one line per
    regime.  ``curves`` maps a regime to its sizes' summaries (:func:`~sbt_lib.workbook.report.seed_stats.summarize`
    entries with ``aligner_2d_params``), drawn as mean ± std with every seed as a dot; ``metrics`` maps
    a metric key to its axis label; ``references`` maps a metric key to horizontal anchor lines."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for ax, (metric, label) in zip(axes[0], metrics.items()):
        for i, (regime, sizes) in enumerate(curves.items()):
            x = np.array([s["aligner_2d_params"] for s in sizes.values()], dtype=float)
            mean = np.array([s[f"{metric}_mean"] for s in sizes.values()])
            std = np.array([s[f"{metric}_std"] for s in sizes.values()])
            shift = 1.0 + 0.04 * (i - (len(curves) - 1) / 2)  # side by side, not on top of each other
            ax.errorbar(x * shift, mean, yerr=std, marker="o", capsize=3, color=f"C{i}", label=regime)
            for xi, s in zip(x, sizes.values()):
                vals = s.get("values", {}).get(metric, [])
                ax.plot([xi * shift] * len(vals), vals, ".", color=f"C{i}", alpha=0.4, ms=4)
        for j, (name, value) in enumerate((references or {}).get(metric, {}).items()):
            ax.axhline(value, ls=("--", ":", "-.")[j % 3], color=("gray", "gray", "black")[j % 3], label=name)
        ax.set_xscale("log")
        ticks = sorted({s["aligner_2d_params"] for sizes in curves.values() for s in sizes.values()})
        ax.set_xticks(ticks, [count_label(n) for n in ticks])
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set(xlabel="2D aligner parameters (log)", ylabel=label)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def show(fig) -> None:
    """Display ``fig`` where the code runs (a notebook cell, an ipywidgets ``Output``) and close it, so that the
    cell does not show it a second time at its end."""
    from IPython.display import display

    display(fig)
    plt.close(fig)


def live_kernel() -> bool:
    """Whether the explorers build widgets: not in the runner's headless kernels (it sets ``SBT_HEADLESS=1``),
    where nobody moves a slider and the notebook client can block on widget messages (jupyter/nbclient#312);
    there they show their first state as a plain figure."""
    return os.environ.get("SBT_HEADLESS", "0") in ("", "0")


def group_explorer(model, images: torch.Tensor):
    """An ipywidgets explorer: one slider per token group scales that group (0 removes it) before
    the decoder; the decoded images update as the sliders move.  Headless: the figure at scale 1, no widgets."""
    import ipywidgets as widgets
    from IPython.display import display

    with torch.no_grad():
        enc = model.encode(images)

    def draw(scales: dict[str, float]):
        with torch.no_grad():
            decoded = model.decode(enc, scales=scales).clamp(-1, 1)
        show(image_rows({"original": images, "decoded": decoded}, n=len(images)))

    if not live_kernel():
        return draw({g: 1.0 for g in model.cfg.groups})
    sliders = {g: widgets.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.1, description=g)
               for g in model.cfg.groups}
    out = widgets.Output()

    def redraw(_=None):
        with out:
            out.clear_output(wait=True)
            draw({g: s.value for g, s in sliders.items()})

    for s in sliders.values():
        s.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([widgets.HBox(list(sliders.values())), out])
    display(box)
    return box


def metric_lines(curves: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, path=None,
                 logx: bool = False, title: str | None = None):
    """One line of (x, y) points per name: e.g. a distance against function evaluations per sampler."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, (name, points) in enumerate(curves.items()):
        xs, ys = zip(*sorted(points)) if points else ((), ())
        ax.plot(xs, ys, marker="o", color=f"C{i}", label=name)
    if logx:  # ticks at 1, 2, 5, 10, 20, ... written as plain numbers (not 4×10^0, 6×10^0, ...)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title or "")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def generation_explorer(generate, class_names: list[str], samplers=("heun", "euler", "sde", "dopri5")):
    """An ipywidgets panel (needs a live kernel): class, guidance scale, sampler, steps and seed →
    a row of new samples.  ``generate(class_index, scale, sampler, steps, seed)`` returns images.
    Headless: the panel's first state (the first class, guidance 2, the first sampler, 10 steps, seed 0)."""
    import ipywidgets as widgets
    from IPython.display import display

    def draw(klass, scale, sampler, steps, seed):
        show(image_rows({f"{class_names[klass]}, {sampler} × {steps}, scale {scale}":
                         generate(klass, scale, sampler, steps, seed)}, n=8))

    if not live_kernel():  # headless: the panel's first state as a figure
        return draw(0, 2.0, samplers[0], 10, 0)
    panel = widgets.interactive(
        draw, klass=widgets.Dropdown(options=[(n, i) for i, n in enumerate(class_names)], description="class"),
        scale=widgets.FloatSlider(value=2.0, min=1.0, max=6.0, step=0.5, description="guidance"),
        sampler=widgets.Dropdown(options=list(samplers), description="sampler"),
        steps=widgets.IntSlider(value=10, min=2, max=50, description="steps"),
        seed=widgets.IntText(value=0, description="seed"))
    display(panel)
    return panel


def tradeoff_scatter(rows: list[dict], x: str, y: str, path=None, xlabel: str | None = None,
                     ylabel: str | None = None, title: str | None = None):
    """One point per run (``rows``: dicts with ``variant``, ``x`` and ``y``), a colour per variant, and each
    variant's mean as a cross: e.g. reconstruction distance against generation distance, the compression–
    generation trade-off (lower-left is better on both)."""
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    for i, name in enumerate(dict.fromkeys(r["variant"] for r in rows)):
        pts = np.array([[r[x], r[y]] for r in rows if r["variant"] == name], dtype=float)
        ax.scatter(pts[:, 0], pts[:, 1], color=f"C{i}", s=28, alpha=0.8, label=name)
        ax.scatter(*pts.mean(0), color=f"C{i}", marker="x", s=90)
    ax.set(xlabel=xlabel or x, ylabel=ylabel or y, title=title or "")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def sweep_plot(summary: dict[str, dict], points: dict[float, str], metrics: dict[str, str], path=None,
               xlabel: str = "", title: str | None = None):
    """One panel per metric (``metrics``: key → axis label) of a sweep: ``points`` maps each x value to its
    variant in ``summary`` (:func:`~sbt_lib.workbook.report.seed_stats.summarize`); mean ± std over seeds with every
    seed as a dot, so a trend is read against the spread."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    xs = np.array(list(points), dtype=float)
    for ax, (metric, label) in zip(axes[0], metrics.items()):
        means = np.array([summary[points[x]][f"{metric}_mean"] for x in points])
        stds = np.array([summary[points[x]][f"{metric}_std"] for x in points])
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=4, color="C0")
        for x in points:
            vals = summary[points[x]].get("values", {}).get(metric, [])
            ax.plot([x] * len(vals), vals, "k.", ms=4)
        ax.set(xlabel=xlabel, ylabel=label)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
