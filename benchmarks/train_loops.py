"""Wall time per step, images/s and peak memory of each training loop of the pipeline, at a scale.

    .venv/bin/python benchmarks/train_loops.py [--scale gpu] [--dataset photos] [--steps 60] [--warmup 10]
                                               [-p NAME=VALUE ...] [--json FILE]
    torchrun --standalone --nproc_per_node=K benchmarks/train_loops.py ...   # the same loops under DDP

Runs the three loops of ``python -m sbt_lib train`` (notebooks 04-05: the stage-1 tokenizer, stage 2 for
each size of ``stage2_aligners``, the SiT generator on the global tokens) through the same library calls,
``--steps`` steps each into a temporary folder, and prints one markdown row per loop: parameters, the
global batch, processes, ms per step and images/s after ``--warmup`` steps (the engine's own clock around
each step; a step ends with a host sync, the finiteness check, so GPU time is included), peak GPU memory
per process, and the wall time the scale's full number of steps would take at that speed (an estimate:
evaluation, checkpoints and the one-off caches are not counted).  Under ``torchrun`` the images/s are
of all processes together.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sbt_lib import distributed as dist  # noqa: E402
from sbt_lib.__main__ import _parse_param  # noqa: E402
from sbt_lib.workbook.cli.launch import BUNDLE  # noqa: E402
from sbt_lib.workbook.config.params import resolve  # noqa: E402
from sbt_lib.workbook.pipeline import caches, generators, trainers  # noqa: E402
from sbt_lib.workbook.report.tables import markdown_table  # noqa: E402


def _row(name, result, batch, full_steps, warmup, params) -> dict:
    times = {h["step"]: h["seconds"] for h in result.history if "loss" in h}
    last = max(times)
    first = min(warmup, last - 1)
    sec = (times[last] - times.get(first, 0.0)) / (last - first)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"loop": name, "params_m": params / 1e6, "batch": batch, "processes": dist.rank_and_world_size()[1],
            "ms_per_step": 1000 * sec, "images_per_s": batch / sec, "peak_gib": peak, "full_steps": full_steps,
            "full_hours": full_steps * sec / 3600}


def _reset_memory():
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="gpu")
    ap.add_argument("--dataset")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("-p", "--param", action="append", type=_parse_param, default=[])
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    with dist.process_group() as (rank, world):
        P = resolve(BUNDLE, args.scale, dataset=args.dataset, **dict(args.param))
        full = {"tokenizer": P.training.steps, "stage2": P.stage2.steps, "generator": P.generator.steps}
        P = P.replace(steps=args.steps, stage2_steps=args.steps, generator_steps=args.steps, eval_every=0,
                      ckpt_every=0, log_every=1, progress=False)
        out = Path(dist.broadcast_object(tempfile.mkdtemp(prefix="train_loops-") if rank == 0 else None))
        with dist.main_first():
            train_set, _ = caches.load_data(P)
            model = trainers.build_tokenizer(P, train_set)
            trainers.build_objective(P, model, train_set, progress=False)
        rows = []
        _reset_memory()
        r = trainers.train_tokenizer(P, train_set, None, out / "stage1", progress=False, evaluate=False)
        rows.append(_row(f"stage-1 tokenizer ({P.tokenizer.local_2d} aligner)", r, P.training.batch_size,
                         full["tokenizer"], args.warmup, model.num_params()["total"]))
        parent = r.model.eval()
        with dist.main_first():
            z_global = caches.global_token_cache(parent, train_set, P, progress=False)
            tokens = caches.token_cache(parent, train_set, P, "global", progress=False)
        for s in P.stage2.aligners:
            _reset_memory()
            r = trainers.train_stage2(P, parent, s, train_set, None, out / f"stage2-{s}", z_global=z_global,
                                      progress=False)
            trainable = sum(p.numel() for p in r.model.parameters() if p.requires_grad)
            rows.append(_row(f"stage 2, {s} aligner (trainable)", r, P.training.batch_size, full["stage2"],
                             args.warmup, trainable))
        _reset_memory()
        r = generators.train_generator(P, parent, train_set, out / "generator", "global", tokens=tokens, progress=False)
        rows.append(_row(f"generator SiT-{P.generator.size}", r, P.generator.batch_size, full["generator"],
                         args.warmup, sum(p.numel() for p in r.model.parameters())))
        if rank == 0:
            device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
            print(f"scale {args.scale}, {P.data.dataset}, {world} process(es) on {device}, "
                  f"{args.steps} steps per loop (timed after {args.warmup})\n")
            print(markdown_table(
                ["loop", "parameters (M)", "global batch", "processes", "ms / step", "images / s", "peak GiB / process",
                 "steps at this scale", "estimated hours"],
                [[r["loop"], f"{r['params_m']:.1f}", r["batch"], r["processes"], f"{r['ms_per_step']:.1f}",
                  f"{r['images_per_s']:.0f}", "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}",
                  f"{r['full_steps']:,}", f"{r['full_hours']:.2f}"] for r in rows]))
            if args.json:
                Path(args.json).write_text(json.dumps({"device": device, "rows": rows}, indent=1))
        return rows


if __name__ == "__main__":
    main()
