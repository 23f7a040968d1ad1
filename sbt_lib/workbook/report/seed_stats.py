"""Results over paired seeds: per-variant mean ± std (:func:`summarize`), the markdown table of a sweep, and verdicts
that read a difference against the seed spread (:func:`comparison`, :func:`verdict`, :func:`seed_spread`).

Every comparison in the workbook runs its variants with the same seeds (same initialisation, same batches), so a
difference is read twice: against the larger seed-to-seed std of the two, and seed by seed.  A difference counts as
clear when it exceeds twice that std.
"""
from __future__ import annotations

import numpy as np

from .tables import markdown_table, mean_std

FEATURE_KEYS = ("fid", "fd_effnet")  # rFID-style distances: Inception when its weights resolve, else EffNet-Lite0
FEATURE_LABELS = {"fid": "rFID", "fd_effnet": "rFD-EffNet"}


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
        if "aligner_2d_params" in mine[0]:
            entry["aligner_2d_params"] = mine[0]["aligner_2d_params"]
        for m in metrics:
            v = np.array([r[m] for r in mine], dtype=float)
            entry["values"][m] = v.tolist()
            entry[f"{m}_mean"] = float(v.mean())
            entry[f"{m}_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        out[name] = entry
    return out


def summary_table(summary: dict[str, dict], baseline: str | None = None, anchors: dict | None = None) -> str:
    """The summary as a markdown table (PSNR / SSIM / distribution distance, mean ± std; Δ PSNR
    against ``baseline``), with the rows of ``anchors`` (:func:`~sbt_lib.eval.reconstruction.anchor_metrics`:
    bicubic and PCA at the same number of values) below."""
    fd = feature_key(summary)
    header = ["variant", "params", "PSNR (dB)", "SSIM"] + ([f"{FEATURE_LABELS[fd]} ↓"] if fd else []) + ["Δ PSNR"]
    base = summary[baseline]["test_psnr_mean"] if baseline in summary else None
    delta = (lambda v: f"{v - base:+.2f}") if base is not None else (lambda v: "")
    rows = [[name, f"{s['params'] / 1e6:.2f} M", mean_std(s["test_psnr_mean"], s["test_psnr_std"]),
             mean_std(s["test_ssim_mean"], s["test_ssim_std"], 3)]
            + ([mean_std(s[f"{fd}_mean"], s[f"{fd}_std"])] if fd else []) + [delta(s["test_psnr_mean"])]
            for name, s in summary.items()]
    rows += [[f"*{name} at {a['values']} values (anchor)*", "–", f"{a['psnr']:.2f}", f"{a['ssim']:.3f}"]
             + ([""] if fd else []) + [delta(a["psnr"])] for name, a in (anchors or {}).items()]
    return markdown_table(header, rows)


def comparison(summary: dict[str, dict], a: str, b: str, metric: str = "test_psnr",
               lower_is_better: bool = False) -> dict:
    """Variant ``a`` against ``b`` on ``metric``, in numbers: ``difference`` of the means, ``spread`` (the larger
    seed std), ``call`` (``better`` or ``worse`` where the difference in ``a``'s favour or against it exceeds twice
    the spread, else ``within``), and, where both have one value per seed (paired: same seed, same batches),
    ``paired_mean`` and ``paired_std`` of the difference seed by seed and ``paired_agree`` (whether every seed's
    difference has the sign of the mean); ``None`` for those otherwise."""
    sa, sb = summary[a], summary[b]
    d = sa[f"{metric}_mean"] - sb[f"{metric}_mean"]
    spread = max(sa[f"{metric}_std"], sb[f"{metric}_std"])
    gain = -d if lower_is_better else d
    out = {"difference": float(d), "spread": float(spread),
           "call": "better" if gain > 2 * spread else "worse" if gain < -2 * spread else "within",
           "paired_mean": None, "paired_std": None, "paired_agree": None}
    va, vb = (x.get("values", {}).get(metric) for x in (sa, sb))
    if va and vb and len(va) == len(vb) > 1:
        diff = np.array(va) - np.array(vb)
        out.update(paired_mean=float(diff.mean()), paired_std=float(diff.std(ddof=1)),
                   paired_agree=bool(np.all(diff * diff.mean() > 0)))
    return out


CALLS = {"better": "clearly better than", "worse": "clearly worse than", "within": "within the seed-to-seed spread of"}


def verdict(summary: dict[str, dict], a: str, b: str, metric: str = "test_psnr", unit: str = "dB",
            lower_is_better: bool = False) -> str:
    """One line reading variant ``a`` against ``b`` on ``metric`` (:func:`comparison`): the difference of means, the
    larger seed std, and whether the difference is clear (more than twice that std) or within the seed-to-seed
    spread; where both have one value per seed, also the difference seed by seed (the seeds are paired)."""
    c = comparison(summary, a, b, metric, lower_is_better)
    paired = ("" if c["paired_mean"] is None
              else f"; seed by seed {c['paired_mean']:+.2f} ± {c['paired_std']:.2f} {unit}")
    return (f"- **{a}** vs **{b}**: {c['difference']:+.2f} {unit} (largest seed std {c['spread']:.2f} {unit}{paired})"
            f" — {CALLS[c['call']]} {b}.")


def seed_spread(summary: dict[str, dict]) -> str:
    """One line on whether a table separates its variants: the range of seed stds against the span of means."""
    stds = [s["test_psnr_std"] for s in summary.values()]
    means = [s["test_psnr_mean"] for s in summary.values()]
    span = max(means) - min(means)
    return (f"- **Seed spread**: the seed std of held-out PSNR is {min(stds):.3f}–{max(stds):.3f} dB across variants; "
            f"the variants' means span {span:.2f} dB, "
            + ("more than every variant's seed std." if span > max(stds)
               else "**not more** than the largest seed std: at this budget the table does not separate them."))
