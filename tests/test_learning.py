"""A guard against a tokenizer that learns nothing: at ``tiny`` on ``shapes``, a short training run of the
recipe that notebooks 04-06 train from scratch (conv trunk, gain-shape SoftVQ, linear path) must beat the mean-colour predictor (every pixel = the image's mean colour) by a clear margin.

Measured when the guard was set (20 steps, 64 held-out images; mean colour: 17.77 dB):

| tokenizer | held-out PSNR | over mean colour |
|---|---|---|
| the recipe (conv trunk, gain-shape SoftVQ, linear path) | 20.65 dB | +2.88 dB |
| the previous recipe (patch stem, unit-norm SoftVQ, no linear path) | 16.19 dB | -1.58 dB |
| the recipe with a collapsed codebook (one codeword) | 14.96 dB | -2.81 dB |

So a margin of 1.5 dB separates a working tokenizer from one that has fallen back to flat colour
patches, and the controls below check that it still does.

Since the recipe starts its codebooks at the k-means centroids of the training tokens, it starts at 20.92 dB,
next to PCA at the same number of values (20.95 dB), and 20 steps add 0.01 dB (20.93; 100 steps: 20.94).
Whether training learns at all is therefore checked from random codewords, which start 0.4 dB lower
(20.51 dB) and gain 0.14 dB in the same 20 steps.
"""
import pytest
import torch

from sbt_lib.eval.metrics import psnr
from sbt_lib.eval.reconstruction import evaluate_tokenizer, held_out_images
from sbt_lib.workbook.config.params import resolve
from sbt_lib.workbook.pipeline import caches, trainers

MARGIN_DB = 1.5


@pytest.fixture(scope="module")
def tiny_data():
    # the base recipe with a fixed linear path, MSE only: a tokenizer that starts at PCA (a learned code from scratch
    # needs far more than a test's steps to pass the mean colour; notebook 01 shows the budget)
    params = resolve("base", "tiny", linear_path=True, perceptual_weight=0.0, adv_weight=0.0, ema=0.0)
    return params, *caches.load_data(params)


def mean_colour_psnr(images: torch.Tensor) -> float:
    return psnr(images.mean((2, 3), keepdim=True).expand_as(images), images).mean().item()


def trained_psnr(params, train_set, test_set, out) -> tuple[float, float]:
    """Held-out PSNR of the tokenizer of ``params`` before and after its training run."""
    start = evaluate_tokenizer(trainers.build_tokenizer(params, train_set), test_set)["test_psnr"]
    result = trainers.train_tokenizer(params, train_set, test_set, out, progress=False, evaluate=False)
    return start, evaluate_tokenizer(result.model, test_set)["test_psnr"]


def test_the_tiny_tokenizer_learns_more_than_the_mean_colour(tiny_data, tmp_path):
    params, train_set, test_set = tiny_data
    floor = mean_colour_psnr(held_out_images(test_set))
    start, trained = trained_psnr(params, train_set, test_set, tmp_path)
    assert trained > floor + MARGIN_DB, f"{trained:.2f} dB vs mean colour {floor:.2f} dB"
    assert trained > start - 0.01, f"training lost its start: {start:.2f} → {trained:.2f} dB"


def test_the_tiny_tokenizer_learns_its_codebooks_from_random_codewords(tiny_data, tmp_path):
    params, train_set, test_set = tiny_data
    start, trained = trained_psnr(params.replace(codebook_init="random"), train_set, test_set, tmp_path)
    assert trained > start + 0.05, f"training did not improve on its start: {start:.2f} → {trained:.2f} dB"


@pytest.mark.parametrize("broken", [
    dict(trunk="patch", linear_path=False, keep_norm=False, tau=0.07),  # the recipe before the guard
    dict(codebook_size=1),  # a collapsed codebook: every token's direction is the same
])
def test_the_guard_fails_a_tokenizer_that_learns_flat_colour(tiny_data, tmp_path, broken):
    params, train_set, test_set = tiny_data
    floor = mean_colour_psnr(held_out_images(test_set))
    _, trained = trained_psnr(params.replace(**broken), train_set, test_set, tmp_path)
    assert trained < floor + MARGIN_DB
