"""Generator throughput: the SiT's FLOPs, training images/s and sampling ms per image, per size and token set.

    .venv/bin/python benchmarks/generator_throughput.py [--scale cpu] [--sizes tiny cpu] [--batch-size 64]
                                                        [--sample-batch 16] [--steps 10] [--warmup 2]
                                                        [--sampling-steps 20] [--guidance 2.0] [--prior gaussian]
                                                        [--device auto]

The generator (:class:`sbt_lib.models.sit.SiT`, paper §3.2, notebook 05) is trained by flow matching on a
frozen tokenizer's cached tokens and sampled from noise.  Its cost depends only on its size preset
(``SIT_PRESETS``) and on the sequence it models, so no tokenizer or data set is needed here: random tokens
and random class labels (10 classes) stand in for them.  The token sets are those of notebook 04's tokenizer
at ``--scale`` (``resolve("04_aligner_scaling", scale).tokenizer``):

| token set | sequence per sample |
|---|---|
| global | the N global tokens (``num_tokens`` × ``token_dim``; 32 × 8 at cpu) |
| all | [global; local_1d; local_2d] (``num_tokens`` + ``num_tokens`` + ``local_tokens`` tokens × ``token_dim``) |

For each (size × token set) it prints one markdown row:

- tokens per sample (N × d) and parameters;
- FLOPs of one forward per sample, counted by torch's FlopCounterMode (:mod:`sbt_lib.eval.flops`, which adds
  the CPU attention kernel's formula), at **2 FLOPs per multiply-add**; and the same count in the DiT/SiT
  papers' convention (their "Gflops" count a multiply-add as **1** FLOP), i.e. half of it;
- training images/s: ``--batch-size`` × ``--steps`` / their seconds, after ``--warmup`` untimed steps, of one
  optimizer step of :class:`~sbt_lib.generation.transport.FlowMatchingLoss` as the training engine takes it
  (forward under bf16 autocast on CUDA, backward, gradient-norm clipping, AdamW of ``sbt_lib.train.steps.adamw``
  at the scale's generator learning rate);
- sampling ms per image of :func:`sbt_lib.generation.samplers.sample` for ``--sample-batch`` classes at
  classifier-free guidance ``--guidance`` (above 1 every evaluation runs the conditional and the null class
  together, a batch of twice ``--sample-batch``), for ``euler``, ``heun`` and ``sde`` at ``--sampling-steps``
  and ``dopri5`` at its default tolerances, with the number of function evaluations (NFE) each one spent.

An untrained SiT predicts exactly zero velocity (adaLN-Zero and a zero output layer), which would make the
field degenerate; the zero-initialised layers are therefore drawn from N(0, 0.02²) here.  This changes no
fixed-step sampler's cost, but dopri5's NFE follows the field: on a random network it only indicates the
adaptive sampler's cost, a trained generator's field sets the real one.

The SiT carries the scale's prior (``--prior``; the class-conditional Gaussian of
:class:`~sbt_lib.models.gaussian_flow.GaussianFlow` on every scale but paper), fitted to random tokens: it adds
two D×D products (D = tokens × dim) per class present to every evaluation, counted in the FLOPs and the times.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import time

import torch
from torch import nn

from sbt_lib.batch import Batch
from sbt_lib.eval.flops import flops_by_module, num_params  # importing it registers the CPU attention's FLOP formula
from sbt_lib.generation.samplers import sample
from sbt_lib.generation.transport import FlowMatchingLoss, TokenNormalizer
from sbt_lib.models.sit import PRIORS, SIT_PRESETS, SiT
from sbt_lib.train import resolve_device
from sbt_lib.train.steps import adamw
from sbt_lib.workbook.config.params import Params, resolve

NUM_CLASSES = 10
SAMPLERS = ("euler", "heun", "sde", "dopri5")  # dopri5 is adaptive: --sampling-steps does not apply to it
DEFAULT_SIZES = {"tiny": ["tiny", "cpu"], "cpu": ["tiny", "cpu"], "gpu": ["cpu", "S", "B"]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _count(n: float) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} K"


def token_sets(P: Params) -> dict[str, int]:
    """Tokens per sample of each token set of notebook 04's tokenizer at this scale."""
    t = P.tokenizer
    return {"global": t.num_tokens, "all": t.num_tokens + t.num_tokens + t.local_tokens}


def build(size: str, num_tokens: int, token_dim: int, device: torch.device, prior: str = "none") -> SiT:
    """A SiT with DiT's initialisation, its zero-initialised layers then drawn from N(0, 0.02²) (see above);
    with ``prior="gaussian"`` its Gaussian prior fitted to random tokens (its cost does not depend on them)."""
    torch.manual_seed(0)
    model = SiT(num_tokens=num_tokens, token_dim=token_dim, num_classes=NUM_CLASSES, size=size, prior=prior)
    for layer in [block.ada[-1] for block in model.blocks] + [model.final.ada[-1], model.final.out]:
        nn.init.normal_(layer.weight, std=0.02)
    if model.prior is not None:
        labels = torch.arange(NUM_CLASSES).repeat(64)
        model.prior.fit(torch.randn(len(labels), num_tokens, token_dim), labels)
    return model.to(device)


def forward_flops(model: SiT, batch_size: int, device: torch.device) -> float:
    """FlopCounterMode FLOPs (2 per multiply-add) of one forward, per sample."""
    n, d = model.cfg.num_tokens, model.cfg.token_dim
    x = torch.randn(batch_size, n, d, device=device)
    t = torch.rand(batch_size, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), device=device)
    return flops_by_module(model, x, t, y)["total"] / batch_size


