"""A pixel-space refiner after the decoder: image → image + CNN(image), trained with the encoder frozen.

Why it is there. At the workbook's small scales the tokenizer's code stays close to the principal components
it starts from (the linear path), and a generic non-linear function of those coefficients has little to
predict of what PCA misses (``benchmarks/decoder_headroom.py`` tests this with ridge regression on random
features of the coefficients). What a decoder *can* add is an image prior that a convolution learns fast —
edges look alike everywhere, so it learns to sharpen them: a small residual CNN reading the decoded image.
The decoder's own network path is not that (its conv head reads transformer features, never the decoded
image), and trained jointly with the encoder the refiner would chase an image that moves while the encoder
learns. So the refiner is trained in a stage of its own, after the tokenizer, with everything else frozen
(:func:`~sbt_lib.models.two_stage.refined_tokenizer`): ``z_global`` stays bit for bit what it was, exactly as
in two-stage aligner scaling, and a generator trained on it is reused as is.  ``benchmarks/tokenizer_quality.py``
adds a refine stage after each tokenizer it trains and a row for it: what the refiner adds is that row's PSNR above
the tokenizer's own, read against the seed spread.

Its last convolution starts at zero, so an untrained refiner is the identity and training starts at the
tokenizer's own reconstruction.  It sees only pixels decoded from the tokens, so the code stays 1D: the
only numbers that leave the encoder are still the global tokens.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import ResBlock


class PixelRefiner(nn.Module):
    """B×3×S×S → B×3×S×S: the image plus a residual predicted by ``blocks`` residual conv blocks of
    ``channels`` channels at full resolution (the identity until trained)."""

    def __init__(self, channels: int = 16, blocks: int = 3):
        super().__init__()
        if channels < 1 or blocks < 1:
            raise ValueError(f"PixelRefiner needs channels ≥ 1 and blocks ≥ 1, got {channels} and {blocks}")
        self.net = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), *[ResBlock(channels) for _ in range(blocks)],
                                 nn.GELU(), nn.Conv2d(channels, 3, 3, padding=1))
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)

    @property
    def last(self) -> nn.Conv2d:
        return self.net[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images + self.net(images)
