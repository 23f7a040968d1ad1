"""A small StyleGAN2-like discriminator: one real/fake logit per image (the critic of ``L_adv``).

The paper trains its discriminator "similar to SoftVQ, using a StyleGAN-like architecture"; this
is that architecture (Karras et al. 2020, the residual discriminator of StyleGAN2), sized for the
16-256 px images of this workbook::

    image ─from-RGB 1×1─▶ ┌ DownBlock ┐ × log2(S/4) ─▶ minibatch-std ─▶ 3×3 conv ─▶ linear ─▶ linear ─▶ logit
                          │ 3×3 conv, lrelu ─▶ blur↓2 ─▶ 3×3 conv, lrelu ─┐
                          │ blur↓2 ─▶ 1×1 conv ────────────────────────── + ─▶ ×1/√2
                          └─────────────────────────────────────────────────┘

- Width doubles each time the resolution halves: ``channels`` at the input resolution, capped at
  ``max_channels``.  The blocks stop at 4×4.
- **Blur ↓2** is StyleGAN2's anti-aliased downsampling: the separable [1, 3, 3, 1] low-pass filter
  and stride 2, as one depthwise convolution (``blur=False``: a 2×2 average pool).
- **Minibatch standard deviation** appends one channel holding the spread of the features over
  groups of up to 4 images, which lets the discriminator see a lack of variety.  So a logit
  depends on the other images of its group: score real and fake images in *separate* calls.
- **No equalised learning rate**: plain ``nn.Conv2d`` / ``nn.Linear``, initialised as StyleGAN's
  equalised layers are at step 0 — He-normal for leaky ReLU (gain 1 for the skip and output
  layers), zero biases — so activations keep their scale through the blocks and the logits start
  at O(0.1) rather than O(1e-4) (PyTorch's default initialisation shrinks them layer by layer, and
  the discriminator then learns several times slower).  The runtime weight scaling itself is left
  out: it is one less thing to explain, and AdamW's step does not depend on a weight's scale.

The default width (8 channels at the input resolution, 8→16→32→64 at 32 px) keeps it cheap next
to the tokenizer (:func:`sbt_lib.eval.flops.flops_by_module` counts both).  Every block costs the same
(width² × area is constant), so the cost grows with ``channels²`` and with the number of blocks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NEGATIVE_SLOPE = 0.2
MIN_RESOLUTION = 4


def check_image_size(image_size: int) -> None:
    """A power of two, at least 8 (the blocks halve the resolution down to 4×4)."""
    if not isinstance(image_size, int) or image_size < 2 * MIN_RESOLUTION or image_size & (image_size - 1):
        raise ValueError(
            f"Discriminator image_size must be a power of two ≥ {2 * MIN_RESOLUTION} (e.g. 16, 32, 64, 128, 256), "
            f"got {image_size!r}; resize or crop the images to such a size"
        )


def _init(m: nn.Module) -> None:
    """He-normal for a layer followed by leaky ReLU; zero bias."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(m.weight, a=NEGATIVE_SLOPE, nonlinearity="leaky_relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class BlurDownsample(nn.Module):
    """Halve the resolution: a [1, 3, 3, 1] ⊗ [1, 3, 3, 1] low-pass filter with stride 2 (depthwise),
    or a 2×2 average pool when ``blur=False``."""

    def __init__(self, blur: bool = True):
        super().__init__()
        k = torch.tensor([1.0, 3.0, 3.0, 1.0])
        self.register_buffer("kernel", (k[:, None] * k[None, :] / k.sum() ** 2)[None, None], persistent=False)
        self.blur = blur

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.blur:
            return F.avg_pool2d(x, 2)
        c = x.shape[1]
        return F.conv2d(x, self.kernel.to(x.dtype).expand(c, 1, 4, 4), stride=2, padding=1, groups=c)


class DownBlock(nn.Module):
    """StyleGAN2's residual discriminator block: C_in × S × S → C_out × S/2 × S/2."""

    def __init__(self, in_channels: int, out_channels: int, blur: bool = True):
        super().__init__()
        self.conv0 = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.down = BlurDownsample(blur)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv0(x), NEGATIVE_SLOPE)
        h = F.leaky_relu(self.conv1(self.down(h)), NEGATIVE_SLOPE)
        return (h + self.skip(self.down(x))) / math.sqrt(2)


class MinibatchStd(nn.Module):
    """Append one channel: the standard deviation of each feature over a group of images, averaged
    over features and positions (StyleGAN2's layer with one feature group).

    The group is the largest divisor of the batch size that is ≤ ``group_size``, so any batch size
    works (a batch of one has a zero spread)."""

    def __init__(self, group_size: int = 4):
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = next(d for d in range(min(self.group_size, b), 0, -1) if b % d == 0)
        y = x.float().reshape(g, b // g, c, h, w)
        y = (y.var(0, unbiased=False) + 1e-8).sqrt().mean((1, 2, 3))  # (b // g,)
        y = y.to(x.dtype).repeat(g)[:, None, None, None].expand(b, 1, h, w)
        return torch.cat([x, y], 1)


class Discriminator(nn.Module):
    """Images B×3×S×S in [-1, 1] → logits of shape (B,); higher means "looks real".

    ``channels`` is the width at the input resolution; it doubles as the resolution halves, up to
    ``max_channels``.  ``group_size`` is the minibatch-std group; ``blur`` picks the downsampling
    filter (see the module docstring).
    """

    def __init__(self, image_size: int = 32, channels: int = 8, max_channels: int = 128, group_size: int = 4,
                 blur: bool = True):
        super().__init__()
        check_image_size(image_size)
        if channels < 1 or max_channels < 1:
            raise ValueError(f"channels and max_channels must be ≥ 1, got {channels} and {max_channels}")
        self.image_size = image_size
        n_blocks = int(math.log2(image_size // MIN_RESOLUTION))
        widths = [min(channels * 2**i, max_channels) for i in range(n_blocks + 1)]
        self.from_rgb = nn.Conv2d(3, widths[0], 1)
        self.blocks = nn.ModuleList(DownBlock(widths[i], widths[i + 1], blur) for i in range(n_blocks))
        c = widths[-1]
        self.mbstd = MinibatchStd(group_size)
        self.conv = nn.Conv2d(c + 1, c, 3, padding=1)
        self.fc = nn.Linear(c * MIN_RESOLUTION**2, c)
        self.out = nn.Linear(c, 1)
        self.apply(_init)
        for block in self.blocks:
            nn.init.kaiming_normal_(block.skip.weight, nonlinearity="linear")
        nn.init.kaiming_normal_(self.out.weight, nonlinearity="linear")

    def check_images(self, images: torch.Tensor) -> None:
        want = (3, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(
                f"Discriminator(image_size={self.image_size}) expects images of shape B×3×{self.image_size}×"
                f"{self.image_size}, got {tuple(images.shape)}; build it with the image size you train at "
                f"(Discriminator(image_size=...)) or resize the images"
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.check_images(images)
        x = F.leaky_relu(self.from_rgb(images), NEGATIVE_SLOPE)
        for block in self.blocks:
            x = block(x)
        x = F.leaky_relu(self.conv(self.mbstd(x)), NEGATIVE_SLOPE)
        x = F.leaky_relu(self.fc(x.flatten(1)), NEGATIVE_SLOPE)
        return self.out(x).squeeze(1)