def train_speed(P: Params, model: SiT, batch_size: int, steps: int, warmup: int, device: torch.device) -> float:
    """Training images/s over ``steps`` flow-matching optimizer steps after ``warmup`` untimed ones."""
    cfg = dataclasses.replace(P.training, batch_size=batch_size, lr=P.generator.lr)
    n, d = model.cfg.num_tokens, model.cfg.token_dim
    tokens = torch.randn(batch_size, n, d, device=device)  # the "cache": one row per image of the batch
    loss_fn = FlowMatchingLoss(tokens, TokenNormalizer(d).fit(tokens).to(device), P.generator.time_sampling)
    images = torch.zeros(batch_size, 1, device=device)  # the loss reads only its device (and the batch length)
    targets = torch.randint(0, NUM_CLASSES, (batch_size,), device=device)
    batch = Batch(images, targets, torch.arange(batch_size), step=0)
    opt = adamw([model], cfg)
    params = [p for group in opt.param_groups for p in group["params"]]
    autocast = cfg.bf16 and device.type == "cuda"
    model.train()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = sum(loss_fn(model, batch).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or float("inf"))
        opt.step()

    for _ in range(warmup):
        step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - t
    opt.zero_grad(set_to_none=True)
    return batch_size * steps / seconds


def sample_speed(model: SiT, sampler: str, batch_size: int, steps: int, guidance: float,
                 device: torch.device) -> tuple[float, int]:
    """(ms per image, NFE) of one ``sample`` call for ``batch_size`` random classes."""
    y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=torch.Generator().manual_seed(1)).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    stats: dict = {}
    _sync(device)
    t = time.perf_counter()
    sample(model, y, sampler, steps, guidance, generator=generator, stats=stats)
    _sync(device)
    return (time.perf_counter() - t) * 1e3 / batch_size, stats["nfe"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", default="cpu", choices=["tiny", "cpu", "gpu"], help="picks the token sets' sizes")
    ap.add_argument("--sizes", nargs="+", choices=list(SIT_PRESETS),
                    help="SiT presets (default: tiny cpu at tiny/cpu scale, cpu S B at gpu)")
    ap.add_argument("--batch-size", type=int, default=64, help="training batch")
    ap.add_argument("--sample-batch", type=int, default=16, help="images per sampling call")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per measurement")
    ap.add_argument("--warmup", type=int, default=2, help="untimed training steps before each measurement")
    ap.add_argument("--sampling-steps", type=int, default=20, help="steps of euler, heun and sde (not dopri5)")
    ap.add_argument("--guidance", type=float, default=2.0,
                    help="classifier-free guidance scale (above 1 doubles the batch of every evaluation)")
    ap.add_argument("--prior", choices=PRIORS, help="the SiT's prior (default: the scale's generator_prior)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    P = resolve("04_aligner_scaling", args.scale)
    prior = args.prior or P.generator.prior
    device = resolve_device(args.device)
    sizes = args.sizes or DEFAULT_SIZES[args.scale]
    token_dim = P.tokenizer.token_dim

    rows = []
    for size in sizes:
        for name, num_tokens in token_sets(P).items():
            model = build(size, num_tokens, token_dim, device, prior)
            params = num_params(model)
            flops = forward_flops(model, min(args.batch_size, 8), device)
            ips = train_speed(P, model, args.batch_size, args.steps, args.warmup, device)
            for s in SAMPLERS:  # untimed warm-up of every sampler (kernels, dopri5's torchdiffeq import)
                sample(model, torch.zeros(2, dtype=torch.long, device=device), s, 1, args.guidance)
            speeds = {s: sample_speed(model, s, args.sample_batch, args.sampling_steps, args.guidance, device)
                      for s in SAMPLERS}
            rows.append((size, name, num_tokens, params, flops, ips, speeds))
            del model
            _free()

    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"\nscale {args.scale}: device {device}{gpu}, {torch.get_num_threads()} torch CPU threads; "
          f"{NUM_CLASSES} classes, random tokens and labels; prior {prior}; training batch {args.batch_size}, {args.steps} timed "
          f"steps after {args.warmup} warm-up steps (flow-matching forward"
          f"{' under bf16 autocast' if P.training.bf16 and device.type == 'cuda' else ''}, backward, "
          f"grad clipping, AdamW at lr {P.generator.lr}); sampling {args.sample_batch} images per call at guidance "
          f"{args.guidance}{f' (conditional and null class in one batch of {2 * args.sample_batch})' if args.guidance != 1 else ''}, "
          f"euler / heun / sde at {args.sampling_steps} steps, dopri5 at its default tolerances (rtol = atol = 1e-5)")
    print("GFLOP per forward per sample: torch's FlopCounterMode counts a multiply-add as 2 FLOPs; the DiT/SiT "
          "papers' Gflops count a multiply-add as 1 FLOP (half of it).  Sampling cells: ms per image (NFE); one "
          "NFE is one guided velocity evaluation.  dopri5's NFE follows the field, here of a random network.\n")
    print("| SiT | token set | tokens × dim | params | GFLOP/fwd/sample (2 per MAC, torch) "
          "| GFLOP/fwd/sample (1 per MAC, DiT/SiT paper) | train img/s "
          + "".join(f"| {s} ms/img (NFE) " for s in SAMPLERS) + "|")
    print("|---|---|---|---|---|---|---|" + "---|" * len(SAMPLERS))
    for size, name, num_tokens, params, flops, ips, speeds in rows:
        cells = "".join(f"| {ms:.2f} ({nfe}) " for ms, nfe in (speeds[s] for s in SAMPLERS))
        print(f"| {size} | {name} | {num_tokens} × {token_dim} | {_count(params)} | {flops / 1e9:.4g} "
              f"| {flops / 2e9:.4g} | {ips:.1f} {cells}|")


if __name__ == "__main__":
    main()
