"""Training from a lazily read JPEG folder (ImageNet at the paper scale): the step with and without the engine
prefetching the next batch.

    python benchmarks/lazy_loading.py [--scale paper] [--batch-size 32] [--steps 10] [--warmup 3]

Writes a synthetic ImageNet-like folder (8 classes of 500×375 JPEGs, smooth random content) into a temporary
``$SBT_DATA``, reads it as the ``imagenet`` data set (:class:`~sbt_lib.data.datasets.LazyImageFolder`: decoded
per batch, centre-cropped and resized to the scale's image size), and prints the time to decode one batch and
the ms per training step of the scale's tokenizer (its objective without the REPA teachers, whose weights need
not be present; a random encoder start) when the data set is read only when a step asks, and when the engine
has the next step's batch decoded in the background.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sbt_lib.train import TrainConfig, Trainer  # noqa: E402
from sbt_lib.workbook.config.params import resolve  # noqa: E402
from sbt_lib.workbook.pipeline import caches, trainers  # noqa: E402
from sbt_lib.workbook.report.tables import markdown_table  # noqa: E402


def synthetic_imagenet(root: Path, per_class: int, classes: int = 8) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", max(1, per_class // 6))):
        for c in range(classes):
            folder = root / "imagenet" / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                small = rng.integers(0, 255, (12, 14, 3), dtype=np.uint8)
                Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(folder / f"{i}.JPEG", quality=90)


class _InMemoryOnly:
    """The data set without its ``prefetch``: what the engine sees when nothing is decoded ahead."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def get_batch(self, indices, step):
        return self.data.get_batch(indices, step)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="paper")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="lazy_loading-"))
    synthetic_imagenet(root, per_class=48)
    os.environ["SBT_DATA"] = str(root)
    P = resolve("05_generation", args.scale, dataset="imagenet", encoder_init="", repa_global_weight=0,
                repa_local_weight=0, progress=False)
    train_set, _ = caches.load_data(P)
    t = time.perf_counter()
    train_set.images_at(torch.arange(args.batch_size))
    decode_ms = 1000 * (time.perf_counter() - t)
    rows = []
    for name, data in (("decoded when a step asks", _InMemoryOnly(train_set)), ("next batch prefetched", train_set)):
        model = trainers.build_tokenizer(P, train_set)
        objective = trainers.build_objective(P, model, train_set, progress=False)
        cfg = TrainConfig(steps=args.steps + args.warmup + 1, batch_size=args.batch_size, lr=1e-4, warmup=2,
                          progress=False)
        trainer = Trainer(model, objective, data, cfg)
        for _ in range(args.warmup):
            trainer.train_step()
        _sync()
        t = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step()
        _sync()
        rows.append([name, f"{1000 * (time.perf_counter() - t) / args.steps:.0f}"])
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"scale {args.scale} ({P.tokenizer.image_size} px), batch {args.batch_size}, {device}, {os.cpu_count()} CPU "
          f"cores; decoding one batch of 500×375 JPEGs: {decode_ms:.0f} ms\n")
    print(markdown_table(["data", "ms / step"], rows))


if __name__ == "__main__":
    main()
