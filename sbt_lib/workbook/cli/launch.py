"""``python -m sbt_lib train|evaluate {base,stage2,generator}``: the notebooks' training calls, and their
evaluation, as commands, alone or under ``torchrun``.

Each command resolves the parameters of its bundle at a scale and makes the same library call the notebook makes,
into the same run folder, so a notebook run with the same ``out`` folder, scale and parameters loads what the
command trained instead of training it again.  Stage 1 is the base tokenizer: the shipped one where its
configuration is the scale's ``base`` bundle (cpu, gpu), else the one ``train base`` writes under ``out``:

=========  ================================================================  =========================================
command    trains                                                            run folder (under ``out``)
=========  ================================================================  =========================================
base       the base tokenizer, stage 1                                       ``base/tokenizer``; with ``--export DIR``
           (:mod:`~sbt_lib.workbook.pipeline.base`)                          its ``save_pretrained`` folder at the
                                                                             end (the shipped one: ``weights/``)
stage2     notebook 04's stage 2 per size of ``stage2_aligners`` on the      ``04_aligner_scaling/runs/``
           base (:func:`~sbt_lib.workbook.pipeline.trainers.train_on_base`)  ``two-stage_<size>/seed<seed>``
generator  the SiT on the base's global tokens that notebook 05 reuses       ``05_generation/generators/global``; with
           (:mod:`~sbt_lib.workbook.pipeline.base_generator`)                ``--export DIR`` its ``save_pretrained``
                                                                             folder at the end (shipped: ``weights/``)
=========  ================================================================  =========================================

Under ``torchrun`` rank 0 fills the caches first (decoded data, teacher features, the global tokens),
then every rank trains its shard of each batch (:mod:`sbt_lib.train`); only rank 0 writes and prints.
``evaluate`` measures a trained run on the held-out split, each rank taking its shard
(:mod:`sbt_lib.eval.sharded`): PSNR, SSIM and the rFID-style distance of the tokenizers; gFD/KID of
``generator_samples`` samples of the generator (gFID@50000 at the paper scale, when the Inception weights
resolve); rank 0 writes ``evaluation.json`` into the run folder.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ... import distributed as dist
from ...eval import sharded
from ...files import REPO, write_json
from ...train import TrainResult, resolve_device
from ..config.params import Params, resolve
from ..pipeline import caches, generators, trainers
from ..pipeline.ablations import stage2_on_base
from ..pipeline.base import export_base, load_base, notebook_base_folder
from ..pipeline.base_generator import export_run, first_cycle, qualities, read_record, remeasure
from ..pipeline.runs import load_generator, load_tokenizer, variant_run

WHAT = ("base", "stage2", "generator")
BUNDLES = {"base": "base", "stage2": "04_aligner_scaling", "generator": "generator"}  # the bundle of each command


def run_folders(out: Path, P: Params) -> dict[str, Path]:
    """Where each command writes (the base's, notebook 04's and notebook 05's folders under ``out``)."""
    return {"base": out / "base" / "tokenizer",
            **{f"stage2 {s}": variant_run(out / "04_aligner_scaling", name, P.seed)
               for s, name in zip(P.stage2.aligners, stage2_on_base(P.stage2.aligners))},
            "generator": out / "05_generation" / "generators" / "global"}


def _stage1(P: Params, out: Path):
    """The base the notebooks stand on at ``P.scale`` (:func:`~sbt_lib.workbook.pipeline.base.notebook_base_folder`)."""
    run = notebook_base_folder(P, out)
    if (run / "config.json").exists():
        return load_base(run)
    if not (run / "checkpoint.json").exists():
        raise FileNotFoundError(f"no base tokenizer in {run}: train it first with the same --scale, --out and "
                                "-p values: python -m sbt_lib train base ...")
    return load_tokenizer(run)


def _resolve(what: str, scale: str, dataset: str | None, out, overrides: dict | None) -> tuple[Params, Path, dict]:
    """The parameters of a command's bundle at ``scale``, the root folder and the run folders of the command."""
    if what not in WHAT:
        raise ValueError(f"unknown {what!r}; valid: {WHAT}")
    P = resolve(BUNDLES[what], scale, dataset=dataset, **(overrides or {}))
    out = Path(out) if out else REPO / "runs" / scale
    return P, out, run_folders(out, P)


def train_command(what: str, scale: str = "cpu", dataset: str | None = None, out: str | Path | None = None,
                  overrides: dict | None = None, export: str | Path | None = None,
                  init: str | Path | None = None) -> dict[str, TrainResult]:
    """Train ``what`` at ``scale`` (alone, or as one rank of a ``torchrun`` launch); returns the results by
    run name.  ``overrides``: flat parameter names (as the notebooks' ``-p``); ``export``: for ``base``, the
    folder its ``save_pretrained`` weights and record go to when training has finished; for ``generator``, the
    same, with its sample quality against the Gaussian anchor over three sampling seeds; ``init``: for a
    ``generator`` of two cycles, a generator folder trained by the first cycle's recipe, which stands in for it
    (:func:`~sbt_lib.workbook.pipeline.base_generator.first_cycle`)."""
    if init is not None and what != "generator":
        raise ValueError("--init is for `train generator` (a generator folder standing in for its first cycle)")
    with dist.process_group() as (rank, world_size):
        P, out, folders = _resolve(what, scale, dataset, out, overrides)
        main, progress = rank == 0, rank == 0 and P.training.progress
        say = print if main else (lambda *a, **k: None)
        group = f"DDP on {dist.backend()}" if dist.in_process_group() else "no process group"
        say(f"train {what} at scale {scale} on {world_size} process(es) ({group}); "
            f"global batch {P.training.batch_size if what != 'generator' else P.generator.batch_size}; out: {out}")
        start, first = (first_cycle(P, init), read_record(init)) if init is not None else (None, None)
        with dist.main_first():  # rank 0 fills the caches on disk, the others read them
            train_set, test_set = caches.load_data(P)
            if what == "base":
                trainers.build_objective(P, trainers.build_tokenizer(P, train_set), train_set, progress)
            else:
                parent = _stage1(P, out)
                if what == "stage2":
                    P = trainers.base_params(P, parent)
                    z_global = caches.global_token_cache(parent, train_set, P, progress)
                else:
                    tokens = caches.token_cache(parent, train_set, P, "global", progress)
        t0, results = time.perf_counter(), {}
        if what == "base":
            results["base"] = trainers.train_tokenizer(P, train_set, test_set, folders["base"], progress,
                                                       distribution=True)
        elif what == "stage2":
            for s, switches in zip(P.stage2.aligners, stage2_on_base(P.stage2.aligners).values()):
                results[f"stage2 {s}"] = trainers.train_on_base(P.replace(**switches), parent, train_set, test_set,
                                                                folders[f"stage2 {s}"], z_global=z_global, progress=progress)
        else:
            results["generator"] = generators.train_generator(P, parent, train_set, folders["generator"], "global",
                                                              tokens=tokens, progress=progress, first_cycle=start)
        for name, r in results.items():
            batch = P.generator.batch_size if name == "generator" else P.training.batch_size
            evals = [h for h in r.history if any(k.startswith("eval_") for k in h)]
            say(f"{name}: {r.step} steps, {r.seconds:.1f} s training, {batch * r.step / max(r.seconds, 1e-9):.1f} images/s "
                f"over {world_size} process(es)" + (f"; last evaluation {json.dumps(evals[-1])}" if evals else "")
                + f"; checkpoint in {folders[name]}")
        say(f"done in {time.perf_counter() - t0:.1f} s")
        if what == "generator" and export and main:
            command = _command_line("train", what, scale, P, overrides, export=export, init=init)
            record = export_run(folders["generator"], export, P, parent, train_set, test_set, command, first=first)
            say(f"exported to {export}: {_quality_line(record)}")
        if what == "base" and export and main:
            command = _command_line("train", what, scale, P, overrides, export=export)
            record = export_base(folders["base"], export, train_set, test_set, command, P.eval.fd_size)
            say(f"exported to {export}: " + json.dumps({k: record["test"].get(k) for k in ("test_psnr", "fd_effnet")})
                + f" (PCA: {json.dumps(record['anchors']['PCA'])})")
        return results


def _command_line(verb: str, what: str, scale: str, P: Params, overrides: dict | None, **flags) -> str:
    """The command that remakes a record: ``python -m sbt_lib VERB WHAT`` with its scale, data set, the ``flags``
    that are set (``--export DIR``, ...) and every ``-p`` override."""
    return (f"python -m sbt_lib {verb} {what} --scale {scale} --dataset {P.data.dataset}"
            + "".join(f" --{k} {v}" for k, v in flags.items() if v is not None)
            + "".join(f" -p {k}={v!r}" for k, v in (overrides or {}).items()))


def _quality_line(record: dict) -> str:
    """A generator record's sample quality in one line: gFD per row, at each count it was measured at."""
    return "; ".join(", ".join(f"{k} {q['label']} {m['gfd_mean']:.1f} ± {m['gfd_std']:.1f}"
                               for k, m in q["rows"].items()) for q in qualities(record))


def evaluate_command(what: str, scale: str = "cpu", dataset: str | None = None, out: str | Path | None = None,
                     overrides: dict | None = None, folder: str | Path | None = None) -> dict[str, dict]:
    """Evaluate the run(s) that ``train_command(what, ...)`` trained, on the held-out split (all of it, as
    ``test_size`` says), sharded over the processes; returns the metrics by run name (every rank).  ``folder``:
    for ``generator``, measure that ``save_pretrained`` folder's record again instead (the shipped one's numbers,
    without its hours of training: :func:`~sbt_lib.workbook.pipeline.base_generator.remeasure`), one process."""
    if folder is not None:
        return {"generator": _remeasure(what, scale, dataset, out, overrides, Path(folder))}
    with dist.process_group() as (rank, world_size):
        P, out, folders = _resolve(what, scale, dataset, out, overrides)
        with dist.main_first():
            train_set, test_set = caches.load_data(P)
        device = resolve_device(P.training.device)
        results = {}
        if what in ("base", "stage2"):
            names = [what] if what != "stage2" else [f"stage2 {s}" for s in P.stage2.aligners]
            for name in names:
                if not (folders[name] / "checkpoint.json").exists():
                    raise FileNotFoundError(f"no trained run in {folders[name]}: python -m sbt_lib train {what} first")
                model = load_tokenizer(folders[name]).to(device)
                results[name] = sharded.reconstruction_metrics(model, test_set, effnet_size=P.eval.fd_size)
        else:
            if not (folders["generator"] / "checkpoint.json").exists():
                raise FileNotFoundError(f"no generator in {folders['generator']}: python -m sbt_lib train generator first")
            tokenizer = _stage1(P, out).to(device)
            model, normalizer = load_generator(folders["generator"])
            model, G = model.to(device), P.generator

            def sample(classes, seed):
                return generators.generate_images(tokenizer, model, normalizer, classes.to(device), "global", G.sampler,
                                                  G.sampling_steps, G.guidance, seed, guidance_from=G.guidance_from)

            results["generator"] = sharded.generation_metrics(sample, test_set, G.samples, len(train_set.classes),
                                                              P.seed, P.eval.fd_size)
        if rank == 0:
            for name, metrics in results.items():
                write_json(folders[name] / "evaluation.json", {"scale": scale, "dataset": P.data.dataset, **metrics})
                print(f"{name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in metrics.items()) + f"  → {folders[name] / 'evaluation.json'}")
        return results


def _remeasure(what: str, scale: str, dataset: str | None, out, overrides: dict | None, folder: Path) -> dict:
    """``evaluate generator --folder DIR``: the record of the generator folder ``DIR``, measured again."""
    if what != "generator":
        raise ValueError("--folder is for `evaluate generator` (a generator folder whose record to measure again)")
    if dist.launched_by_torchrun():
        raise ValueError("`evaluate generator --folder` runs as one process: run it without torchrun")
    P, out, _ = _resolve(what, scale, dataset, out, overrides)
    train_set, test_set = caches.load_data(P)
    command = _command_line("evaluate", what, scale, P, overrides, folder=folder)
    record = remeasure(folder, P, _stage1(P, out), train_set, test_set, command)
    print(f"measured {folder}: {_quality_line(record)}")
    return record

