"""The base tokenizer: learned once, where a learned code overtakes a linear one, shipped, and loaded.

A tokenizer trained briefly is at best the linear code (PCA) of its number of values; the base is
trained far longer (``python -m sbt_lib train base``, the ``base`` bundle of
:mod:`~sbt_lib.workbook.config.scales`; it resumes exactly, so it need not run in one go), exported as a
``save_pretrained`` folder (config + float16 safetensors, :mod:`~sbt_lib.models.pretrained`) and shipped
in ``weights/``.  The notebooks' experiments stand on it, as the paper's stage 2 stands on stage 1.

Beside the weights, ``training.json`` records how they were made (the command, steps, images seen,
training seconds, machine) and what they give: the held-out metrics with both anchors, and the PSNR of a
fixed batch (:func:`check_batches`) that ``tests/test_base.py`` recomputes, so a broken or stale file fails.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ...data.datasets import load_dataset
from ...eval.fidelity import hog_distance
from ...eval.metrics import psnr
from ...eval.reconstruction import (anchor_metrics, evaluate_tokenizer, held_out_images, reconstruct,
                                   swapped_local_tokens)
from ...files import REPO, write_json
from ...models.tokenizer import SelfBootTok
from ...models.tokenizer_config import TokenizerConfig
from .runs import load_tokenizer
from .runs import machine as _machine  # the record of where a thing was made

WEIGHTS = REPO / "weights"
RECORD = "training.json"
CHECK_IMAGES = 64  # images per fixed check batch


def base_folder(dataset: str = "cifar10") -> Path:
    """Where the shipped base tokenizer of ``dataset`` lives."""
    return WEIGHTS / f"base-tokenizer-{dataset}"


def load_base(folder: str | Path | None = None, dataset: str = "cifar10") -> SelfBootTok:
    """The base tokenizer from ``folder`` (a ``save_pretrained`` folder or a Hub id; default: the shipped one
    of ``dataset``), in eval mode.  A missing folder is an error that says how to make it."""
    folder = folder or base_folder(dataset)
    if isinstance(folder, Path) and not (folder / "config.json").exists():
        raise FileNotFoundError(f"no base tokenizer in {folder}: train it with `python -m sbt_lib train base "
                                f"--dataset {dataset} --export {folder}` (about the time its training.json says)")
    return SelfBootTok.from_pretrained(str(folder))


def notebook_base_folder(P, out_root: str | Path) -> Path:
    """Where the base tokenizer of a notebook at ``P.scale`` is: the shipped ``save_pretrained`` folder where its
    configuration is the ``base`` bundle's at that scale (cpu and gpu share one), else the run folder
    ``<out_root>/base/tokenizer`` that :func:`notebook_base` trains it into."""
    from ..config.params import resolve

    shipped = base_folder("cifar10")
    if (shipped / "config.json").exists():  # read as a config, so that fields added since it was saved take defaults
        config = TokenizerConfig.from_dict(json.loads((shipped / "config.json").read_text())["cfg"])
        if config.to_dict() == resolve("base", P.scale).tokenizer.to_dict():
            return shipped
    return Path(out_root) / "base" / "tokenizer"


def notebook_base(P, train_set, test_set, out_root: str | Path, progress: bool = True) -> SelfBootTok:
    """The base tokenizer a notebook's experiments stand on (:func:`notebook_base_folder`): the shipped one, or
    the ``base`` bundle of ``P.scale`` trained here on ``train_set`` (a rerun loads it; at ``tiny`` it takes
    seconds, at ``cpu`` hours, which is why the shipped one exists).  The notebook's data need not be the
    base's: the CIFAR-10 base applied to the built-in photos is how the offline fallback runs."""
    from . import trainers
    from ..config.params import resolve

    folder = notebook_base_folder(P, out_root)
    if (folder / "config.json").exists():
        return load_base(folder)
    bundle = resolve("base", P.scale, dataset=P.data.dataset, seed=0)
    if not (folder / "checkpoint.json").exists():
        print(f"no shipped base tokenizer for scale {P.scale!r}: training the base bundle into {folder} "
              f"({bundle.training.steps} steps; a rerun loads it)")
    result = trainers.train_tokenizer(bundle, train_set, test_set, folder, progress=progress, evaluate=False)
    return result.best_model.cpu().eval()


