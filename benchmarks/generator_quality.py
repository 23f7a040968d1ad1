"""Sample quality of the generator against training images seen, with its anchors on the same axes.

Trains the SiT of notebook 05's bundle at a scale, from zero velocity by default (``-p generator_prior=none``), on
the global tokens of the base tokenizer the notebooks load (the shipped one at cpu and gpu), and every
``steps / evals`` steps measures gFD-EffNet and KID of ``--samples`` samples (balanced classes, the bundle's sampler
and guidance) against as many held-out test images.  Measured once, on the same images:

- **Gaussian**: the tokens' class-conditional Gaussian (its flow in closed form, no network): the anchor to beat;
- **real**: as many training images against the test images (the floor of the distance at this count);
- **decoded**: the base's decodes of those training images' own global tokens (the tokenizer's ceiling).

Prints a table (step, images seen, gFD, KID, seconds) and saves it as JSON and the curve as a PNG in ``--out``.
``--guidance-sweep 1.5,2,3`` then measures the run's last (EMA) weights and the Gaussian at each guidance scale over
``--seeds`` sampling seeds (mean ± std; ``generator_guidance_<scale>.{json,png}``): the guidance of each at its best,
so that the SiT is not compared with a Gaussian at a scale that suits it less; ``--guidance-from 0,0.4`` repeats the
sweep with guidance only for t ≥ each start (a guidance interval; t = 0 is noise).
``--mixtures 1,4,16,64`` then samples a mixture of K Gaussians per class fitted to the same tokens
(:class:`~sbt_lib.models.class_mixture.ClassMixture`), beside the SiT and the Gaussian at guidance 1 (a mixture has
none), over ``--seeds`` sampling seeds (``generator_mixtures_<scale>.{json,png}``): how much structure beyond each
class's two moments the tokens hold, and how much of it the SiT has learnt.
The run folder keeps its checkpoint: run the same command again to resume it, or add ``--report`` to write the table
and the curve of the evaluations it holds so far without training::

    python benchmarks/generator_quality.py [--scale cpu] [--steps 20000] [--evals 10] [--samples 2000] \\
        [-p generator_size=cpu -p generator_lr=3e-4 ...] [--run runs/bench/generator] [--out benchmarks]

CIFAR-10 comes from ``$SBT_DATA/cifar10`` (e.g. ``SBT_DATA=../shared/data``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from sbt_lib.__main__ import _parse_param
from sbt_lib.eval.generation import generation_metrics
from sbt_lib.eval.reconstruction import held_out_images
from sbt_lib.files import REPO, write_json
from sbt_lib.generation.transport import TokenNormalizer
from sbt_lib.workbook.config.params import resolve
from sbt_lib.workbook.pipeline import caches, generators
from sbt_lib.workbook.pipeline.base import notebook_base


def anchors(P, base, tokens, train_set, real, classes) -> dict[str, dict]:
    """gFD and KID of the Gaussian generator, of real training images and of their decodes, against ``real``."""
    G = P.generator
    gaussian, normalizer = generators.build_generator(P.replace(generator_prior="gaussian"), tokens, train_set)
    fake = generators.generate_images(base, gaussian.eval(), normalizer, classes, "global", G.sampler,
                                      G.sampling_steps, G.gaussian_guidance, seed=P.seed,
                                      guidance_from=G.gaussian_guidance_from)
    train_images = held_out_images(train_set, len(real))
    with torch.no_grad():
        decoded = torch.cat([generators.decode_tokens(base, base.encode_global(x)) for x in train_images.split(250)])
    return {name: generation_metrics(real, images, P.eval.fd_size)
            for name, images in (("Gaussian", fake), ("real", train_images), ("decoded", decoded))}


def sit_name(G) -> str:
    """The generator's name in titles: its size, and its patch where it joins tokens."""
    return f"SiT-{G.size}" + (f", patch {G.patch}" if G.patch > 1 else "")


