"""The tokenizer's configuration: every size and switch of :class:`~sbt_lib.models.tokenizer.SelfBootTok`.

The switches beside the paper's parts, with what each is for (the workbook's recipe, in
``sbt_lib.workbook.config.scales``, turns them on; ``benchmarks/tokenizer_quality.py`` compares them):

- ``trunk="conv"``: residual conv stages halve the image down to the token grid and mirror it in the
  decoder (GigaTok's hybrid CNN-transformer), in place of the 3×3 stem and patchify;
- ``keep_norm=True``: gain-shape SoftVQ, which keeps each token's length (see :mod:`sbt_lib.models.quantizer`);
  ``local_keep_norm=False`` with ``local_scale=s`` makes the local tokens unit-length codes times ``s`` instead.
  Why: the encoder's global tokens keep lengths far above one, and local tokens with lengths of their own shrink
  during training until the fused memory is ``z_global`` alone and the decoder ignores them; at a fixed length
  every group keeps its share of the fusion (notebook 02 measures what it costs and what the decoder reads);
- ``linear_path=True``: a fixed linear map pixels → ``z_global`` → pixels
  (:class:`~sbt_lib.models.tokenizer_parts.LinearPath`), set to the training set's principal components,
  beside the networks, whose last layers start at zero.  The tokenizer starts as the best linear code at its
  number of values and learns the non-linear rest;
- ``codebook_init="kmeans"``: every codebook starts at the k-means centroids of its group's tokens on training
  images (:meth:`~sbt_lib.models.tokenizer.SelfBootTok.init_codebooks`) instead of random directions, so
  quantization starts close to that linear code rather than far below it;
- ``refiner``: a pixel-space residual CNN after the decoder (:mod:`sbt_lib.models.refiner`), added to a trained
  tokenizer and trained with everything else frozen (the refine stage,
  :func:`~sbt_lib.workbook.pipeline.trainers.train_refiner`); it sees decoded pixels only.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import Config
from .aligners import ALIGNER_2D_PRESETS

GROUPS = ("global", "local_1d", "local_2d")
FUSIONS = ("residual", "concat")
DECODERS = ("cross", "self")
TRUNKS = ("patch", "conv")
CODEBOOK_INITS = ("random", "kmeans")


@dataclass
class TokenizerConfig(Config):
    """Every size and switch of the tokenizer.  ``num_tokens × token_dim`` is the bottleneck: the
    only numbers per image that leave the encoder (the local tokens are computed from them)."""

    image_size: int = 32
    patch_size: int = 4
    width: int = 192
    encoder_depth: int = 4
    decoder_depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_tokens: int = 32  # N, global tokens
    token_dim: int = 8  # d, of every group
    codebook_size: int = 1024  # per group
    codebook_init: str = "random"  # random | kmeans: centroids of training tokens (set by init_codebooks)
    tau: float = 0.07
    normalize_codes: bool = True
    conv_channels: int = 32  # channels of the conv stem / head (first conv stage); 0 = linear patch (un)embedding
    trunk: str = "patch"  # patch: a 3×3 conv stem, then patchify | conv: residual conv stages to the grid (GigaTok)
    linear_path: bool = False  # a linear pixels ↔ global-token path started at the principal components
    keep_norm: bool = False  # gain-shape SoftVQ: the codebook quantizes each token's direction, its length is kept
    local_keep_norm: bool | None = None  # local tokens keep their lengths (gain-shape); None = keep_norm; False = unit
    local_scale: float = 1.0  # the local tokens' factor after their codebooks (their length if local_keep_norm=False)
    token_mixing: bool = True  # learned linear read-in of patches into latents, and read-out into queries
    dense_path: bool = False  # a dense linear read-in of all patch features into ẑ_G, read-out of all token values
    encoder_init: str | None = None  # a pretrained ViT the encoder starts from (dinov2_b: the paper's), encoder_init.py
    residual_recovery: bool = False  # GloTok's residual recovery on z_global before decoding (models/residual.py)
    refiner: int = 0  # channels of a pixel-space refiner after the decoder (models/refiner.py); 0 = none
    local_1d: bool = False  # the local 1D aligner (Eq. 8)
    local_2d: str | None = None  # size preset of the local 2D aligner (Eq. 9), None = off
    num_local_tokens: int | None = None  # N_l, tokens of z_local_2d; None = num_tokens
    causal: bool = True  # the 2D aligner's local positions are causal; False = bidirectional ablation
    shared_codebook: bool = False  # one codebook for all groups (ablation) instead of one per group
    fusion: str = "residual"  # Eq. 11: residual | concat
    decoder: str = "cross"  # Eq. 10: cross (cross-attention) | self (self-attention over the concatenation)

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not a multiple of num_heads {self.num_heads}")
        for f in ("num_tokens", "token_dim", "codebook_size", "width", "encoder_depth", "decoder_depth"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be ≥ 1, got {getattr(self, f)}")
        if self.refiner < 0:
            raise ValueError(f"refiner is a number of channels (0 = no refiner), got {self.refiner}")
        if self.local_2d is not None and self.local_2d not in ALIGNER_2D_PRESETS:
            raise ValueError(f"unknown local_2d preset {self.local_2d!r}; valid: {list(ALIGNER_2D_PRESETS)} or None")
        if self.num_local_tokens is not None and self.num_local_tokens < 1:
            raise ValueError(f"num_local_tokens must be ≥ 1, got {self.num_local_tokens}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {self.fusion!r}; valid: {list(FUSIONS)}")
        if self.decoder not in DECODERS:
            raise ValueError(f"unknown decoder {self.decoder!r}; valid: {list(DECODERS)}")
        if self.codebook_init not in CODEBOOK_INITS:
            raise ValueError(f"unknown codebook_init {self.codebook_init!r}; valid: {list(CODEBOOK_INITS)}")
        if self.trunk not in TRUNKS:
            raise ValueError(f"unknown trunk {self.trunk!r}; valid: {list(TRUNKS)}")
        if self.trunk == "conv" and (self.patch_size & (self.patch_size - 1) or not self.conv_channels):
            raise ValueError(f"trunk='conv' halves the image once per stage: it needs a power-of-two patch_size "
                             f"(got {self.patch_size}) and conv_channels > 0 (got {self.conv_channels})")
        if self.linear_path and self.token_values > self.pixel_values:
            raise ValueError(f"linear_path needs at most as many token values ({self.token_values}) as pixel values "
                             f"({self.pixel_values})")

    @property
    def groups(self) -> tuple[str, ...]:
        """The token groups this model has, in order."""
        return ("global",) + ("local_1d",) * self.local_1d + ("local_2d",) * (self.local_2d is not None)

    @property
    def local_tokens(self) -> int:
        """N_l, the number of tokens in z_local_2d."""
        return self.num_local_tokens or self.num_tokens

    def num_group_tokens(self, group: str) -> int:
        return self.local_tokens if group == "local_2d" else self.num_tokens

    @property
    def memory_tokens(self) -> int:
        """Length of the decoder's memory: Fuse (N, or all groups under concat) plus z_L1, z_L2."""
        return sum(self.num_group_tokens(g) for g in self.groups)

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def token_values(self) -> int:
        """Numbers per image in the bottleneck, N·d."""
        return self.num_tokens * self.token_dim

    @property
    def pixel_values(self) -> int:
        return 3 * self.image_size**2