def reconstruction_table(models: dict[str, SelfBootTok], images: torch.Tensor, train_set, fd_size: int) -> dict:
    """Each model's and each anchor's (PCA and bicubic at the models' number of values) reconstruction of
    ``images``: PSNR, SSIM, the rFID-style distance and KID, and the HOG Fréchet distance (a feature space no
    training loss reads).  Name → metrics, the models first."""
    from ...eval.metrics import ssim

    values = next(iter(models.values())).cfg.token_values
    recons = {name: reconstruct(m, images) for name, m in models.items()}
    recons |= {f"{k} (anchor)": v for k, v in anchor_images(images, train_set, values).items()}
    return {name: {"psnr": psnr(r, images).mean().item(), "ssim": ssim(r, images).mean().item(), "values": values,
                   **distribution_metrics(images, r, fd_size)} for name, r in recons.items()}


def check_batches(image_size: int = 32) -> dict[str, torch.Tensor]:
    """The fixed batches whose reconstruction PSNR a shipped tokenizer records: evenly spaced CIFAR-10 test
    images (when CIFAR-10 is available) and the built-in photos' test crops (always available)."""
    batches = {"photos": held_out_images(load_dataset("photos", "test", image_size=image_size, size=CHECK_IMAGES),
                                         CHECK_IMAGES)}
    try:
        batches["cifar10"] = held_out_images(load_dataset("cifar10", "test", image_size=image_size,
                                                          resize=image_size != 32), CHECK_IMAGES)
    except (FileNotFoundError, RuntimeError, OSError):
        pass
    return batches


def check_psnr(model: SelfBootTok) -> dict[str, float]:
    """Mean reconstruction PSNR of ``model`` on each of :func:`check_batches`."""
    return {name: psnr(reconstruct(model, images), images).mean().item()
            for name, images in check_batches(model.cfg.image_size).items()}


def export_base(run: str | Path, folder: str | Path, train_set, test_set, command: str, fd_size: int = 112) -> dict:
    """Write the (EMA) tokenizer of the finished run folder ``run`` as a ``save_pretrained`` folder at
    ``folder``, with ``training.json``: how it was trained, its metrics on ``test_set`` (PSNR, SSIM,
    rFD-EffNet, KID) beside the PCA and bicubic anchors at its number of values, and the check PSNRs,
    all measured on the float16 weights as shipped.  Returns the record."""
    run, folder = Path(run), Path(folder)
    load_tokenizer(run).save_pretrained(folder)
    model = SelfBootTok.from_pretrained(str(folder))  # measure what is shipped: the float16 weights
    meta = json.loads((run / "checkpoint.json").read_text())
    metrics = evaluate_tokenizer(model, test_set, fd_size=fd_size)
    images = held_out_images(test_set)
    metrics["fd_hog"] = hog_distance(images, reconstruct(model, images))
    if model.cfg.groups[1:]:
        metrics["swapped_local_psnr"] = psnr(swapped_local_tokens(model, images), images).mean().item()
    anchors = anchor_metrics(train_set, images, model.cfg.token_values)
    for name, recon in anchor_images(images, train_set, model.cfg.token_values).items():
        anchors[name].update(distribution_metrics(images, recon, fd_size))
    record = {
        "command": command,
        "steps": meta["step"], "batch_size": meta["train"]["batch_size"],
        "images_seen": meta["step"] * meta["train"]["batch_size"], "training_seconds": round(meta["seconds"], 1),
        "machine": _machine(), "data": meta.get("data"),
        "values_per_image": model.cfg.token_values, "compression": model.cfg.pixel_values / model.cfg.token_values,
        "test": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}, "anchors": anchors,
        "check_psnr": check_psnr(model),
    }
    write_json(folder / RECORD, record)
    (folder / "README.md").write_text(model_card(record))
    return record


