"""The comparison the paper's generation claim rests on, at equal compute and over seeds (notebook 05's study).

(a) a SiT on the global tokens only, (b) the same SiT on all three token groups for as many steps as (a)'s training
FLOPs buy, (c) the SoftVQ baseline (no local parts) decoding (a)'s samples: each from zero velocity, one per seed, with
gFD-EffNet and KID of ``generator_samples`` samples against as many test images, and the FLOPs and wall time per
forward and per sample (:func:`sbt_lib.workbook.pipeline.generation_study.comparison`).  Notebook 05 reads the committed
summary where its recipe is the notebook's, since three seeds at thousands of samples do not fit its minutes::

    python benchmarks/generator_compare.py [--scale cpu] [-p NAME=VALUE ...] [--out benchmarks]

It stands on the runs of ``make reproduce`` at the scale (notebook 04's stage-2 tokenizers, notebook 02's ``G``):
where those are missing it trains them the same way, into ``runs/<scale>/05_generation``.  Writes
``generator_compare_<scale>.json`` (summary per row: mean ± std and the values of each seed; the recipe; the command,
machine and wall time) and ``generator_compare_<scale>.png`` (samples of each row, first seed).
CIFAR-10 comes from ``$SBT_DATA/cifar10`` (e.g. ``SBT_DATA=../shared/data``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from sbt_lib.__main__ import _parse_param
from sbt_lib.files import REPO, write_json
from sbt_lib.workbook.config.params import resolve
from sbt_lib.workbook.pipeline import ablations, caches, generation_study as study
from sbt_lib.workbook.pipeline.base import _machine, notebook_base
from sbt_lib.workbook.report import viz


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("-p", "--param", action="append", type=_parse_param, default=[], metavar="NAME=VALUE")
    parser.add_argument("--out", default=str(REPO / "benchmarks"), help="where the summary and the figure go")
    args = parser.parse_args()

    t0 = time.perf_counter()
    P = resolve("05_generation", args.scale, dataset=args.dataset, **dict(args.param))
    runs = REPO / "runs" / args.scale
    out = runs / "05_generation"
    train_set, test_set = caches.load_data(P)
    stage1 = notebook_base(P, train_set, test_set, runs)
    stage2, where = ablations.aligner_sweep(P, stage1, train_set, test_set, runs / "04_aligner_scaling",
                                            out / "tokenizers")
    classes = torch.arange(P.generator.samples) % len(train_set.classes)
    summary, rows, anchors = study.comparison(P, stage1, stage2, train_set, test_set, out, classes,
                                     reuse_g=runs / "02_bootstrapping")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    stem = Path(args.out) / f"generator_compare_{args.scale}"
    viz.image_rows({k: rows[k][0]["images"] for k in rows}, n=8, path=stem.with_suffix(".png"))
    write_json(stem.with_suffix(".json"), {
        "command": " ".join(["python", *sys.argv]), "machine": _machine(), "seconds": time.perf_counter() - t0,
        "recipe": study.comparison_recipe(P), "tokenizers_from": where, "summary": summary, "anchors": anchors,
        "differences": {"(a) - (b)": study.read_difference(summary, *list(summary)[:2]),
                        "(a) - (c)": study.read_difference(summary, list(summary)[0], list(summary)[2])}})
    for name, s in summary.items():
        print(f"{name}: {s['label']} {s['gfd_mean']:.1f} ± {s['gfd_std']:.1f}, KID {s['kid_mean']:.4f} ± "
              f"{s['kid_std']:.4f}, {s['steps_mean']:.0f} steps, {s['gflops_forward_mean']:.4f} GFLOP/forward, "
              f"{s['ms_per_image_mean']:.1f} ms/sample")
    for name, a in anchors.items():
        print(f"{name}: {a['label']} {a['gfd']:.1f}, KID {a['kid']:.4f}")
    print(f"→ {stem}.json, {stem}.png ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
