"""Held-out reconstruction quality of the tokenizer against wall-clock training time, with anchors.

Trains the tokenizer of notebook 01 at a scale (default ``cpu``: the recipe the workbook uses)
with reconstruction loss only, evaluates held-out PSNR/SSIM at fixed points during training,
and measures in the same run the two anchors at the same number of values per image:

- **bicubic**: down to the largest thumbnail holding that many numbers and back up;
- **PCA**: that many principal components fitted on the training split (the best linear code).

Prints one table per data set (PSNR/SSIM at every evaluation point, mean ± std over seeds, and
the anchors) and saves the curves as a PNG.  ``--variant`` names other recipes to compare
(``previous`` is the recipe before the conv trunk, gain-shape SoftVQ and the linear path).  ``--refine``
adds the refine stage after each run (a pixel refiner trained with the rest frozen,
:func:`sbt_lib.workbook.pipeline.trainers.train_refiner`) and a row for it in the end-of-run table.

    python benchmarks/tokenizer_quality.py [--datasets cifar10 photos] [--seeds 0 1 2]
        [--variants recipe previous] [--scale cpu] [--steps N] [--evals 8] [--refine] [--out DIR]

``--base RUN`` instead reports the base tokenizer's training run (``python -m sbt_lib train base``, run folder
``runs/cpu/base/tokenizer``): held-out PSNR and rFD-EffNet against training images seen, with the PCA and
bicubic anchors at the same number of values measured on the same held-out images, as a table and a PNG::

    python benchmarks/tokenizer_quality.py --base runs/cpu/base/tokenizer [--out benchmarks]

CIFAR-10 comes from ``$SBT_DATA/cifar10`` (e.g. ``SBT_DATA=../shared/data``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sbt_lib.eval.metrics import psnr, ssim
from sbt_lib.eval.reconstruction import anchor_metrics, evaluate_tokenizer, held_out_images, reconstruct
from sbt_lib.train import train
from sbt_lib.workbook.config.params import Params, resolve
from sbt_lib.workbook.pipeline.caches import load_data
from sbt_lib.workbook.pipeline.runs import load_tokenizer
from sbt_lib.workbook.pipeline.trainers import build_tokenizer, train_refiner

# Recipes to compare, as overrides of the notebook-01 parameters at the chosen scale.
VARIANTS = {
    "recipe": {},
    # The cpu recipe before this benchmark existed: 3×3 conv stem + patchify, unit-norm SoftVQ at
    # τ = 0.07, no linear path, batches of 16 at lr 2e-3 with β2 = 0.95.
    "previous": dict(trunk="patch", linear_path=False, keep_norm=False, tau=0.07, batch_size=16, lr=2e-3,
                     betas=(0.9, 0.95), warmup=100, ema=0.0),
    "random codebooks": dict(codebook_init="random"),  # the recipe before its codebooks started from k-means
    "lr 2e-3": dict(lr=2e-3),  # the recipe's lr before 2026-11-26: one seed in three spiked after the warm-up
    "no linear path": dict(linear_path=False),
    "no gain-shape": dict(keep_norm=False),
    "patch trunk": dict(trunk="patch"),
}


def run(P: Params, train_set, test_images: torch.Tensor, out: Path, evals: int) -> list[dict]:
    """Train once; held-out PSNR/SSIM at ``evals`` evenly spaced steps (and at the start)."""
    model = build_tokenizer(P, train_set)

    def eval_fn(m):
        recon = reconstruct(m, test_images)
        return {"psnr": psnr(recon, test_images).mean().item(), "ssim": ssim(recon, test_images).mean().item()}

    start = {"step": 0, "seconds": 0.0, **{f"eval_{k}": v for k, v in eval_fn(model.eval()).items()}}
    cfg = dataclasses.replace(P.training, eval_every=max(1, P.training.steps // evals), ckpt_every=0, progress=True)
    loss = lambda m, b: {"rec": F.mse_loss(m(b.images)[0], b.images)}  # noqa: E731
    result = train(model, loss, train_set, cfg, out_dir=out, eval_fn=eval_fn, resume=False,
                   meta={"tokenizer": model.cfg.to_dict()})
    return [start] + [h for h in result.history if "eval_psnr" in h]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["cifar10", "photos"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--variants", nargs="+", default=["recipe"], choices=list(VARIANTS))
    ap.add_argument("--scale", default="cpu")
    ap.add_argument("--steps", type=int, help="training steps (default: the scale's)")
    ap.add_argument("--evals", type=int, default=6, help="evaluation points during training")
    ap.add_argument("--test-size", type=int, default=2000, help="held-out images of the test split (evenly spaced)")
    ap.add_argument("--refine", action="store_true", help="add the refine stage after every run")
    ap.add_argument("--out", default="runs/benchmarks/tokenizer_quality")
    ap.add_argument("--base", metavar="RUN", help="report the base tokenizer's training run in RUN (see above)")
    ap.add_argument("--report-only", action="store_true",
                    help="skip training: report on the runs saved in --out by an earlier call with the same arguments")
    args = ap.parse_args()
    if args.base:
        return base_curve(Path(args.base), Path(args.out if args.out != ap.get_default("out") else "benchmarks"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        return report(args, out)
    results = {}
    for dataset in args.datasets:
        base = resolve("01_decomposition", args.scale, dataset=dataset, steps=args.steps)
        train_set, test_set = load_data(base)
        test_images = held_out_images(test_set, args.test_size)
        values = base.tokenizer.num_tokens * base.tokenizer.token_dim
        anchors = anchor_metrics(train_set, test_images, values)
        curves, refine_seconds = {}, {}
        for variant in args.variants:
            folders = [out / dataset / variant.replace(" ", "_") / f"seed{seed}" for seed in args.seeds]
            curves[variant] = [run(base.replace(**VARIANTS[variant], seed=seed), train_set, test_images, folder,
                                   args.evals) for seed, folder in zip(args.seeds, folders)]
            if args.refine:
                refine_seconds[variant] = [refine(base.replace(**VARIANTS[variant], seed=seed), train_set, folder)
                                           for seed, folder in zip(args.seeds, folders)]
        results[dataset] = results_so_far = {"anchors": anchors, "values": values, "test_images": len(test_images),
                            "train_images": len(train_set), "curves": curves, "refine_seconds": refine_seconds}
        print_table(dataset, results[dataset], args.seeds)
        (out / f"results-{dataset}.json").write_text(json.dumps(results_so_far, indent=1))
    report(args, out)


def base_curve(run: Path, out: Path) -> None:
    """The base tokenizer's held-out curve (its training run's evaluations) against images seen, with the
    anchors at its number of values on the same held-out images (``eval_size`` evenly spaced test images)."""
    meta = json.loads((run / "checkpoint.json").read_text())
    history = [h for h in json.loads((run / "history.json").read_text()) if "eval_psnr" in h]
    batch, cfg = meta["train"]["batch_size"], meta["tokenizer"]
    values = cfg["num_tokens"] * cfg["token_dim"]
    P = resolve("base", "cpu", dataset=meta["data"]["dataset"])
    train_set, test_set = load_data(P)
    images = held_out_images(test_set, P.eval.eval_size)
    anchors = anchor_metrics(train_set, images, values)
    from sbt_lib.eval.fidelity import feature_metrics
    from sbt_lib.eval.reconstruction import _real_cache_name
    from sbt_lib.eval.metrics import bicubic_roundtrip
    from sbt_lib.models.pca import pca_anchor

    recon = {"PCA": pca_anchor(held_out_images(train_set, 10_000), images, values),
             "bicubic": bicubic_roundtrip(images, values)}
    for name, r in recon.items():
        fm = feature_metrics(images, r, effnet_size=P.eval.fd_size, real_cache_name=_real_cache_name(test_set, images))
        anchors[name]["fd_effnet"] = fm["fd_effnet"]
    print(f"\n## base tokenizer, {meta['data']['dataset']}: {values} values per image, {len(images)} held-out images, "
          f"batch {batch}\n")
    print("| step | images seen | training s | PSNR (dB) | SSIM | rFD-EffNet ↓ | rFD ÷ PCA's |\n|---|---|---|---|---|---|---|")
    for h in history:
        print(f"| {h['step']} | {h['step'] * batch:,} | {h['seconds']:.0f} | {h['eval_psnr']:.2f} | {h['eval_ssim']:.3f} | "
              f"{h['eval_fd_effnet']:.1f} | {h['eval_fd_effnet'] / anchors['PCA']['fd_effnet']:.2f} |")
    for name, a in anchors.items():
        print(f"| {name} (anchor, {a['values']} values) | – | – | {a['psnr']:.2f} | {a['ssim']:.3f} | {a['fd_effnet']:.1f} | "
              f"{a['fd_effnet'] / anchors['PCA']['fd_effnet']:.2f} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen = np.array([h["step"] * batch for h in history])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "psnr", "PSNR (dB) ↑"), (axes[1], "fd_effnet", "rFD-EffNet ↓")):
        ax.plot(seen, [h[f"eval_{key}"] for h in history], marker="o", ms=3, lw=2, label="base tokenizer")
        for (name, a), style in zip(anchors.items(), ("--", ":")):
            ax.axhline(a[key], color="k", ls=style, lw=1, label=f"{name}, {a['values']} values")
        adv = meta.get("objective", {}).get("adv_weight") and meta["objective"].get("adv_start")
        if adv:
            ax.axvline(adv * batch, color="tab:red", lw=0.8, alpha=0.6, label="GAN starts")
        ax.set(xlabel="training images seen", ylabel=label, title=f"held-out {label.split(' ')[0]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"base tokenizer on {meta['data']['dataset']}: {values} values per image, "
                 f"{len(images)} held-out test images")
    fig.tight_layout()
    path = out / "base_tokenizer_curve.png"
    fig.savefig(path, dpi=120)
    print(f"\nthe curve: {path}")
    base_probes(run, meta)


def base_probes(run: Path, meta: dict) -> None:
    """Linear probes on ``shapes`` (3000 training, 1000 test images at the base's size) from the base's token
    groups, against the same probe on as many principal components of the shapes images (the linear code)."""
    from sbt_lib.data.datasets import load_dataset
    from sbt_lib.data.shapes import SHAPE_FACTORS
    from sbt_lib.workbook.report.analysis import probe_groups

    size = meta["tokenizer"]["image_size"]
    shapes = [load_dataset("shapes", split, image_size=size, size=n, seed=0) for split, n in (("train", 3000),
                                                                                             ("test", 1000))]
    probes = probe_groups(load_tokenizer(run), *shapes)
    groups = [g for g in next(iter(probes.values())) if g != "chance"]
    print(f"\n## linear probes on shapes from the {meta['data']['dataset']} base (accuracy; global factors first)\n")
    print("| factor | " + " | ".join(groups) + " | chance | global − PCA |\n|" + "---|" * (len(groups) + 3))
    for f in SHAPE_FACTORS["global"] + SHAPE_FACTORS["local"]:
        row = probes[f]
        print(f"| {f} | " + " | ".join(f"{row[g]:.2f}" for g in groups) + f" | {row['chance']:.2f} | "
              f"{row['global'] - row['pixels (PCA)']:+.2f} |")


def refine(P: Params, train_set, folder: Path) -> float:
    """The refine stage on the tokenizer trained in ``folder``, into ``folder/refiner``; its seconds."""
    shutil.rmtree(folder / "refiner", ignore_errors=True)  # the tokenizer was just retrained from scratch
    return train_refiner(P, load_run(folder), train_set, folder / "refiner").seconds


def load_run(folder: Path) -> torch.nn.Module:
    """The trained tokenizer saved in ``folder`` by :func:`run` (its trained weights, not their EMA)."""
    return load_tokenizer(folder, ema=False)


def report(args, out: Path) -> None:
    """The saved runs at their end: PSNR, SSIM, rFD-EffNet (or rFID) and the global codebook's perplexity
    on each data set; then each data set's ``recipe`` models on every other data set's held-out images."""
    results = {name: json.loads((out / f"results-{name}.json").read_text()) for name in args.datasets}
    data, refined = {}, {}
    for name in args.datasets:
        P = resolve("01_decomposition", args.scale, dataset=name)
        train_set, test_set = load_data(P)
        data[name] = (train_set, held_out_images(test_set, args.test_size),
                      P.tokenizer.num_tokens * P.tokenizer.token_dim)
        curves = results[name]["curves"]
        print(f"\n## {name}: the runs at their end ({len(data[name][1])} held-out images)\n")
        print("| recipe | PSNR (dB) | SSIM | rFD-EffNet ↓ | global perplexity | seconds |\n|---|---|---|---|---|---|")
        for variant in args.variants:
            folder = out / name / variant.replace(" ", "_")
            seconds = [run[-1]["seconds"] for run in curves[variant]]
            stages = [(variant, lambda s: load_run(folder / f"seed{s}"), seconds)]
            if args.refine and variant in results[name].get("refine_seconds", {}):
                stages.append((f"{variant} + refine stage", lambda s: load_tokenizer(folder / f"seed{s}" / "refiner"),
                               [a + b for a, b in zip(seconds, results[name]["refine_seconds"][variant])]))
            for label, load, secs in stages:
                rows = [evaluate_tokenizer(load(s), test_set, limit=args.test_size, fd_size=P.eval.fd_size)
                        for s in args.seeds]
                if label != variant:
                    refined[name, variant] = (secs, [r["test_psnr"] for r in rows])
                fd = "fid" if "fid" in rows[0] else "fd_effnet"
                print(f"| {label} | {_mean_std([r['test_psnr'] for r in rows])} | "
                      f"{_mean_std([r['test_ssim'] for r in rows], 3)} | {_mean_std([r[fd] for r in rows], 1)} | "
                      f"{_mean_std([r['codebook_perplexity'] for r in rows], 0)} of {rows[0]['codebook_size']} | "
                      f"{_mean_std(secs, 0)} |")
    plot(results, refined, out / "tokenizer_quality.png")
    print(f"\nthe curves: {out / 'tokenizer_quality.png'}")
    if len(data) > 1 and "recipe" in args.variants:
        transfer(data, args, out)


def transfer(data: dict, args, out: Path) -> None:
    """Each data set's ``recipe`` models tested on every other data set's held-out images, beside the
    anchors there (PCA fitted on the data set the model was trained on, and on the target)."""
    print("\n## Trained on one data set, tested on another (recipe, held-out PSNR in dB)\n")
    print("| trained on | tested on | tokenizer | PCA fitted on the training data set | "
          "PCA fitted on the test data set | bicubic |\n|---|---|---|---|---|---|")
    for src, (src_train, _, values) in data.items():
        for dst, (dst_train, images, _) in data.items():
            if src == dst:
                continue
            models = [load_run(out / src / "recipe" / f"seed{s}") for s in args.seeds]
            scores = [psnr(reconstruct(m, images), images).mean().item() for m in models]
            on_src, on_dst = (anchor_metrics(t, images, values) for t in (src_train, dst_train))
            print(f"| {src} | {dst} | {_mean_std(scores)} | {on_src['PCA']['psnr']:.2f} | "
                  f"{on_dst['PCA']['psnr']:.2f} | {on_dst['bicubic']['psnr']:.2f} |")


def _mean_std(values, digits: int = 2) -> str:
    v = np.asarray(values)
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}" if len(v) > 1 else f"{v.mean():.{digits}f}"


def print_table(dataset: str, r: dict, seeds: list[int]) -> None:
    print(f"\n## {dataset}: {r['values']} values per image, {r['test_images']} held-out images, "
          f"{r['train_images']} training images, seeds {seeds}\n")
    print("| recipe | step | seconds | PSNR (dB) | SSIM |\n|---|---|---|---|---|")
    for variant, runs in r["curves"].items():
        for i in range(len(runs[0])):
            rows = [run[i] for run in runs]
            print(f"| {variant} | {rows[0]['step']} | {np.mean([x['seconds'] for x in rows]):.1f} | "
                  f"{_mean_std([x['eval_psnr'] for x in rows])} | "
                  f"{_mean_std([x['eval_ssim'] for x in rows], 3)} |")
    for name, a in r["anchors"].items():
        print(f"| {name} (anchor) | – | – | {a['psnr']:.2f} | {a['ssim']:.3f} |")


def plot(results: dict, refined: dict, path: Path) -> None:
    """Held-out PSNR against training seconds per data set: each variant's mean and seeds, its refine stage
    (``refined[dataset, variant]``: seconds and PSNR per seed) as a point after it with the sample std of the
    seeds (as the tables), and the anchors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, (dataset, r) in zip(axes[0], results.items()):
        for variant, runs in r["curves"].items():  # the mean over seeds, and every seed as a thin line
            t = np.mean([[x["seconds"] for x in run] for run in runs], 0)
            p = np.array([[x["eval_psnr"] for x in run] for run in runs])
            line, = ax.plot(t, p.mean(0), marker="o", ms=3, lw=2, label=f"{variant} (mean of {len(runs)} seeds)")
            for seed_curve in p if len(runs) > 1 else []:
                ax.plot(t, seed_curve, color=line.get_color(), lw=0.7, alpha=0.5)
            if (dataset, variant) in refined:
                secs, values = refined[dataset, variant]
                spread = np.std(values, ddof=1) if len(values) > 1 else 0.0
                ax.errorbar(np.mean(secs), np.mean(values), yerr=spread, color=line.get_color(), marker="*",
                            ms=10, ls="none", capsize=3, label=f"{variant} + refine stage")
        for (name, a), style in zip(r["anchors"].items(), ("--", ":")):
            ax.axhline(a["psnr"], color="k", ls=style, lw=1, label=f"{name}, {a.get('values', r['values'])} values")
        ax.set(title=f"{dataset}: held-out PSNR", xlabel="training seconds (2-core CPU)", ylabel="PSNR (dB)")
        ax.margins(y=0.08)  # keep anchors at the edge of the data in view
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
