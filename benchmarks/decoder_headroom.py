"""How much can a *decoder* add on top of the code the workbook's tokenizer starts from (PCA)?

Notebook 02's variants (G, G+L1, G+L1+L2, ...) differ only on the decoder side: the local tokens are computed
from the global ones, so they add no information, only a learned path to the decoder.  This benchmark measures
the room such a path has, on CIFAR-10 at 256 values per 32×32 image (2000 evenly spaced test images):

1. **random features**: ridge regression of what PCA misses (the residual image) on random ReLU features
   of the 256 whitened PCA coefficients: what a generic non-linear function of the code adds;
2. **CNN on the PCA image**: a small residual CNN that reads the PCA reconstruction and predicts the residual,
   trained for ``--seconds``: a convolution's translation-invariant prior (edges look alike everywhere);
3. **CNN on the tokenizer's image** (``--tokenizer``, a run folder such as notebook 01's): the same CNN on
   a trained tokenizer's reconstructions, the tokenizer frozen: decoder refinement after training.

Usage: SBT_DATA=../shared/data python benchmarks/decoder_headroom.py [--tokenizer runs/cpu/01_decomposition]
           [--seconds 150] [--train-images 10000]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from sbt_lib.batch import map_batches
from sbt_lib.data.datasets import load_dataset
from sbt_lib.eval.metrics import psnr
from sbt_lib.models.pca import PCA
from sbt_lib.models.blocks import ResBlock
from sbt_lib.workbook.pipeline.runs import load_tokenizer


def refiner(channels: int = 32, blocks: int = 3) -> nn.Module:
    """image → residual image; the last conv starts at zero, so training starts at its input."""
    net = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), *[ResBlock(channels) for _ in range(blocks)],
                        nn.GELU(), nn.Conv2d(channels, 3, 3, padding=1))
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


def score(pred: torch.Tensor, target: torch.Tensor) -> float:
    return psnr(pred.clamp(-1, 1), target).mean().item()


def random_features_gain(pca: PCA, x_train, x_test, features=(1024, 4096), ridge=(1e1, 1e2, 1e3)) -> dict:
    """PSNR gain over the PCA decode of the best ridge fit of the residual on random ReLU features."""
    g = torch.Generator().manual_seed(0)
    c_tr, c_te = pca.encode(x_train).flatten(1), pca.encode(x_test).flatten(1)
    r_tr = (x_train - pca.decode(c_tr)).flatten(1).double()
    base = score(pca.decode(c_te), x_test)
    out = {}
    for f in features:
        w, b = torch.randn(c_tr.shape[1], f, generator=g) / c_tr.shape[1] ** 0.5, 0.5 * torch.randn(f, generator=g)
        phi_tr, phi_te = (torch.relu(c @ w + b).double() for c in (c_tr, c_te))
        gram, rhs = phi_tr.T @ phi_tr, phi_tr.T @ r_tr
        for lam in ridge:
            coef = torch.linalg.solve(gram + lam * torch.eye(f, dtype=torch.double), rhs)
            pred = pca.decode(c_te) + (phi_te @ coef).float().view_as(x_test)
            out[(f, lam)] = score(pred, x_test) - base
    return out


def train_refiner(inputs_train, x_train, inputs_test, x_test, seconds: float, batch: int = 64) -> list[tuple]:
    """Train :func:`refiner` on (input image → target image) pairs for ``seconds``; (seconds, steps, gain) every 30 s."""
    torch.manual_seed(0)
    net = refiner()
    opt = torch.optim.AdamW(net.parameters(), 2e-3, betas=(0.9, 0.99))
    base = score(inputs_test, x_test)
    curve, step, t0, next_eval = [], 0, time.perf_counter(), 30.0
    while (elapsed := time.perf_counter() - t0) < seconds:
        i = torch.randint(0, len(x_train), (batch,))
        loss = ((inputs_train[i] + net(inputs_train[i]) - x_train[i]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if elapsed >= next_eval or time.perf_counter() - t0 >= seconds:
            next_eval += 30.0
            with torch.no_grad():
                curve.append((time.perf_counter() - t0, step, score(inputs_test + map_batches(net, inputs_test), x_test) - base))
            print(f"  {curve[-1][0]:.0f} s, step {step}: {curve[-1][2]:+.3f} dB", flush=True)
    return curve


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", help="a trained tokenizer's run folder (e.g. runs/cpu/01_decomposition)")
    ap.add_argument("--seconds", type=float, default=150.0, help="training time of each CNN")
    ap.add_argument("--train-images", type=int, default=10_000, help="training images (evenly spaced)")
    ap.add_argument("--test-images", type=int, default=2000)
    args = ap.parse_args()

    train, test = load_dataset("cifar10", "train"), load_dataset("cifar10", "test")
    pick = lambda d, n: d.images_at(torch.linspace(0, len(d) - 1, min(n, len(d))).round().long())  # noqa: E731
    x_train, x_test = pick(train, args.train_images), pick(test, args.test_images)
    pca = PCA.fit(x_train, 256)
    pca_train, pca_test = pca.decode(pca.encode(x_train)), pca.decode(pca.encode(x_test))
    rows = [("PCA, 256 components", score(pca_test, x_test), "–", "–")]

    print("random features …", flush=True)
    rf = random_features_gain(pca, x_train[:5000], x_test)
    (f, lam), gain = max(rf.items(), key=lambda kv: kv[1])
    rows.append((f"+ ridge on random ReLU features (best of {len(rf)}: {f} features, λ {lam:g})", rows[0][1] + gain,
                 f"{gain:+.3f}", f"closed form, {len(x_train[:5000])} training images"))

    print("CNN on the PCA image …", flush=True)
    curve = train_refiner(pca_train, x_train, pca_test, x_test, args.seconds)
    rows.append(("+ CNN on the PCA image", rows[0][1] + curve[-1][2], f"{curve[-1][2]:+.3f}",
                 f"{curve[-1][0]:.0f} s, {curve[-1][1]} steps of 64"))

    if args.tokenizer:
        model = load_tokenizer(Path(args.tokenizer)).eval()
        print("reconstructing with the tokenizer …", flush=True)
        with torch.no_grad():
            rec_train, rec_test = (map_batches(lambda x: model(x)[0], x) for x in (x_train, x_test))
        rows.append((f"tokenizer ({args.tokenizer})", score(rec_test, x_test), "–", "–"))
        print("CNN on the tokenizer's image …", flush=True)
        curve = train_refiner(rec_train, x_train, rec_test, x_test, args.seconds)
        rows.append(("+ CNN on the tokenizer's image (tokenizer frozen)", rows[-1][1] + curve[-1][2],
                     f"{curve[-1][2]:+.3f}", f"{curve[-1][0]:.0f} s, {curve[-1][1]} steps of 64"))

    print(f"\n## decoder headroom on CIFAR-10: 256 values per image, {len(x_test)} test images, "
          f"{len(x_train)} training images\n")
    print("| code and decoder | PSNR (dB) | gain over the row it refines | training |\n|---|---|---|---|")
    for name, p, gain, cost in rows:
        print(f"| {name} | {p:.2f} | {gain} | {cost} |")


if __name__ == "__main__":
    main()
