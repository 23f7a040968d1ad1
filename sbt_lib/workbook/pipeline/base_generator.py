"""The base generator: the SiT trained once on the shipped base's global tokens, shipped, and reused.

The paper trains its generator once on the global tokens and reuses it for every aligner size: stage 2 keeps
``z_global`` bit for bit, so what the generator samples decodes through every stage-2 tokenizer.  The workbook does
the same.  A SiT learns the tokens' distribution beyond their class-conditional Gaussian only after millions of
training images (``benchmarks/generator_quality.py`` measures gFD against images seen; ``training.json`` records
the time), far more than a notebook's minutes, so notebook 05's generator is trained once (``python -m sbt_lib
train generator --export weights/generator-cifar10``; it resumes exactly), exported as a ``save_pretrained`` folder
(config + float16 safetensors, :mod:`~sbt_lib.models.pretrained`) with its token normaliser, and shipped in
``weights/``.

Beside the weights, ``training.json`` records how they were made (the recipe, the command, steps, images seen,
seconds, machine) and what they give: gFD-EffNet and KID of samples against the test split, over sampling seeds,
beside the class-conditional Gaussian of the same tokens (the anchor to beat), real images (the floor) and the
base's decodes of real tokens (the ceiling); and the flow-matching loss of fixed check batches
(:func:`check_loss`) that ``tests/test_base_generator.py`` recomputes, so a broken or stale file fails.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ...files import write_json
from ...generation.path import interpolate, target_velocity
from ...generation.transport import TokenNormalizer
from ...models.sit import SiT
from ...models.tokenizer import SelfBootTok
from .base import WEIGHTS, _machine, check_batches

RECORD = "training.json"
NORMALIZER = "normalizer.safetensors"
RECIPE_FIELDS = ("size", "patch", "steps", "batch_size", "lr", "ema", "class_dropout", "prior", "time_sampling")


def generator_folder(dataset: str = "cifar10") -> Path:
    """Where the shipped generator of ``dataset``'s base tokenizer lives."""
    return WEIGHTS / f"generator-{dataset}"


def recipe(P) -> dict:
    """What makes a generator's weights (not how it samples): the generator's training fields of ``P``, its
    warm-up and seed.  A shipped generator is used only where its recorded recipe is this one."""
    g = P.generator.to_dict()
    restart = {"restart_steps": g["restart_steps"], "restart_lr": g["restart_lr"]} if g["restart_steps"] else {}
    return {**{k: g[k] for k in RECIPE_FIELDS}, **restart, "warmup": P.training.warmup, "seed": P.seed,
            "dataset": P.data.dataset, "train_size": P.data.train_size}


def first_cycle(P, folder: str | Path) -> tuple[SiT, float]:
    """The generator of ``folder`` (a :func:`save_generator` folder with its record) as the first cycle of ``P``'s
    two-cycle training, and its training seconds: :func:`~sbt_lib.workbook.pipeline.generators.train_generator`
    then trains only the second.  An error where the folder's recorded recipe is not ``P``'s first cycle."""
    wanted, record = recipe(P.replace(generator_restart_steps=0)), read_record(folder)
    if not P.generator.restart_steps:
        raise ValueError("--init starts the second cycle of a two-cycle training, and this recipe has one cycle: "
                         "set -p generator_restart_steps=N")
    if record.get("recipe") != wanted:
        diff = {k: (record.get("recipe", {}).get(k), v) for k, v in wanted.items()
                if record.get("recipe", {}).get(k) != v}
        raise ValueError(f"{folder} was not trained by this recipe's first cycle (recorded, wanted): {diff}")
    return load_generator_folder(folder)[0].float(), record["training_seconds"]


# --------------------------------------------------------------------------------------------- files

def save_generator(model: SiT, normalizer: TokenNormalizer, folder: str | Path) -> None:
    """``model``'s ``save_pretrained`` folder, with the token normaliser beside it (float32: 2d numbers)."""
    folder = Path(folder)
    model.save_pretrained(folder)
    save_file({k: v.float().contiguous() for k, v in normalizer.state_dict().items()}, str(folder / NORMALIZER))


