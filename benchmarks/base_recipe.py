"""Which tokenizer learns fastest on two cores: the probes behind the ``base`` bundle's architecture.

Each probe trains from scratch for the same number of steps (images seen) with the base objective
(MSE + 0.5 × the EfficientNet perceptual loss, no GAN), then measures held-out PSNR and rFD-EffNet on
evenly spaced CIFAR-10 test images and the training images/s.  Probes are overrides of the ``base`` bundle
at ``cpu``; two are not tokenizer settings:

- ``no quantizer``: SoftVQ replaced by the identity (what quantization costs at this budget);
- ``plain autoencoder``: the tokenizer's conv trunk and head around a fully connected bottleneck of the
  same number of values, no transformer, no tokens (the reference that the issue measured against).

    SBT_DATA=../shared/data python benchmarks/base_recipe.py [--steps 250] [--probes base "patch 4" ...]

One heavy job: run it alone on the machine, the probes one after another.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from sbt_lib.eval.fidelity import feature_metrics
from sbt_lib.eval.metrics import psnr
from sbt_lib.eval.reconstruction import evaluate_tokenizer, held_out_images
from sbt_lib.models import quantizer
from sbt_lib.models.tokenizer_config import TokenizerConfig
from sbt_lib.models.tokenizer_parts import ConvHead, ConvTrunk
from sbt_lib.objective.perceptual import PerceptualLoss
from sbt_lib.train import train
from sbt_lib.workbook.config.params import resolve
from sbt_lib.workbook.pipeline import caches, trainers

# The probes: overrides of the base bundle (no GAN, no EMA: what learns fastest, not what ends best).
PROBES = {
    "base": {},
    "no dense path": dict(dense_path=False),
    "patch 4": dict(patch_size=4, dense_path=False),
    "32 conv channels": dict(conv_channels=32, dense_path=False),
    "no quantizer": dict(dense_path=False),
    "plain autoencoder": {},
}
COMMON = dict(adv_weight=0.0, ema=0.0, eval_every=0, ckpt_every=0, warmup=100, progress=False)


class PlainAutoencoder(nn.Module):
    """The base tokenizer's conv trunk and head around a fully connected bottleneck of ``token_values``."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.trunk, self.head = ConvTrunk(cfg), ConvHead(cfg)
        features = cfg.grid**2 * cfg.width
        self.down, self.up = nn.Linear(features, cfg.token_values), nn.Linear(cfg.token_values, features)
        self.shape = (cfg.grid**2, cfg.width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.up(self.down(self.trunk(images).flatten(1))).view(len(images), *self.shape))


def identity_quantizer(self, z_hat: torch.Tensor) -> quantizer.Quantized:
    probs = z_hat.new_full((*z_hat.shape[:-1], self.codebook_size), 1.0 / self.codebook_size)
    return quantizer.Quantized(z_hat, probs, z_hat.new_zeros(()))


def probe(name: str, steps: int, train_set, test_set, test_size: int) -> dict:
    P = resolve("base", "cpu", **{**COMMON, **PROBES[name], "steps": steps})
    cfg = replace(P.training, progress=False)
    images = held_out_images(test_set, test_size)
    if name == "plain autoencoder":
        torch.manual_seed(P.seed)
        model, perceptual = PlainAutoencoder(P.tokenizer), PerceptualLoss(P.objective.perceptual)

        def loss(m, batch):
            recon = m(batch.images)
            return {"rec": F.mse_loss(recon, batch.images),
                    "percep": P.objective.perceptual_weight * perceptual(recon, batch.images)}

        t0 = time.perf_counter()
        train(model, loss, train_set, cfg)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            recon = torch.cat([model.eval()(x) for x in images.split(64)]).clamp(-1, 1)
        scores = {"psnr": psnr(recon, images).mean().item(),
                  "fd_effnet": feature_metrics(images, recon, effnet_size=P.eval.fd_size)["fd_effnet"]}
    else:
        original = quantizer.SoftVQ.forward
        if name == "no quantizer":
            quantizer.SoftVQ.forward = identity_quantizer
        try:
            model = trainers.build_tokenizer(P, train_set)
            objective = trainers.build_objective(P, model, train_set, progress=False)
            t0 = time.perf_counter()
            train(model, objective, train_set, cfg)
            seconds = time.perf_counter() - t0
            r = evaluate_tokenizer(model.eval(), test_set, limit=test_size, fd_size=P.eval.fd_size)
        finally:
            quantizer.SoftVQ.forward = original
        scores = {"psnr": r["test_psnr"], "fd_effnet": r["fd_effnet"]}
    params = sum(p.numel() for p in model.parameters())
    return {"probe": name, "steps": steps, "images_per_s": steps * cfg.batch_size / seconds, "params": params, **scores}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--probes", nargs="+", default=list(PROBES), choices=list(PROBES))
    ap.add_argument("--test-size", type=int, default=1000)
    args = ap.parse_args()
    torch.manual_seed(0)
    P = resolve("base", "cpu")
    train_set, test_set = caches.load_data(P)
    print(f"| probe | steps of {P.training.batch_size} | images/s | parameters | PSNR (dB) | rFD-EffNet ↓ |\n"
          "|---|---|---|---|---|---|")
    for name in args.probes:
        r = probe(name, args.steps, train_set, test_set, args.test_size)
        print(f"| {name} | {r['steps']} | {r['images_per_s']:.0f} | {r['params'] / 1e6:.2f}M | {r['psnr']:.2f} | "
              f"{r['fd_effnet']:.1f} |", flush=True)
        print(json.dumps(r), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
