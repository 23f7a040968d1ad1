"""Ablations in miniature: train tokenizer variants over seeds, evaluate, summarise (paper Table 3).

A *variant* is a name and a dict of :class:`~sbt_lib.tokenizer.TokenizerConfig` switches laid
over a notebook's parameters.  :func:`run_variants` trains every (variant, seed) pair into its own
run folder — so an interrupted sweep resumes where it stopped, and finished runs are not retrained
— and returns one row of held-out metrics per run; :func:`summarize` turns the rows into
mean ± standard deviation per variant.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import experiments as ex

FEATURE_KEYS = ("fid", "fd_effnet")  # rFID-style distances: Inception when its weights resolve, else EffNet-Lite0
FEATURE_LABELS = {"fid": "rFID", "fd_effnet": "rFD-EffNet"}


def table3_variants(aligner_2d: str) -> dict[str, dict]:
    """Paper Table 3 in miniature: equal global tokens, growing local groups, and two ablations of
    the full model (a bidirectional 2D aligner; one codebook shared by all groups)."""
    full = dict(local_1d=True, local_2d=aligner_2d)
    return {
        "G": dict(local_1d=False, local_2d=None),
        "G+L1": dict(local_1d=True, local_2d=None),
        "G+L1+L2 (non-causal)": {**full, "causal": False},
        "G+L1+L2 (shared codebook)": {**full, "shared_codebook": True},
        "G+L1+L2": full,
    }


def table2_variants(aligner_2d: str, teachers: list[str], weight: float) -> dict[str, dict]:
    """Paper Table 2 in miniature: the full model with local REPA (μ2 = ``weight``, on the local 1D
    tokens, Eq. 7) to each local teacher in ``teachers``, against the same model without it."""
    full = dict(local_1d=True, local_2d=aligner_2d)
    return {"no local REPA": {**full, "repa_local_weight": 0.0},
            **{f"REPA-local: {t}": {**full, "repa_local_weight": weight, "repa_local_teacher": t,
                                    "repa_local_group": "local_1d"} for t in teachers}}


def fusion_variants(aligner_2d: str) -> dict[str, dict]:
    """Eq. 11: the full model with soft residual fusion and with concatenation."""
    full = dict(local_1d=True, local_2d=aligner_2d)
    return {"soft residual": {**full, "fusion": "residual"}, "concat": {**full, "fusion": "concat"}}


def slug(name: str) -> str:
    """A folder name for a variant: ``G+L1+L2 (shared codebook)`` → ``G+L1+L2_shared_codebook``."""
    return re.sub(r"[^A-Za-z0-9+.-]+", "_", name).strip("_")


def run_variants(params: dict, variants: dict[str, dict], seeds: list[int], train_set, test_set, out: Path,
                 progress: bool = True) -> list[dict]:
    """Train and evaluate every variant with every seed; one row of metrics per run.

    Runs land in ``out/<variant>/seed<k>``; each resumes from its checkpoint, and a finished run
    is only re-evaluated.  The seed fixes the initial weights and the batch order.  ``progress``
    shows one bar over the runs (one per training step would slow a 2-core notebook kernel)."""
    runs = [(name, seed) for name in variants for seed in seeds]
    rows = []
    bar = tqdm(runs, desc="runs", disable=not progress, mininterval=1.0)
    for name, seed in bar:
        bar.set_postfix_str(f"{name}, seed {seed}")
        run = Path(out) / slug(name) / f"seed{seed}"
        p = {**params, **variants[name], "seed": seed}
        result = ex.train_tokenizer(p, train_set, test_set, run, progress=False, evaluate=False)
        model = result.best_model
        metrics = ex.evaluate_tokenizer(model, test_set, fd_size=params.get("fd_size"))
        rows.append({
            "variant": name, "seed": seed, "run": str(run),
            "test_psnr": metrics["test_psnr"], "test_ssim": metrics["test_ssim"],
            **{k: metrics[k] for k in (*FEATURE_KEYS, "kid", "kid_effnet", "feature_space", "test_lpips")
               if k in metrics},
            "codebook_perplexity": metrics["codebook_perplexity"],
            "params": model.num_params()["total"], "train_seconds": result.seconds, "steps": result.step,
            "fusion_weights": model.fusion.weights(),
        })
    return rows


def feature_key(rows_or_summary) -> str | None:
    """Which distribution distance the runs report (``fid`` or ``fd_effnet``), if any."""
    first = next(iter(rows_or_summary.values() if isinstance(rows_or_summary, dict) else rows_or_summary), {})
    return next((k for k in FEATURE_KEYS if k in first or f"{k}_mean" in first), None)


def summarize(rows: list[dict], metrics: tuple[str, ...] | None = None) -> dict[str, dict]:
    """Per variant (in first-seen order): ``<metric>_mean``, ``<metric>_std`` (sample standard
    deviation over seeds; 0 for a single seed), ``values`` (metric → per-seed list) and ``seeds``.
    ``metrics`` defaults to PSNR, SSIM and the runs' distribution distance (FID or FD-EffNet)."""
    fd = feature_key(rows)
    metrics = metrics or ("test_psnr", "test_ssim") + ((fd,) if fd else ())
    out: dict[str, dict] = {}
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name]
        entry = {"seeds": len(mine), "params": mine[0]["params"], "values": {}}
        for m in metrics:
            v = np.array([r[m] for r in mine], dtype=float)
            entry["values"][m] = v.tolist()
            entry[f"{m}_mean"] = float(v.mean())
            entry[f"{m}_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        out[name] = entry
    return out


def markdown_table(summary: dict[str, dict], baseline: str | None = None, anchors: dict | None = None) -> str:
    """The summary as a markdown table (PSNR / SSIM / distribution distance, mean ± std; Δ PSNR
    against ``baseline``), with the rows of ``anchors`` (:func:`~sbt_lib.experiments.anchor_metrics`:
    bicubic and PCA at the same number of values) below."""
    fd = feature_key(summary)
    fd_col = f" {FEATURE_LABELS[fd]} ↓ |" if fd else ""
    lines = [f"| variant | params | PSNR (dB) | SSIM |{fd_col} Δ PSNR |", "|---|---|---|---|" + "---|" * (1 + bool(fd))]
    base = summary[baseline]["test_psnr_mean"] if baseline in summary else None
    for name, s in summary.items():
        delta = f"{s['test_psnr_mean'] - base:+.2f}" if base is not None else ""
        fd_cell = f" {s[f'{fd}_mean']:.2f} ± {s[f'{fd}_std']:.2f} |" if fd else ""
        lines.append(
            f"| {name} | {s['params'] / 1e6:.2f} M | {s['test_psnr_mean']:.2f} ± {s['test_psnr_std']:.2f} "
            f"| {s['test_ssim_mean']:.3f} ± {s['test_ssim_std']:.3f} |{fd_cell} {delta} |"
        )
    for name, a in (anchors or {}).items():
        delta = f"{a['psnr'] - base:+.2f}" if base is not None else ""
        lines.append(f"| *{name} at {a['values']} values (anchor)* | – | {a['psnr']:.2f} | {a['ssim']:.3f} |"
                     f"{' |' if fd else ''} {delta} |")
    return "\n".join(lines)