def load_generator_folder(folder: str | Path | None = None, dataset: str = "cifar10") -> tuple[SiT, TokenNormalizer]:
    """The generator and its token normaliser from a folder :func:`save_generator` wrote (default: the shipped one
    of ``dataset``), in eval mode.  A missing folder is an error that says how to make it."""
    folder = Path(folder or generator_folder(dataset))
    if not (folder / "config.json").exists() or not (folder / NORMALIZER).exists():
        raise FileNotFoundError(f"no generator in {folder}: train it with `python -m sbt_lib train generator "
                                f"--dataset {dataset} --export {folder}` (about the time its training.json says)")
    model = SiT.from_pretrained(str(folder))
    normalizer = TokenNormalizer(model.cfg.token_dim)
    normalizer.load_state_dict(load_file(str(folder / NORMALIZER)))
    return model.eval(), normalizer


def read_record(folder: str | Path | None = None, dataset: str = "cifar10") -> dict:
    """The ``training.json`` of a shipped generator."""
    return json.loads((Path(folder or generator_folder(dataset)) / RECORD).read_text())


def shipped_for(P, base: SelfBootTok) -> Path | None:
    """The shipped generator folder where it was trained by ``P``'s recipe on ``base``'s tokens, else None."""
    folder = generator_folder(P.data.dataset)
    if not (folder / RECORD).exists():
        return None
    record = read_record(folder)
    same_base = record.get("tokenizer") == base.cfg.to_dict()
    return folder if same_base and record.get("recipe") == recipe(P) else None


def generator_params(P):
    """``P`` with the data of the ``generator`` bundle at ``P.scale`` (every training image's tokens at cpu): the
    parameters the reused generator is trained with, whatever notebook ``P`` is of."""
    from ..config.params import resolve

    bundle = resolve("generator", P.scale, dataset=P.data.dataset)
    return P.replace(train_size=bundle.data.train_size, test_size=bundle.data.test_size)


def notebook_generator(P, base: SelfBootTok, train_set, out_root: str | Path, progress: bool = True) -> dict:
    """The generator notebook 05 reuses, trained once on ``base``'s global tokens (:func:`generator_params` of
    ``P``): the shipped one where its recorded recipe and base are these, else the one trained (or, on a rerun,
    loaded) in ``<out_root>/05_generation/generators/global``, the folder of ``python -m sbt_lib train generator``.
    Returns ``model``, ``normalizer``, ``steps``, ``seconds`` (of its training) and ``where``."""
    from . import caches, generators
    from .runs import load_generator

    PG = generator_params(P)
    folder = shipped_for(PG, base)
    if folder is not None:
        model, normalizer = load_generator_folder(folder)
        record = read_record(folder)
        return {"model": model, "normalizer": normalizer, "steps": record["steps"],
                "seconds": record["training_seconds"], "where": str(folder)}
    run = Path(out_root) / "05_generation" / "generators" / "global"
    if PG.data.train_size != P.data.train_size:
        train_set, _ = caches.load_data(PG)
    if progress and not (run / "checkpoint.json").exists():
        print(f"no shipped generator for this recipe and base: training SiT-{PG.generator.size} into {run} "
              f"({PG.generator.steps} steps; a rerun loads it)")
    tokens = caches.token_cache(base, train_set, PG, "global", progress)
    result = generators.train_generator(PG, base, train_set, run, "global", tokens=tokens, progress=progress)
    model, normalizer = load_generator(generators.final_run(run, PG))
    return {"model": model, "normalizer": normalizer, "steps": result.step, "seconds": result.seconds,
            "where": str(run)}


# --------------------------------------------------------------------------------------------- checks

@torch.no_grad()
def check_loss(model: SiT, normalizer: TokenNormalizer, base: SelfBootTok, seed: int = 0) -> dict[str, float]:
    """The flow-matching loss of ``model`` on each of :func:`~sbt_lib.workbook.pipeline.base.check_batches`' global
    tokens under ``base``, at fixed noise and times, unconditional (the null class: any data set has it).  A number that
    moves when the generator, its normaliser or the base changes."""
    model, out = model.eval(), {}
    for name, images in check_batches(base.cfg.image_size).items():
        x1 = normalizer.normalize(base.eval().encode_global(images).float())
        gen = torch.Generator().manual_seed(seed)
        x0 = torch.randn(x1.shape, generator=gen)
        t = torch.linspace(0.02, 0.98, len(x1))
        y = torch.full((len(x1),), model.null_class)
        out[name] = F.mse_loss(model(interpolate(x0, x1, t), t, y), target_velocity(x0, x1)).item()
    return out