def model_card(record: dict) -> str:
    """The folder's README.md: what the weights are, how to load and remake them, what they measure."""
    t, pca, bic = record["test"], record["anchors"]["PCA"], record["anchors"]["bicubic"]
    fd = "fid" if "fid" in t else "fd_effnet"
    rows = [("base tokenizer", record["values_per_image"], t["test_psnr"], t["test_ssim"], t[fd], t["fd_hog"]),
            ("PCA (anchor)", pca["values"], pca["psnr"], pca["ssim"], pca[fd], pca["fd_hog"]),
            ("bicubic (anchor)", bic["values"], bic["psnr"], bic["ssim"], bic[fd], bic["fd_hog"])]
    table = "\n".join(f"| {n} | {v} | {p:.2f} | {s:.3f} | {f:.1f} | {h:.2f} |" for n, v, p, s, f, h in rows)
    data = record.get("data") or {}
    return f"""---
library_name: sbt-lib
tags: [image-tokenizer, selfboottok]
---
# SelfBootTok base tokenizer ({data.get("dataset")}, {record["values_per_image"]} values per image)

The base tokenizer of the SelfBootTok workbook: {record["values_per_image"]} values per
{data.get("image_size")}×{data.get("image_size")} image ({record["compression"]:.0f}× compression), global tokens from the
encoder, local tokens bootstrapped from them. Float16 weights; they load as float32:

```python
from sbt_lib.models.tokenizer import SelfBootTok
model = SelfBootTok.from_pretrained("{{this folder}}")
recon, encoding = model(images)  # images B×3×H×W in [-1, 1]
```

Trained by `{record["command"]}`: {record["steps"]} steps of {record["batch_size"]} ({record["images_seen"]:,} images seen),
{record["training_seconds"] / 3600:.2f} h of training on {record["machine"]["processor"]} ({record["machine"]["cpu_threads"]} threads).
Held-out test split, {t["test_images"]} images ({t.get("feature_space", fd)}; the HOG distance is in a feature space no
training loss reads):

| | values | PSNR (dB) | SSIM | {fd} ↓ | FD-HOG ↓ |
|---|---|---|---|---|---|
{table}

`training.json` holds these numbers, the machine, and the PSNR of fixed check batches that the workbook's tests recompute.
"""


def anchor_images(images: torch.Tensor, train_set, values: int) -> dict[str, torch.Tensor]:
    """The anchors' reconstructions of ``images`` at ``values`` numbers per image (as anchor_metrics')."""
    from ...eval.metrics import bicubic_roundtrip
    from ...models.pca import pca_anchor

    return {"PCA": pca_anchor(held_out_images(train_set, 10_000), images, values),
            "bicubic": bicubic_roundtrip(images, values)}


def distribution_metrics(images: torch.Tensor, recon: torch.Tensor, fd_size: int) -> dict:
    """rFD-EffNet and KID (or rFID, where Inception resolves) and the HOG Fréchet distance of ``recon``."""
    from ...eval.fidelity import feature_metrics

    fm = feature_metrics(images, recon, effnet_size=fd_size)
    return {**{k: fm[k] for k in ("fd_effnet", "kid_effnet", "fid", "kid") if k in fm},
            "fd_hog": hog_distance(images, recon)}


def read_record(folder: str | Path | None = None, dataset: str = "cifar10") -> dict:
    """The ``training.json`` of a shipped base tokenizer."""
    return json.loads((Path(folder or base_folder(dataset)) / RECORD).read_text())


def base_training_flops(scale: str, train_set, folder: str | Path | None = None) -> int:
    """Training FLOPs of the base of ``scale``: one step of the ``base`` bundle (forward and backward with its
    objective, torch's counter) times the steps its ``training.json`` records (the bundle's steps where there is
    none) — stage 1 of the aligner sweep, for the accounting of what reusing one generator saves."""
    from ...eval.flops import training_step_flops
    from .trainers import build_objective
    from ..config.params import resolve

    B = resolve("base", scale)
    model = SelfBootTok(B.tokenizer)  # FLOPs do not depend on the weights: no data-dependent start needed
    batch = train_set.get_batch(torch.arange(B.training.batch_size))
    step = training_step_flops(model, build_objective(B, model, train_set, progress=False), batch)
    record = Path(folder or base_folder()) / RECORD
    return step * (json.loads(record.read_text())["steps"] if record.exists() else B.training.steps)
