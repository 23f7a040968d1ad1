"""Stage-2 training throughput: cached global tokens against recomputing the frozen encoder, and against stage 1.

    .venv/bin/python benchmarks/stage2_throughput.py [--scale cpu] [--dataset NAME] [--aligners xs m l xl]
                                                     [--freeze encoder|all] [--steps 20] [--warmup 3]
                                                     [--train-size 2000] [--device auto]

Two-stage aligner scaling (paper §3.4, notebook 04) grows the 2D aligner of a stage-1 tokenizer with
its encoder and global codebook frozen, so ``z_global`` of every training image is a constant.  For
each 2D-aligner size this times full training steps (``Trainer.train_step``: batch drawing, forward,
backward, gradient clipping, AdamW) of notebook 04's tokenizer on ``--train-size`` images, for:

| run | model | loss |
|---|---|---|
| stage 1 | the full tokenizer with that aligner, everything trains | the scale's stage-1 objective (``build_objective``) |
| stage 2, recomputing | the stage-2 tokenizer (``stage2_tokenizer``, ``--freeze``) | ``Stage2Loss(None)``: the frozen encoder runs under ``no_grad`` every step |
| stage 2, cached | the same | ``Stage2Loss(cache)``: ``z_global`` looked up from ``global_token_cache`` |

and prints one markdown row per size: the 2D aligner's parameters, images/s of each run (batch size ×
``--steps`` timed steps / their seconds, after ``--warmup`` untimed steps), the speed-up of the cache
over recomputing and over stage 1, and the GFLOP of one training step of each run
(:func:`sbt_lib.eval.flops.training_step_flops`: torch's FlopCounterMode, forward + backward, the
optimizer update not counted, 2 FLOPs per multiply-add).  The stage-1 parent of stage 2 is an untrained
tokenizer with the first aligner of the list (weights do not change a step's cost); its global-token
cache is computed once, before any timing, and shared by every size.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import time

import torch

from sbt_lib.eval.flops import num_params, training_step_flops
from sbt_lib.models.two_stage import FREEZE, stage2_tokenizer
from sbt_lib.objective.stage2 import Stage2Loss
from sbt_lib.train import Trainer
from sbt_lib.workbook.config.params import Params, resolve
from sbt_lib.workbook.pipeline import caches, trainers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(P: Params, model, loss_fn, train_set, steps: int, warmup: int) -> tuple[float, float]:
    """(images/s over ``steps`` training steps after ``warmup`` untimed ones, GFLOP of one step)."""
    trainer = Trainer(model, loss_fn, train_set, dataclasses.replace(P.training, progress=False))
    batch = train_set.get_batch(torch.arange(min(P.training.batch_size, len(train_set)))).to(trainer.device)
    trainer.model.train()
    gflop = training_step_flops(trainer.model, loss_fn, batch) / 1e9
    for _ in range(warmup):
        trainer.train_step()
    _sync(trainer.device)
    t = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    _sync(trainer.device)
    seconds = time.perf_counter() - t
    return P.training.batch_size * steps / seconds, gflop


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} K"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", default="cpu")
    ap.add_argument("--dataset", help="default: the scale's (cpu: auto)")
    ap.add_argument("--aligners", nargs="+", help="2D-aligner presets (default: the scale's stage2_aligners)")
    ap.add_argument("--freeze", choices=list(FREEZE), help="what stage 2 freezes (default: the scale's stage2_freeze)")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per measurement")
    ap.add_argument("--warmup", type=int, default=3, help="untimed training steps before each measurement")
    ap.add_argument("--train-size", type=int, default=2000, help="training images (the global-token cache covers them)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    P = resolve("04_aligner_scaling", args.scale, dataset=args.dataset, train_size=args.train_size,
                test_size=64, stage2_aligners=args.aligners, stage2_freeze=args.freeze, device=args.device)
    aligners, freeze = P.stage2.aligners, P.stage2.freeze
    train_set, _ = caches.load_data(P)  # the test split is not used: only 64 images of it are loaded

    parent = trainers.build_tokenizer(P.replace(local_2d=aligners[0]), train_set)
    t = time.perf_counter()
    cache = caches.global_token_cache(parent, train_set, P, progress=False)
    cache_seconds = time.perf_counter() - t

    rows = []
    for size in aligners:
        Q = P.replace(local_2d=size)
        model = trainers.build_tokenizer(Q, train_set)
        stage1 = measure(Q, model, trainers.build_objective(Q, model, train_set, progress=False), train_set,
                         args.steps, args.warmup)
        del model
        _free()
        model = stage2_tokenizer(parent, size, freeze, seed=P.seed)
        params = num_params(model.aligner_2d)
        live = measure(P, model, Stage2Loss(None), train_set, args.steps, args.warmup)
        del model
        _free()
        model = stage2_tokenizer(parent, size, freeze, seed=P.seed)
        cached = measure(P, model, Stage2Loss(cache), train_set, args.steps, args.warmup)
        del model
        _free()
        rows.append((size, params, stage1, live, cached))

    device = next(parent.parameters()).device
    print(f"\nscale {args.scale}: {P.data.dataset}, {len(train_set)} training images, batch {P.training.batch_size}, "
          f"freeze={freeze}, device {device}, {torch.get_num_threads()} torch CPU threads; "
          f"{args.steps} timed steps after {args.warmup} warm-up steps per measurement "
          f"(global-token cache of the training images ready in {cache_seconds:.1f} s, computed or read from disk; "
          "not part of any timing below)")
    print("GFLOP per training step: forward + backward of one batch (optimizer update not counted), "
          "counted by torch's FlopCounterMode at 2 FLOPs per multiply-add\n")
    print("| 2D aligner | aligner params | stage-1 img/s | stage-2 img/s, recomputing encoder "
          "| stage-2 img/s, cached | cache vs recomputing | cache vs stage 1 "
          "| GFLOP/step stage 1 | GFLOP/step stage 2 recomputing | GFLOP/step stage 2 cached |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size, params, (s1, f1), (s2, f2), (sc, fc) in rows:
        print(f"| {size} | {_count(params)} | {s1:.1f} | {s2:.1f} | {sc:.1f} | {sc / s2:.2f}× | {sc / s1:.2f}× "
              f"| {f1:.3f} | {f2:.3f} | {fc:.3f} |")


if __name__ == "__main__":
    main()
