"""Notebook 02's Table 3 at a chosen training budget per run: does the seed spread fall below the variants' span?

Trains the Table 3 variants of notebook 02 (default G, G+L1, G+L1+L2) with its tokenizer, data and recipe,
changing only the steps and batch of each run (warm-up: a seventh of the steps, at least the notebook's 15),
for every seed, through :func:`sbt_lib.workbook.pipeline.ablations.run_variants` (runs resume from their checkpoints),
and prints the table (held-out PSNR / SSIM / FD-EffNet, mean ± std), the span of the means against the
largest seed std, and each variant against G; ``table3_psnr.png`` in the run folder shows the means, stds and seeds.  On a GPU the runs use bf16 autocast, as the engine does there.

    python benchmarks/table3_budget.py [--steps 1000] [--batch-size 64] [--seeds 0 1 2]
        [--variants G G+L1 G+L1+L2] [--out DIR]

CIFAR-10 comes from ``$SBT_DATA/cifar10`` (e.g. ``SBT_DATA=../shared/data``).  The notebook's own budget is
``--steps 100 --batch-size 32``; it prints the mean training seconds per run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sbt_lib.workbook.config.params import notebook_params
from sbt_lib.workbook.pipeline import ablations as ab
from sbt_lib.workbook.report import seed_stats
from sbt_lib.workbook.pipeline.caches import load_data
from sbt_lib.workbook.report import viz


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1000, help="optimizer steps per run (the notebook: 100)")
    ap.add_argument("--batch-size", type=int, default=64, help="images per step (the notebook: 32)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["G", "G+L1", "G+L1+L2"])
    ap.add_argument("--scale", default="cpu", help="the bundle of notebook 02 to start from")
    ap.add_argument("--out", default=None, help="run folder (default runs/benchmarks/table3_<steps>x<batch>)")
    args = ap.parse_args()

    P = notebook_params("02_bootstrapping", {"scale": args.scale, "steps": args.steps, "batch_size": args.batch_size,
                                              "warmup": max(15, args.steps // 7), "progress": False})
    table3 = ab.table3_variants(P.tokenizer.local_2d)
    unknown = [v for v in args.variants if v not in table3]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; Table 3 has {list(table3)}")
    out = Path(args.out or f"runs/benchmarks/table3_{args.steps}x{args.batch_size}")
    train_set, test_set = load_data(P)
    print(f"{train_set}\n{test_set}\n{len(args.variants)} variants × seeds {args.seeds}, {args.steps} steps of "
          f"{args.batch_size} each; run folder {out}", flush=True)

    rows = []
    for seed in args.seeds:  # seed by seed, so that an interrupted sweep has whole seeds to show
        start = time.perf_counter()
        rows += ab.run_variants(P.replace(seed=seed, seeds=1), {v: table3[v] for v in args.variants},
                                train_set, test_set, out, progress=False)
        print(f"seed {seed} ({time.perf_counter() - start:.0f} s): "
              + ", ".join(f"{r['variant']} {r['test_psnr']:.3f} dB" for r in rows if r["seed"] == seed), flush=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=1, default=str))

    summary = seed_stats.summarize(rows)
    print("\n" + seed_stats.summary_table(summary, baseline=args.variants[0]) + "\n")
    for name, s in summary.items():  # the table rounds to 0.01 dB; the spread at long budgets is smaller
        print(f"{name:>10}: PSNR {s['test_psnr_mean']:.3f} ± {s['test_psnr_std']:.3f} dB, per seed "
              + ", ".join(f"{v:.3f}" for v in s["values"]["test_psnr"]))
    means = [s["test_psnr_mean"] for s in summary.values()]
    stds = [s["test_psnr_std"] for s in summary.values()]
    span = max(means) - min(means)
    print(f"\nmeans span {span:.3f} dB; seed std {min(stds):.3f}–{max(stds):.3f} dB: "
          + ("every variant's seed std is below the span" if max(stds) < span else "the seed spread covers the span"))
    print("\n".join(seed_stats.verdict(summary, v, args.variants[0]) for v in args.variants[1:]))
    print(f"seconds per run: {sum(r['train_seconds'] for r in rows) / len(rows):.1f} (training only)")
    viz.bar_chart(summary, "test_psnr", out / "table3_psnr.png", ylabel="held-out PSNR (dB)",
                  title=f"Table 3, {args.steps} steps of {args.batch_size} per run ({len(args.seeds)} seeds)")
    print(f"figure: {out / 'table3_psnr.png'}")


if __name__ == "__main__":
    main()
