"""The SelfBootTok tokenizer (paper §3.1-3.2, Eq. 1-3 and 8-11).

    image ─Enc─▶ ẑ_G ─SoftVQ_G─▶ z_global ─┬─────────────────────────────────────┐
                                          ├─ MLP (Eq. 8) ─▶ SoftVQ_L1 ─▶ z_local_1d ─┤
                                          └─ causal 2D aligner (Eq. 9) ─▶ SoftVQ_L2 ──┴─▶ z_local_2d
    {z_global, z_local_1d, z_local_2d} ─Fuse (Eq. 11)─▶ memory ─Dec (Eq. 10)─▶ image

- The **encoder** reads the image as patch tokens plus N learnable latent tokens under full
  self-attention and keeps only the latent outputs: the **global tokens** (B×N×d, Eq. 1).
- The **local tokens** are *bootstrapped* from the soft-quantized global tokens alone — the local
  1D aligner (an MLP, same N tokens) and the local 2D aligner (causal transformer, N_l tokens),
  both in :mod:`sbt_lib.models.aligners`.  A generator therefore only ever produces ``z_global``;
  :meth:`SelfBootTok.decode_from_global` does the rest.
- Every group is soft-quantized (Eq. 2-3) with **its own codebook**, or one shared codebook
  (``shared_codebook=True``, the ablation).
- **Fusion** (Eq. 11), ``fusion="residual"``: ``α z_G + β z_L1 + (1-α-β) z_L2`` with (α, β,
  1-α-β) = softmax of three learned logits (so they stay positive and sum to one; they start
  equal).  Token counts are matched along the token axis: z_L1 has N tokens by construction, and
  when N_l ≠ N a learned linear token-axis map (:class:`~sbt_lib.models.blocks.TokenMix`) takes z_L2
  from N_l to N tokens (identity when N_l = N, the default).  ``fusion="concat"``:
  ``[z_G; z_L1; z_L2]``, N + N + N_l tokens.
- The **decoder** (Eq. 10), ``decoder="cross"``: one query per output patch; every block has
  self-attention over the queries and cross-attention to the memory ``[Fuse; z_L1; z_L2]``.  With
  concatenation the fused tokens already *are* ``[z_G; z_L1; z_L2]``, so the memory is that
  (repeating z_L1 and z_L2 would add nothing).  ``decoder="self"`` is the SoftVQ/TiTok decoder:
  self-attention over the concatenation of queries and memory.  With the local parts off, the
  memory is ``z_global`` and the model is the SoftVQ-VAE baseline.

Two cheap additions make the 1D bottleneck train in minutes on a CPU (both switchable):

- **token mixing**: the latent tokens start as their learnable embedding *plus a learned linear
  mix of all patch tokens* (a token-axis linear map, as in MLP-Mixer), and the decoder's patch
  queries start as theirs plus a learned linear mix of the memory tokens.  At initialisation
  attention is nearly uniform, so every latent token would otherwise read the same average of the
  image and the bottleneck would carry almost nothing for the first few hundred steps.  The tokens
  stay 1D: the mix is dense over all patches, with no fixed token-to-region assignment.
- **conv stem / head**: a 3×3 convolution before the patch embedding and two after the
  un-patchify, which see across patch borders and smooth patch seams.

The workbook's recipe (``sbt_lib.workbook.scales``; measured in ``benchmarks/tokenizer_quality.py``) adds four more:

- ``trunk="conv"``: residual conv stages halve the image down to the token grid and mirror it in the
  decoder (GigaTok's hybrid CNN-transformer), in place of the 3×3 stem and patchify;
- ``keep_norm=True``: gain-shape SoftVQ, which keeps each token's length (see :mod:`sbt_lib.models.quantizer`);
  ``local_keep_norm=False`` with ``local_scale=s`` makes the local tokens unit-length codes times ``s`` instead.
  Why: the encoder's global tokens keep lengths far above one, and local tokens with lengths of their own shrink
  during training until the fused memory is ``z_global`` alone and the decoder ignores them; at a fixed length
  every group keeps its share of the fusion (notebook 02 measures what it costs and what the decoder reads);
- ``linear_path=True``: a fixed linear map pixels → ``z_global`` → pixels (:class:`LinearPath`), set to
  the training set's principal components, beside the networks, whose last layers start at zero.  The
  tokenizer starts as the best linear code at its number of values and learns the non-linear rest.
- ``codebook_init="kmeans"``: every codebook starts at the k-means centroids of its group's tokens on training
  images (:meth:`SelfBootTok.init_codebooks`) instead of random directions, so quantization starts close to
  that linear code rather than far below it: notebook 01's ``cpu`` tokenizer at initialisation reconstructs
  CIFAR-10's 2000 test images at 26.35 dB with k-means codebooks, 25.46 dB with random ones (PCA: 26.45 dB).

``refiner``: a pixel-space residual CNN after the decoder (:mod:`sbt_lib.models.refiner`), added to a trained
tokenizer and trained with everything else frozen (notebook 01's refine stage); it sees decoded pixels only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .aligners import ALIGNER_2D_PRESETS, LocalAligner1D, LocalAligner2D
from .blocks import CrossAttentionBlock, ResBlock, TokenMix, init_weights, num_params, self_attention_blocks
from ..config import Config
from .pretrained import HalfPrecisionHubMixin
from .residual import ResidualRecovery
from .quantizer import Quantized, SoftVQ
from .refiner import PixelRefiner

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
    conv_channels: int = 32  # channels of the conv stem / head (first conv stage); 0 = plain linear patch (un)embedding
    trunk: str = "patch"  # patch: a 3×3 conv stem, then patchify | conv: residual conv stages down to the grid (GigaTok)
    linear_path: bool = False  # a linear pixels ↔ global-token path started at the principal components
    keep_norm: bool = False  # gain-shape SoftVQ: the codebook quantizes each token's direction, its length is kept
    local_keep_norm: bool | None = None  # local tokens keep their lengths (gain-shape); None = keep_norm; False = unit
    local_scale: float = 1.0  # the local tokens' factor after their codebooks (their length, when local_keep_norm=False)
    token_mixing: bool = True  # learned linear read-in of patches into latents, and read-out into queries
    dense_path: bool = False  # a dense linear read-in of all patch features into ẑ_G, and read-out of all token values
    encoder_init: str | None = None  # a pretrained ViT the encoder starts from (dinov2_b: the paper's); see encoder_init.py
    residual_recovery: bool = False  # GloTok's residual recovery module on z_global before decoding (models/residual.py)
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


# ----------------------------------------------------------------------------- trunks


class PatchEmbed(nn.Module):
    """Image → B×L×width patch tokens; an optional 3×3 conv in front sees across patch borders."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        c, p = cfg.conv_channels, cfg.patch_size
        stem = [nn.Conv2d(3, c, 3, padding=1), nn.GELU()] if c else []
        self.net = nn.Sequential(*stem, nn.Conv2d(c or 3, cfg.width, p, stride=p))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).flatten(2).transpose(1, 2)