def two_panels(path: Path, title: str, draw, gfd_label: str = "gFD-EffNet") -> None:
    """A figure of gFD and KID side by side, saved at ``path``: ``draw(ax, key, label)`` fills each panel."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, label in ((axes[0], "gfd", gfd_label + " ↓"), (axes[1], "kid", "KID ↓")):
        draw(ax, key, label)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(rows: list[dict], refs: dict[str, dict], path: Path, title: str) -> None:
    def draw(ax, key, label):
        ax.plot([r["images_seen"] for r in rows], [r[key] for r in rows], "o-", label="SiT")
        for j, (name, m) in enumerate(refs.items()):
            ax.axhline(m[key], ls=("--", ":", "-.")[j % 3], color=("C1", "gray", "black")[j % 3], label=name)
        ax.set(xscale="log", xlabel="training images seen (log)", ylabel=label)

    two_panels(path, title, draw, rows[0]["label"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--steps", type=int, default=None, help="generator steps (default: the bundle's)")
    parser.add_argument("--evals", type=int, default=10, help="evaluations over the run (the last at its end)")
    parser.add_argument("--samples", type=int, default=2000, help="samples (and test images) per distance")
    parser.add_argument("-p", "--param", action="append", type=_parse_param, default=[], metavar="NAME=VALUE")
    parser.add_argument("--run", default=None, help="run folder (default: runs/bench/generator-<scale>)")
    parser.add_argument("--out", default=str(REPO / "benchmarks"), help="where the table and the curve go")
    parser.add_argument("--report", action="store_true", help="only report the evaluations the run folder holds")
    parser.add_argument("--guidance-sweep", default=None, metavar="G1,G2,...",
                        help="after training: the SiT and the Gaussian at these guidance scales, over --seeds")
    parser.add_argument("--guidance-from", default=None, metavar="T1,T2,...",
                        help="with --guidance-sweep: guide only for t >= each of these (default: the bundle's)")
    parser.add_argument("--mixtures", default=None, metavar="K1,K2,...",
                        help="after training: a mixture of K Gaussians per class, beside the SiT at guidance 1")
    parser.add_argument("--seeds", type=int, default=3, help="sampling seeds of each point of --guidance-sweep "
                                                             "and --mixtures")
    args = parser.parse_args()

    overrides = {"generator_prior": "none", "generator_samples": args.samples, **dict(args.param)}
    if args.steps:
        overrides["generator_steps"] = args.steps
    P = resolve("generator", args.scale, dataset=args.dataset, **overrides)
    G = P.generator
    if G.steps < args.evals:
        raise SystemExit(f"--evals {args.evals} needs at least as many generator steps (have {G.steps})")
    run = Path(args.run or REPO / "runs" / "bench" / f"generator-{args.scale}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    train_set, test_set = caches.load_data(P)
    base = notebook_base(P, train_set, test_set, REPO / "runs" / args.scale)
    tokens = caches.token_cache(base, train_set, P, "global")
    real = held_out_images(test_set, args.samples)
    classes = torch.arange(args.samples) % len(train_set.classes)
    saved = run / "anchors.json"
    refs = json.loads(saved.read_text()) if saved.exists() else anchors(P, base, tokens, train_set, real, classes)
    print("anchors: " + ", ".join(f"{k} {m['label']} {m['gfd']:.1f} KID {m['kid']:.4f}" for k, m in refs.items()),
          flush=True)
    write_json(saved, refs)
    normalizer = TokenNormalizer(tokens.shape[-1]).fit(tokens.features)  # as build_generator fits it

    def evaluate(model) -> dict:
        t0 = time.perf_counter()
        fake = generators.generate_images(base, model, normalizer, classes, "global", G.sampler, G.sampling_steps,
                                          G.guidance, seed=P.seed, guidance_from=G.guidance_from)
        m = generation_metrics(real, fake, P.eval.fd_size)
        model.train()
        return {"gfd": m["gfd"], "kid": m["kid"], "eval_seconds": time.perf_counter() - t0}

    if args.report:  # the evaluations the run folder holds so far, without training
        history = json.loads((run / "history.json").read_text())
        step, seconds = max(h["step"] for h in history), json.loads((run / "checkpoint.json").read_text())["seconds"]
    else:
        P = P.replace(eval_every=max(1, G.steps // args.evals))
        result = generators.train_generator(P, base, train_set, run, "global", tokens=tokens, eval_fn=evaluate)
        history, step, seconds = result.history, result.step, result.seconds
    rows = [{"step": h["step"], "images_seen": h["step"] * G.batch_size, "gfd": h["eval_gfd"], "kid": h["eval_kid"],
             "label": refs["real"]["label"]} for h in history if "eval_gfd" in h]
    print(f"{sit_name(G)} from {'zero velocity' if G.prior == 'none' else 'the Gaussian'}, batch {G.batch_size}, "
          f"lr {G.lr:g}, {G.time_sampling} times, {G.sampler} × {G.sampling_steps}, guidance {G.guidance}; "
          f"{seconds:.0f} s of training for {step} of {G.steps} steps")
    print(f"| step | images seen | {refs['real']['label']} | KID |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['images_seen']:,} | {r['gfd']:.1f} | {r['kid']:.4f} |")
    for name, m in refs.items():
        print(f"| *{name}* | | {m['gfd']:.1f} | {m['kid']:.4f} |")
    stem = out / f"generator_quality_{args.scale}"
    if rows:  # a run trained without evaluations (``python -m sbt_lib train generator``) has no curve to draw
        write_json(stem.with_suffix(".json"), {"command": training_command(), "generator": G.to_dict(),
                                                "training_seconds": seconds, "steps_done": step, "curve": rows,
                                                "anchors": refs})
        plot(rows, {k: refs[k] for k in ("Gaussian", "decoded", "real")}, stem.with_suffix(".png"),
             f"{P.data.dataset}: {sit_name(G)} on the base's global tokens"
             + (f", {G.time_sampling.replace('_', '-')} times" if G.time_sampling != "uniform" else ""))
        print(f"→ {stem}.json, {stem}.png")
    if args.guidance_sweep:
        scales = [float(g) for g in args.guidance_sweep.split(",")]
        froms = [float(f) for f in args.guidance_from.split(",")] if args.guidance_from else [G.guidance_from]
        sweep = guidance_sweep(P, base, run, tokens, train_set, real, classes, scales, range(args.seeds), froms)
        stem = out / f"generator_guidance_{args.scale}"
        write_json(stem.with_suffix(".json"), {"command": training_command(),
                                                "sweep_command": " ".join(["python", *sys.argv]),
                                                "generator": G.to_dict(),
                                                "steps_done": step, "label": refs["real"]["label"], "sweep": sweep,
                                                "anchors": {k: refs[k] for k in ("decoded", "real")}})
        plot_sweep(sweep, {k: refs[k] for k in ("decoded", "real")}, stem.with_suffix(".png"),
                   f"{P.data.dataset}: {sit_name(G)} ({step} steps) and the Gaussian against guidance")
        print(f"→ {stem}.json, {stem}.png")
    if args.mixtures:
        components = [int(k) for k in args.mixtures.split(",")]
        t0 = time.perf_counter()
        at_one = guidance_sweep(P, base, run, tokens, train_set, real, classes, [1.0], range(args.seeds))
        mixtures = mixture_sweep(P, base, tokens, train_set, real, classes, components, range(args.seeds))
        stem = out / f"generator_mixtures_{args.scale}"
        write_json(stem.with_suffix(".json"), {"command": training_command(),
                                                "mixtures_command": " ".join(["python", *sys.argv]),
                                                "steps_done": step, "label": refs["real"]["label"],
                                                "guidance_1": {name: m["1.0"] for name, m in at_one.items()},
                                                "mixtures": mixtures, "seconds": time.perf_counter() - t0,
                                                "anchors": {k: refs[k] for k in ("decoded", "real")}})
        plot_mixtures(mixtures, {name: m["1.0"] for name, m in at_one.items()}, refs["decoded"],
                      stem.with_suffix(".png"),
                      f"{P.data.dataset}: a mixture per class against the SiT ({step} steps), guidance 1")
        print(f"→ {stem}.json, {stem}.png")


def mixture_sweep(P, base, tokens, train_set, real, classes, components, seeds) -> dict[str, dict]:
    """gFD and KID (mean ± std over sampling ``seeds``) of the decoded samples of a mixture of K Gaussians per class
    fitted to the tokens, for each K in ``components``, with the seconds each fit took."""
    from sbt_lib.models.class_mixture import ClassMixture
    from sbt_lib.workbook.pipeline.generation_study import summarize

    out = {}
    for k in components:
        t0 = time.perf_counter()
        mixture = ClassMixture(k, seed=P.seed).fit(tokens.features, train_set.targets)
        fit_seconds = time.perf_counter() - t0
        runs = [generation_metrics(real, torch.cat([generators.decode_tokens(base, z)
                                                    for z in mixture.sample(classes, seed=s).split(250)]),
                                   P.eval.fd_size) for s in seeds]
        out[str(k)] = summarize({"m": runs}, keys=("gfd", "kid"))["m"] | {"fit_seconds": fit_seconds}
        print(f"mixture of {k} per class: gFD {out[str(k)]['gfd_mean']:.1f} ± {out[str(k)]['gfd_std']:.1f}, "
              f"KID {out[str(k)]['kid_mean']:.4f} (fit {fit_seconds:.0f} s)", flush=True)
    return out


def plot_mixtures(mixtures: dict, at_one: dict, ceiling: dict, path: Path, title: str) -> None:
    ks = [int(k) for k in mixtures]

    def draw(ax, key, label):
        ax.errorbar(ks, [mixtures[str(k)][f"{key}_mean"] for k in ks], yerr=[mixtures[str(k)][f"{key}_std"] for k in ks],
                    marker="o", capsize=3, color="C2", label="mixture of K Gaussians per class")
        for (name, m), color in zip(at_one.items(), ("C0", "C1")):
            mean, std = m[f"{key}_mean"], m[f"{key}_std"]
            ax.axhline(mean, color=color, label=f"{name}, guidance 1")
            ax.axhspan(mean - std, mean + std, color=color, alpha=0.15)
        ax.axhline(ceiling[key], ls="-.", color="black", label="decoded real tokens (ceiling)")
        ax.set(xscale="log", xlabel="components per class K (log; K = 1: the Gaussian)", ylabel=label)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()

    two_panels(path, title, draw)


def training_command() -> str:
    """This command line without the options that only report (what trains the run folder's generator)."""
    argv, skip = [], False
    for a in sys.argv:
        if skip or a == "--report":
            skip = False
            continue
        if a in ("--guidance-sweep", "--mixtures", "--seeds", "--out"):
            skip = True
            continue
        argv.append(a)
    return " ".join(["python", *argv])


def guidance_sweep(P, base, run, tokens, train_set, real, classes, scales, seeds, froms=(0.0,)) -> dict[str, dict]:
    """gFD and KID (mean ± std over sampling ``seeds``) of the run's generator and of the Gaussian of the same
    tokens at each guidance scale, guided for t ≥ each of ``froms`` (a guidance interval; one series per model and
    start, named by both where there are several starts); also each series' best scale."""
    from sbt_lib.workbook.pipeline.generation_study import summarize
    from sbt_lib.workbook.pipeline.runs import load_generator

    G = P.generator
    gaussian, gaussian_norm = generators.build_generator(P.replace(generator_prior="gaussian"), tokens, train_set)
    models = {"SiT": load_generator(run), "Gaussian": (gaussian.eval(), gaussian_norm)}
    out = {}
    for name, (model, normalizer) in models.items():
        for start in froms:
            series = name if len(froms) == 1 else f"{name}, guided for t ≥ {start:g}"
            runs = {str(g): [generation_metrics(real, generators.generate_images(
                base, model, normalizer, classes, "global", G.sampler, G.sampling_steps, g, seed=s,
                guidance_from=start), P.eval.fd_size) for s in seeds] for g in scales}
            out[series] = summarize(runs, keys=("gfd", "kid"))
            for g, m in out[series].items():
                print(f"{series} guidance {g}: gFD {m['gfd_mean']:.1f} ± {m['gfd_std']:.1f}, "
                      f"KID {m['kid_mean']:.4f}", flush=True)
            out[series]["best"] = min(map(str, scales), key=lambda g: out[series][g]["gfd_mean"])
    return out


def plot_sweep(sweep: dict, refs: dict, path: Path, title: str) -> None:
    """One line per series of :func:`guidance_sweep`: solid for the SiT, dashed for the Gaussian, a colour per start."""
    starts = list(dict.fromkeys(name.split(", ", 1)[-1] for name in sweep))

    def draw(ax, key, label):
        for name, points in sweep.items():
            gs = [g for g in points if g != "best"]
            ax.errorbar([float(g) for g in gs], [points[g][f"{key}_mean"] for g in gs],
                        yerr=[points[g][f"{key}_std"] for g in gs], marker="o", capsize=3, label=name,
                        ls="--" if name.startswith("Gaussian") else "-",
                        color=f"C{starts.index(name.split(', ', 1)[-1])}")
        for j, (name, m) in enumerate(refs.items()):
            ax.axhline(m[key], ls=(":", "-.")[j % 2], color=("gray", "black")[j % 2], label=name)
        ax.set(xlabel="guidance scale", ylabel=label)

    two_panels(path, title, draw)


if __name__ == "__main__":
    main()