def sample_quality(model: SiT, normalizer: TokenNormalizer, base: SelfBootTok, P, tokens, train_set, test_set,
                   samples: int = 2000, seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    """gFD-EffNet and KID (mean ± std over sampling ``seeds``) of ``samples`` balanced samples of ``model`` against
    as many test images (of ``test_set`` where it holds that many, else of ``P``'s test split), beside the
    class-conditional Gaussian of the same ``tokens`` at the same seeds (the anchor to beat, sampled at its own
    guidance, ``gaussian_guidance*``), real training images (the floor at this count) and the base's decodes of them
    (the ceiling)."""
    from ...eval.generation import generation_metrics
    from ...eval.reconstruction import held_out_images
    from . import caches, generators
    from .generation_study import summarize

    g = P.generator
    real = held_out_images(test_set, samples) if len(test_set) >= samples else caches.test_images(P, samples)
    classes = torch.arange(samples) % len(train_set.classes)
    gaussian, gaussian_norm = generators.build_generator(P.replace(generator_prior="gaussian"), tokens, train_set)
    settings = {"SiT": (model, normalizer, g.guidance, g.guidance_from),
                "Gaussian": (gaussian.eval(), gaussian_norm, g.gaussian_guidance, g.gaussian_guidance_from)}
    runs = {name: [] for name in settings}
    for seed in seeds:
        for name, (m, n, scale, start) in settings.items():
            fake = generators.generate_images(base, m, n, classes, "global", g.sampler, g.sampling_steps, scale, seed,
                                              guidance_from=start)
            runs[name].append(generation_metrics(real, fake, P.eval.fd_size))
    train_images = held_out_images(train_set, samples)
    with torch.no_grad():
        decoded = torch.cat([generators.decode_tokens(base, base.encode_global(x)) for x in train_images.split(250)])
    runs["real training images (floor)"] = [generation_metrics(real, train_images, P.eval.fd_size)]
    runs["base decodes of them (ceiling)"] = [generation_metrics(real, decoded, P.eval.fd_size)]

    rows = summarize(runs, keys=("gfd", "kid"))
    return {"samples": samples, "seeds": list(seeds), "label": runs["SiT"][0]["label"],
            "feature_space": runs["SiT"][0]["feature_space"], "rows": rows,
            "gfd_below_gaussian": 1 - rows["SiT"]["gfd_mean"] / rows["Gaussian"]["gfd_mean"]}


# --------------------------------------------------------------------------------------------- export

def export_run(run: str | Path, folder: str | Path, P, base: SelfBootTok, train_set, test_set, command: str,
               seeds: tuple[int, ...] = (0, 1, 2), first: dict | None = None) -> dict:
    """Write the (EMA) generator of the finished run folder ``run`` (trained by ``P`` on ``base``'s global tokens of
    ``train_set``) at ``folder`` (:func:`save_generator`) with ``training.json``: the recipe, the base's config, the
    run's steps and seconds (both cycles' where it has two; ``first``: the record of the folder that stood in for the
    first), and what :func:`measure` measures on the float16 weights as shipped.  Returns the record."""
    from .runs import load_generator
    from . import generators

    save_generator(*load_generator(generators.final_run(run, P)), folder)
    model = load_generator_folder(folder)[0]
    meta, g = _steps_and_seconds(Path(run), P, first), P.generator
    record = {
        "command": command, "recipe": recipe(P), "tokenizer": base.cfg.to_dict(),
        "steps": meta["step"], "batch_size": g.batch_size, "images_seen": meta["step"] * g.batch_size,
        "training_seconds": round(meta["seconds"], 1), "machine": _machine(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if g.restart_steps:
        record["cycles"] = meta["cycles"]
    return _write(folder, {**record, **measure(folder, P, base, train_set, test_set, seeds)})


def measure(folder: str | Path, P, base: SelfBootTok, train_set, test_set, seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    """What the record of the generator in ``folder`` measures, sampled as ``P`` says: its sampling settings, its
    sample quality (:func:`sample_quality`) at ``P.generator.samples`` (``quality``) and, where
    ``record_samples`` is set, at that count too (``quality_large``; else None), and its check losses."""
    from . import caches

    model, normalizer = load_generator_folder(folder)
    tokens = caches.token_cache(base, train_set, P, "global", progress=False)
    g = P.generator

    def quality(samples):
        return sample_quality(model, normalizer, base, P, tokens, train_set, test_set, samples, seeds)
    return {"sampling": {"sampler": g.sampler, "sampling_steps": g.sampling_steps, "guidance": g.guidance,
                         "guidance_from": g.guidance_from, "gaussian_guidance": g.gaussian_guidance,
                         "gaussian_guidance_from": g.gaussian_guidance_from},
            "quality": quality(g.samples), "quality_large": quality(g.record_samples) if g.record_samples else None,
            "check_loss": check_loss(model, normalizer, base)}


def remeasure(folder: str | Path, P, base: SelfBootTok, train_set, test_set, command: str) -> dict:
    """Measure the shipped generator in ``folder`` again (:func:`measure`, as ``P`` samples), without training:
    its record keeps how the weights were made and takes the new measurements and ``measured_by`` (``command``);
    its model card is rewritten.  An error where the record's base is not ``base``.  Returns the record."""
    record = read_record(folder)
    if record.get("tokenizer") != base.cfg.to_dict():
        raise ValueError(f"{folder} was trained on another base tokenizer's tokens than this scale's; measure it "
                         "with the base it was trained on")
    return _write(folder, {**record, **measure(folder, P, base, train_set, test_set), "measured_by": command})


def _write(folder: str | Path, record: dict) -> dict:
    """``record`` as the folder's ``training.json``, and its model card as ``README.md``."""
    write_json(Path(folder) / RECORD, record)
    (Path(folder) / "README.md").write_text(model_card(record))
    return record


def _steps_and_seconds(run: Path, P, first: dict | None) -> dict:
    """The steps and training seconds of ``run`` (both cycles' where ``P`` has two, each described in ``cycles``;
    ``first``: the record of the folder that stood in for the first cycle's run)."""
    from .generators import final_run

    last = json.loads((final_run(run, P) / "checkpoint.json").read_text())
    if not P.generator.restart_steps:
        return last
    g = P.generator
    if first:
        one = {"steps": first["steps"], "seconds": first["training_seconds"], "command": first["command"]}
    else:
        meta = json.loads((run / "checkpoint.json").read_text())
        one = {"steps": meta["step"], "seconds": meta["seconds"]}
    one = {**one, "lr": g.lr, "seconds": round(one["seconds"], 1), "from": "zero velocity"}
    two = {"steps": last["step"], "lr": g.restart_lr, "seconds": round(last["seconds"], 1),
           "from": "the first cycle's EMA weights (float16 as shipped)" if first else "the first cycle's EMA weights"}
    return {"step": one["steps"] + two["steps"], "seconds": one["seconds"] + two["seconds"], "cycles": [one, two]}


def model_card(record: dict) -> str:
    """The folder's README.md: what the weights are, how to load and remake them, what they measure."""
    r, q, s = record["recipe"], record["quality"], record["sampling"]
    large = record.get("quality_large")
    cycles = record.get("cycles")
    lr = (f"lr {r['lr']:g}" if not cycles else
          f"in two cosine cycles ({cycles[0]['steps']} steps at lr {cycles[0]['lr']:g} from zero velocity, then "
          f"{cycles[1]['steps']} at lr {cycles[1]['lr']:g} from {cycles[1]['from']})")
    return f"""---
library_name: sbt-lib
tags: [generator, selfboottok, sit]
---
# SelfBootTok base generator ({r["dataset"]}: SiT-{r["size"]} on the base tokenizer's global tokens)

A class-conditional SiT ({record["parameters"]:,} parameters) trained by flow matching from zero velocity on the
global tokens of `weights/base-tokenizer-{r["dataset"]}`; the aligners bootstrap the local tokens from its samples and
the decoder renders them. Float16 weights (they load as float32) and the token normaliser:

```python
from sbt_lib.workbook.pipeline.base_generator import load_generator_folder
from sbt_lib.workbook.pipeline.base import load_base
from sbt_lib.workbook.pipeline import generators
sit, normalizer = load_generator_folder("{{this folder}}")
images = generators.generate_images(load_base(), sit, normalizer, classes, "global", "{s["sampler"]}", {s["sampling_steps"]}, {s["guidance"]},
                                    guidance_from={s.get("guidance_from", 0.0)})
```

Trained by `{record["command"]}`: {record["steps"]} steps of {record["batch_size"]} ({record["images_seen"]:,} token
sets seen), {lr}, EMA {r["ema"]}, {record["training_seconds"] / 60:.0f} min on {record["machine"]["processor"]}
({record["machine"]["cpu_threads"]} threads), {r.get("time_sampling", "uniform").replace("_", "-")} training times.
Samples: {s["sampler"]} × {s["sampling_steps"]}, guidance {s["guidance"]} for t ≥ {s.get("guidance_from", 0.0):g}
(t = 0 is noise); the Gaussian anchor at its own best guidance, {s.get("gaussian_guidance", s["guidance"])} for
t ≥ {s.get("gaussian_guidance_from", 0.0):g}; {q["samples"]} balanced samples against as many test images,
{len(q["seeds"])} sampling seeds (mean ± std):

{quality_table(q)}{_large_card(large) if large else ""}
`training.json` holds these numbers, the recipe, the machine, and the flow-matching loss of fixed check batches that the
workbook's tests recompute{f"; `{record['measured_by']}` measured them" if record.get("measured_by") else ""}.
"""


def quality_table(q: dict) -> str:
    """A :func:`sample_quality` result as a markdown table: gFD and KID (mean ± std over its seeds) per row, and
    the SiT's distance below the Gaussian anchor in each."""
    table = [f"| | {q['label']} ↓ | KID ↓ |", "|---|---|---|"] + [
        f"| {n} | {m['gfd_mean']:.1f} ± {m['gfd_std']:.1f} | {m['kid_mean']:.4f} ± {m['kid_std']:.4f} |"
        for n, m in q["rows"].items()]
    return "\n".join(table) + (f"\n\nThe SiT below the Gaussian: {_below(q, 'gfd'):.1%} in gFD, "
                               f"{_below(q, 'kid'):.1%} in KID.\n")


def qualities(record: dict) -> list[dict]:
    """A generator record's :func:`sample_quality` results, one per sample count it was measured at, smallest first."""
    return [q for q in (record["quality"], record.get("quality_large")) if q]


def _below(q: dict, key: str) -> float:
    """How far below the Gaussian anchor the SiT's mean ``key`` (gfd, kid) is in ``q``, as a fraction of it."""
    return 1 - q["rows"]["SiT"][f"{key}_mean"] / q["rows"]["Gaussian"][f"{key}_mean"]


def record_verdicts(record: dict) -> list[str]:
    """A generator record's SiT against its Gaussian anchor, one line per count it was measured at: each metric's
    mean ± std over the sampling seeds, how far below (or above) the anchor the SiT's mean is, and how far below it
    each seed is (the two rows of a seed share its classes and noise)."""
    lines = []
    for q in qualities(record):
        sit, gauss = q["rows"]["SiT"], q["rows"]["Gaussian"]
        parts = []
        for key, name, f in (("gfd", q["label"], ".1f"), ("kid", "KID", ".4f")):
            below = _below(q, key)
            by_seed = ", ".join(f"{1 - a / b:.1%}" for a, b in zip(sit[key], gauss[key]))
            parts.append(f"{name} {sit[f'{key}_mean']:{f}} ± {sit[f'{key}_std']:{f}} against "
                         f"{gauss[f'{key}_mean']:{f}} ± {gauss[f'{key}_std']:{f}}: {abs(below):.1%} "
                         f"{'below' if below >= 0 else 'above'} "
                         f"(seed by seed {by_seed})")
        lines.append(f"the shipped SiT against the Gaussian of its tokens, {q['samples']} samples, "
                     f"{len(q['seeds'])} sampling seeds: " + "; ".join(parts))
    return lines


def _large_card(q: dict) -> str:
    """The model card's paragraph on the record at ``record_samples``."""
    return f"""
The same at {q["samples"]} samples against as many test images, where FD's bias from a finite count (shared by every
row) is smaller, {len(q["seeds"])} sampling seeds:

{quality_table(q)}"""

