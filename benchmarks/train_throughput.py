"""Training throughput of the tokenizer against the machine's matmul speed.

Prints a table: training images/s (median step), the FLOPs of one training step counted by torch's
FlopCounterMode (forward + backward), the GFLOP/s achieved, the GFLOP/s of a large fp32 matmul
measured in the same run (best of five), and their ratio (how much of the machine's dense-math speed the
training step gets).

    python benchmarks/train_throughput.py [--scale cpu] [--batch-size 32] [--steps 10]
"""
from __future__ import annotations

import argparse
import time

import torch

from sbt_lib.batch import Batch
from sbt_lib.eval.flops import training_step_flops
from sbt_lib.models.tokenizer import SelfBootTok
from sbt_lib.objective.objective import Objective
from sbt_lib.train import resolve_device
from sbt_lib.train.steps import adamw
from sbt_lib.workbook.config.params import resolve



def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 5, trials: int = 5) -> float:
    """The best of ``trials`` timings of ``repeats`` n×n fp32 matmuls: the machine's dense-math speed."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(trials):
        _sync(device)
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 * repeats / best / 1e9


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", default="cpu")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    P = resolve("01_decomposition", args.scale, batch_size=args.batch_size)
    device = resolve_device(args.device)
    torch.manual_seed(0)  # the linear path stays a random projection: its values do not change the step's cost
    model = SelfBootTok(P.tokenizer).to(device)
    cfg = P.training
    opt, loss_fn = adamw([model], cfg), Objective()
    size = P.tokenizer.image_size
    images = torch.rand(cfg.batch_size, 3, size, size, device=device) * 2 - 1
    batch = Batch(images, torch.zeros(len(images), dtype=torch.long), torch.arange(len(images)))

    flops = training_step_flops(model, loss_fn, batch)
    times = []
    for _ in range(args.steps + 2):  # the first two are warm-up
        _sync(device)
        t = time.perf_counter()
        terms = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - t)
    seconds = sorted(times[2:])[len(times[2:]) // 2]  # median step time
    achieved = flops / seconds / 1e9
    peak = matmul_gflops(device)
    rows = [
        ("device", f"{device} ({torch.get_num_threads()} threads)"),
        ("scale / batch", f"{args.scale} / {cfg.batch_size}"),
        ("parameters", f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M"),
        ("train images/s", f"{cfg.batch_size / seconds:.1f}"),
        ("GFLOP per image (fwd+bwd)", f"{flops / cfg.batch_size / 1e9:.3f}"),
        ("achieved GFLOP/s", f"{achieved:.1f}"),
        ("2048² fp32 matmul GFLOP/s", f"{peak:.1f}"),
        ("ratio", f"{achieved / peak:.2f}"),
    ]
    w = max(len(k) for k, _ in rows)
    print(f"| {'quantity':<{w}} | value |\n|{'-' * (w + 2)}|-------|")
    for k, v in rows:
        print(f"| {k:<{w}} | {v} |")


if __name__ == "__main__":
    main()