class PatchHead(nn.Module):
    """B×L×width → image; the optional conv after un-patchifying smooths patch seams."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        c, p = cfg.conv_channels, cfg.patch_size
        self.grid, self.p = cfg.grid, p
        self.to_pixels = nn.Linear(cfg.width, p * p * (c or 3))
        self.refine = (
            nn.Sequential(nn.GELU(), nn.Conv2d(c, c, 3, padding=1), nn.GELU(), nn.Conv2d(c, 3, 3, padding=1))
            if c
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.to_pixels(x).transpose(1, 2).reshape(len(x), -1, self.grid, self.grid)
        return self.refine(nn.functional.pixel_shuffle(x, self.p))


def _stage_channels(cfg: TokenizerConfig) -> list[int]:
    """Channels of the conv stages from full resolution down to the token grid (doubling per halving)."""
    return [cfg.conv_channels * 2**i for i in range(cfg.patch_size.bit_length())]


class ConvTrunk(nn.Module):
    """GigaTok's hybrid encoder trunk: residual conv stages halve the image down to the token grid
    (32×32 → 8×8 at patch_size 4), then a 1×1 conv to the transformer width.  Convolutions learn
    local image statistics far faster than a patchify layer, so the transformer starts from features."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        ch = _stage_channels(cfg)
        layers: list[nn.Module] = [nn.Conv2d(3, ch[0], 3, padding=1)]
        for c_in, c_out in zip(ch, ch[1:]):
            layers += [ResBlock(c_in), nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)]
        layers += [ResBlock(ch[-1]), nn.GELU(), nn.Conv2d(ch[-1], cfg.width, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).flatten(2).transpose(1, 2)


class ConvHead(nn.Module):
    """The mirror of :class:`ConvTrunk`: B×L×width on the token grid → residual conv stages that
    double the resolution → image."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        ch = _stage_channels(cfg)[::-1]
        self.grid = cfg.grid
        layers: list[nn.Module] = [nn.Conv2d(cfg.width, ch[0], 1), ResBlock(ch[0])]
        for c_in, c_out in zip(ch, ch[1:]):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1),
                       ResBlock(c_out)]
        layers += [nn.GELU(), nn.Conv2d(ch[-1], 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    @property
    def last(self) -> nn.Conv2d:
        return self.net[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.transpose(1, 2).reshape(len(x), -1, self.grid, self.grid))


class LinearPath(nn.Module):
    """A linear map from pixels to the global tokens (before SoftVQ) and from the global tokens back
    to pixels, beside the encoder and decoder networks, whose outputs it is added to.

    It is set (:meth:`fit`) to the training set's principal components, whitened (each
    coefficient divided by its standard deviation, so every token entry has unit variance), and kept
    fixed: with the networks' last layers starting at zero, the tokenizer starts as the best linear
    code at its number of values (PCA) and training learns only the non-linear rest.  Every token is
    a linear function of the whole image, so the code stays 1D: no token is tied to an image region.
    Until it is fitted it is a random orthonormal projection (seeded by torch's generator), so a
    tokenizer built without data still works; its checkpoint carries the fitted path.
    """

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.shape, self.tokens = (3, cfg.image_size, cfg.image_size), (cfg.num_tokens, cfg.token_dim)
        basis = torch.linalg.qr(torch.randn(cfg.pixel_values, cfg.token_values))[0]
        self.register_buffer("mean", torch.zeros(cfg.pixel_values))
        self.register_buffer("basis", basis)
        self.register_buffer("std", torch.full((cfg.token_values,), 0.5))

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> "LinearPath":
        """Principal components of ``images`` (B×3×S×S, the training set or an even subset of it)."""
        from .pca import PCA

        pca = PCA.fit(images, self.basis.shape[1])
        for name in ("mean", "basis", "std"):
            getattr(self, name).copy_(getattr(pca, name))
        return self

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """B×3×S×S → B×N×d whitened principal-component coefficients."""
        coef = (images.flatten(1).float() - self.mean) @ self.basis / self.std
        return coef.view(len(images), *self.tokens)

    def decode(self, z_global: torch.Tensor) -> torch.Tensor:
        """B×N×d → B×3×S×S."""
        x = (z_global.flatten(1).float() * self.std) @ self.basis.T + self.mean
        return x.view(len(x), *self.shape)


# ----------------------------------------------------------------------------- encoder


class Encoder(nn.Module):
    """Patches + N learnable latent tokens → full self-attention → the latent outputs, B×N×d."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.patch_embed = ConvTrunk(cfg) if cfg.trunk == "conv" else PatchEmbed(cfg)
        self.patch_pos = nn.Parameter(0.02 * torch.randn(1, cfg.grid**2, cfg.width))
        self.latents = nn.Parameter(0.02 * torch.randn(1, cfg.num_tokens, cfg.width))
        self.read_in = TokenMix(cfg.grid**2, cfg.num_tokens) if cfg.token_mixing else None
        self.blocks = self_attention_blocks(cfg.width, cfg.encoder_depth, cfg.num_heads, cfg.mlp_ratio)
        self.norm = nn.LayerNorm(cfg.width)
        self.to_tokens = nn.Linear(cfg.width, cfg.token_dim)
        self.tokens = (cfg.num_tokens, cfg.token_dim)
        self.dense = nn.Linear(cfg.grid**2 * cfg.width, cfg.token_values) if cfg.dense_path else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        dense = self.dense(x.flatten(1)).view(len(x), *self.tokens) if self.dense is not None else 0
        x = x + self.patch_pos
        latents = self.latents.expand(len(x), -1, -1)
        if self.read_in is not None:
            latents = latents + self.read_in(x)
        x = torch.cat([x, latents], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.to_tokens(self.norm(x[:, -self.latents.shape[1] :])) + dense


# ----------------------------------------------------------------------------- decoder


class Fusion(nn.Module):
    """Eq. 11: the groups' tokens → the fused tokens (see the module docstring)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.groups, self.mode = cfg.groups, cfg.fusion
        residual = self.mode == "residual"
        self.logits = nn.Parameter(torch.zeros(len(self.groups))) if residual and len(self.groups) > 1 else None
        mismatch = residual and "local_2d" in self.groups and cfg.local_tokens != cfg.num_tokens
        self.match_2d = TokenMix(cfg.local_tokens, cfg.num_tokens) if mismatch else None

    def weights(self) -> dict[str, float]:
        """The residual weights (α, β, 1-α-β) by group; empty under concatenation."""
        if self.mode == "concat":
            return {}
        if self.logits is None:
            return {"global": 1.0}
        return dict(zip(self.groups, self.logits.detach().softmax(0).tolist()))

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.mode == "concat":
            return torch.cat([tokens[g] for g in self.groups], 1)
        if self.logits is None:
            return tokens["global"]
        w = self.logits.softmax(0)
        parts = [tokens[g] for g in self.groups]
        if self.match_2d is not None:
            parts[-1] = self.match_2d(parts[-1])
        return sum(wi * p for wi, p in zip(w, parts))

    def memory(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the decoder attends to: ``[Fuse; z_L1; z_L2]`` (concat: ``[z_G; z_L1; z_L2]``)."""
        fused = self(tokens)
        if self.mode == "concat":
            return fused
        return torch.cat([fused] + [tokens[g] for g in self.groups[1:]], 1)


class Decoder(nn.Module):
    """Memory tokens B×M×d → image.  One query per output patch; ``cross``: every block
    self-attends over the queries and cross-attends to the memory (Eq. 10); ``self``: the blocks
    self-attend over ``[queries | memory]`` (TiTok / SoftVQ-VAE)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        m, n_queries = cfg.memory_tokens, cfg.grid**2
        self.cross = cfg.decoder == "cross"
        self.from_tokens = nn.Linear(cfg.token_dim, cfg.width)
        self.token_pos = nn.Parameter(0.02 * torch.randn(1, m, cfg.width))
        self.queries = nn.Parameter(0.02 * torch.randn(1, n_queries, cfg.width))
        self.read_out = TokenMix(m, n_queries) if cfg.token_mixing else None
        self.dense = nn.Linear(m * cfg.token_dim, n_queries * cfg.width) if cfg.dense_path else None
        self.blocks = (
            nn.ModuleList(CrossAttentionBlock(cfg.width, cfg.num_heads, cfg.mlp_ratio)
                          for _ in range(cfg.decoder_depth))
            if self.cross
            else self_attention_blocks(cfg.width, cfg.decoder_depth, cfg.num_heads, cfg.mlp_ratio)
        )
        self.norm = nn.LayerNorm(cfg.width)
        self.head = ConvHead(cfg) if cfg.trunk == "conv" else PatchHead(cfg)

    def forward(self, memory: torch.Tensor) -> torch.Tensor:
        tokens = self.from_tokens(memory)
        x = self.queries.expand(len(tokens), -1, -1)
        if self.read_out is not None:
            x = x + self.read_out(tokens)
        if self.dense is not None:
            x = x + self.dense(memory.flatten(1)).view_as(x)
        tokens = tokens + self.token_pos
        if self.cross:
            for block in self.blocks:
                x = block(x, tokens)
        else:
            x = torch.cat([x, tokens], 1)
            for block in self.blocks:
                x = block(x)
            x = x[:, : self.queries.shape[1]]
        return self.head(self.norm(x))


# ----------------------------------------------------------------------------- model


@dataclass
class Encoding:
    """The tokens of a batch of images by group (soft-quantized), with their soft code assignments.

    ``unquantized`` holds each group's tokens before SoftVQ (what alignment losses read)."""

    tokens: dict[str, torch.Tensor]  # group → B×n×d
    probs: dict[str, torch.Tensor] = field(default_factory=dict)  # group → B×n×K
    unquantized: dict[str, torch.Tensor] = field(default_factory=dict)
    entropy_loss: torch.Tensor | float = 0.0  # summed over groups

    @property
    def z_global(self) -> torch.Tensor:
        return self.tokens["global"]

    @property
    def z_local_1d(self) -> torch.Tensor | None:
        return self.tokens.get("local_1d")

    @property
    def z_local_2d(self) -> torch.Tensor | None:
        return self.tokens.get("local_2d")


class SelfBootTok(nn.Module, HalfPrecisionHubMixin, library_name="sbt-lib", tags=["image-tokenizer", "selfboottok"],
                  paper_url="https://arxiv.org/abs/2606.05552"):
    """The tokenizer.  With its local parts switched off it is the SoftVQ-VAE baseline.

    ``save_pretrained(folder)`` writes its config and float16 weights; ``SelfBootTok.from_pretrained(folder
    or Hub id)`` reads them back (:mod:`~sbt_lib.models.pretrained`)."""

    def __init__(self, cfg: TokenizerConfig | dict | None = None, **overrides):
        super().__init__()
        cfg = cfg.to_dict() if isinstance(cfg, TokenizerConfig) else dict(cfg or {})
        self.cfg = c = TokenizerConfig.from_dict({**cfg, **overrides})
        self._hub_mixin_config = {"cfg": c.to_dict()}  # config.json: the resolved config, whatever was passed
        self.encoder = Encoder(c)
        self.aligner_1d = LocalAligner1D(c.token_dim) if c.local_1d else None
        self.aligner_2d = (
            LocalAligner2D.from_preset(c.local_2d, c.token_dim, c.local_tokens, causal=c.causal,
                                       num_global_tokens=c.num_tokens)
            if c.local_2d
            else None
        )
        self._local_keep_norm = local_keep = c.keep_norm if c.local_keep_norm is None else c.local_keep_norm
        make = lambda keep: SoftVQ(c.token_dim, c.codebook_size, c.tau, c.normalize_codes, keep)  # noqa: E731
        self.quantizers = nn.ModuleDict({"shared": make(c.keep_norm)} if c.shared_codebook else
                                        {g: make(c.keep_norm if g == "global" else local_keep) for g in c.groups})
        self.fusion = Fusion(c)
        self.decoder = Decoder(c)
        self.linear_path = LinearPath(c) if c.linear_path else None
        self.residual = ResidualRecovery(c.token_dim) if c.residual_recovery else None
        self.refiner = PixelRefiner(c.refiner) if c.refiner else None
        self.apply(init_weights)
        if self.residual is not None:
            self.residual.init_identity()
        if self.linear_path is not None:  # start as the linear path alone: the networks add to it from zero
            for layer in (self.encoder.to_tokens, self.last_layer_module):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def fit_linear_path(self, images: torch.Tensor) -> "SelfBootTok":
        """Set the linear path to the principal components of ``images`` (training images, B×3×S×S)."""
        if self.linear_path is None:
            raise ValueError("this tokenizer has no linear path (build it with linear_path=True)")
        self.check_images(images)
        self.linear_path.fit(images.to(self.linear_path.basis.device))
        return self

    @torch.no_grad()
    def init_codebooks(self, images: torch.Tensor, generator: torch.Generator | None = None,
                       iters: int = 10) -> "SelfBootTok":
        """Start every codebook at the k-means centroids of its group's unquantized tokens on ``images``
        (training images, B×3×S×S; B × tokens per image ≥ codebook_size).  The global codebook comes first,
        since the local tokens are computed from the quantized global ones; a shared codebook is fitted to
        every group's tokens together.  Seeded by ``generator``."""
        self.check_images(images)
        was_training = self.training
        self.eval()
        z_hat = self.linear_path.encode(images) if self.linear_path is not None else 0
        head = self.encoder.to_tokens
        if self.linear_path is None or head.weight.any() or head.bias.any():  # else the network adds exactly 0
            z_hat = z_hat + torch.cat([self.encoder(chunk) for chunk in images.split(256)])
        self.quantizer("global").init_codebook(z_hat, generator, iters)
        enc = self.bootstrap(self.quantizer("global")(z_hat).z)
        enc.unquantized["global"] = z_hat
        if self.cfg.shared_codebook:
            pooled = torch.cat([t.flatten(0, 1) for t in enc.unquantized.values()])
            self.quantizer("global").init_codebook(pooled, generator, iters)
        else:
            for group in self.cfg.groups[1:]:
                self.quantizer(group).init_codebook(enc.unquantized[group], generator, iters)
        self.train(was_training)
        return self

    def quantizer(self, group: str) -> SoftVQ:
        """The codebook of ``group`` (the shared one when ``shared_codebook``)."""
        return self.quantizers["shared" if self.cfg.shared_codebook else group]

    def check_images(self, images: torch.Tensor) -> None:
        """Raise a clear error for a batch that is not B×3×S×S at this model's size."""
        s = self.cfg.image_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (s, s):
            raise ValueError(
                f"expected images of shape B×3×{s}×{s} in [-1, 1], got {tuple(images.shape)}; "
                f"resize the images (the data loaders take image_size / resize=True) "
                f"or build the tokenizer with image_size={images.shape[-1]}"
            )

    def check_global(self, z_global: torch.Tensor) -> None:
        n, d = self.cfg.num_tokens, self.cfg.token_dim
        if not isinstance(z_global, torch.Tensor) or z_global.ndim != 3 or z_global.shape[-2:] != (n, d):
            got = tuple(z_global.shape) if isinstance(z_global, torch.Tensor) else type(z_global).__name__
            raise ValueError(f"expected global tokens of shape B×{n}×{d}, got {got}")

    def _encode_global(self, images: torch.Tensor) -> tuple[torch.Tensor, Quantized]:
        self.check_images(images)
        z_hat = self.encoder(images)
        if self.linear_path is not None:
            z_hat = z_hat + self.linear_path.encode(images)
        return z_hat, self.quantizer("global")(z_hat)

    def encode_global(self, images: torch.Tensor) -> torch.Tensor:
        """Images → ``z_global`` (soft-quantized), the only tokens a generator produces: the encoder and
        the global codebook alone, so it is what stays fixed when stage 2 grows the 2D aligner."""
        return self._encode_global(images)[1].z

    def encode(self, images: torch.Tensor) -> Encoding:
        """Images → every group's tokens: global tokens from the encoder, local ones bootstrapped."""
        z_hat, q = self._encode_global(images)
        enc = self.bootstrap(q.z)
        enc.probs["global"], enc.unquantized["global"] = q.probs, z_hat
        enc.entropy_loss = enc.entropy_loss + q.entropy_loss
        return enc

    def bootstrap(self, z_global: torch.Tensor) -> Encoding:
        """Eq. 8-9: the local tokens predicted from (soft-quantized) global tokens alone, each group
        soft-quantized with its codebook.  This is all a generator's ``z_global`` needs."""
        self.check_global(z_global)
        enc = Encoding(tokens={"global": z_global})
        for group, aligner in (("local_1d", self.aligner_1d), ("local_2d", self.aligner_2d)):
            if aligner is None:
                continue
            z_hat = aligner(z_global)
            q = self.quantizer(group)(z_hat)
            z = q.z if self._local_keep_norm else torch.nn.functional.normalize(q.z, dim=-1)
            enc.tokens[group], enc.probs[group], enc.unquantized[group] = z * self.cfg.local_scale, q.probs, z_hat
            enc.entropy_loss = enc.entropy_loss + q.entropy_loss
        return enc

    def decode(self, enc: Encoding | dict, scales: dict[str, float] | None = None) -> torch.Tensor:
        """Render images (B×3×S×S, unclamped) from every group's tokens (an :class:`Encoding` or a
        group → tokens dict).  ``scales`` multiplies groups before fusion (1 = as is, 0 = removed),
        for exploring what each group carries.  From global tokens alone use :meth:`decode_from_global`."""
        tokens = enc.tokens if isinstance(enc, Encoding) else enc
        if not isinstance(tokens, dict):
            raise TypeError("decode takes an Encoding or a dict of group tokens; "
                            "for a tensor of global tokens call decode_from_global(z_global)")
        missing = [g for g in self.cfg.groups if g not in tokens]
        if missing:
            raise ValueError(f"decode needs the groups {list(self.cfg.groups)}; missing {missing}")
        scales = scales or {}
        unknown = sorted(set(scales) - set(self.cfg.groups))
        if unknown:
            raise ValueError(f"unknown group(s) {unknown} in scales; this model has {list(self.cfg.groups)}")
        tokens = {g: tokens[g] * scales.get(g, 1.0) for g in self.cfg.groups}
        if self.residual is not None:  # GloTok: what quantization took from z_global, predicted and added back
            tokens["global"] = self.residual(tokens["global"])
        images = self.decoder(self.fusion.memory(tokens))
        if self.linear_path is not None:
            images = images + self.linear_path.decode(tokens["global"])
        if self.refiner is not None:  # trained after the tokenizer, the rest frozen (two_stage.refined_tokenizer)
            images = self.refiner(images)
        return images

    def decode_from_global(self, z_global: torch.Tensor) -> torch.Tensor:
        """The generator's path: bootstrap the local tokens from ``z_global`` and decode."""
        return self.decode(self.bootstrap(z_global))

    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, Encoding]:
        """Encode and decode; returns the reconstruction and the encoding."""
        enc = self.encode(images)
        return self.decode(enc), enc

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, Encoding]:
        return self.reconstruct(images)

    @property
    def last_layer_module(self) -> nn.Module:
        """The decoder network's layer that outputs pixels."""
        head = self.decoder.head
        if isinstance(head, ConvHead):
            return head.last
        return head.refine[-1] if isinstance(head.refine, nn.Sequential) else head.to_pixels

    @property
    def last_layer(self) -> torch.Tensor:
        """The weight of the layer that outputs the reconstruction (VQGAN's adaptive GAN weight
        balances gradients there)."""
        return self.last_layer_module.weight

    def num_params(self) -> dict[str, int]:
        """Parameter counts by part (parts that are switched off count 0)."""
        parts = ("encoder", "aligner_1d", "aligner_2d", "quantizers", "fusion", "residual", "decoder", "refiner")
        return {**{p: num_params(getattr(self, p)) for p in parts}, "total": num_params(self)}
