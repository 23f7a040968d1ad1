"""The SelfBootTok tokenizer: ViT encoder with latent tokens → SoftVQ → ViT decoder (paper §3.1).

The encoder reads an image as patch tokens plus N learnable latent tokens under full
self-attention and keeps only the latent outputs: the **global tokens** ``z_global`` (B×N×d,
paper Eq. 1).  They pass through their own soft codebook (Eq. 2-3) and the decoder renders the
image from them.  This file is the SoftVQ baseline; the local aligners of SelfBootTok (Eq. 8-11)
plug into :class:`SelfBootTok` as further token groups.

Both ViTs use timm's ``Block`` (pre-norm attention via torch SDPA + MLP).  Two cheap additions
make the 1D bottleneck train in minutes instead of hours on a CPU (both switchable):

- **token mixing**: the latent tokens start as their learnable embedding *plus a learned linear
  mix of all patch tokens* (a token-axis linear map, as in MLP-Mixer), and the decoder's patch
  queries start as theirs plus a learned linear mix of the tokens.  At initialisation attention
  is nearly uniform, so every latent token would otherwise read the same average of the image
  and the bottleneck would carry almost nothing for the first few hundred steps; the linear path
  gives each token its own view from step 0 and attention refines it.  The tokens stay 1D: the
  mix is dense over all patches, with no fixed token-to-region assignment.
- **conv stem / head**: a 3×3 convolution before the patch embedding and two after the
  un-patchify, which see across patch borders and smooth patch seams.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.models.vision_transformer import Block
from torch import nn

from .config import Config
from .quantizer import Quantized, SoftVQ


@dataclass
class TokenizerConfig(Config):
    """Every size of the tokenizer.  ``num_tokens × token_dim`` is the bottleneck (values per image)."""

    image_size: int = 32
    patch_size: int = 4
    width: int = 192
    encoder_depth: int = 4
    decoder_depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_tokens: int = 32  # N, global tokens
    token_dim: int = 8  # d
    codebook_size: int = 1024
    tau: float = 0.07
    normalize_codes: bool = True
    conv_channels: int = 32  # channels of the conv stem / head; 0 = plain linear patch (un)embedding
    token_mixing: bool = True  # learned linear read-in of patches into latents, and read-out into queries

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not a multiple of num_heads {self.num_heads}")
        for f in ("num_tokens", "token_dim", "codebook_size", "width", "encoder_depth", "decoder_depth"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be ≥ 1, got {getattr(self, f)}")

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


def _blocks(cfg: TokenizerConfig, depth: int) -> nn.ModuleList:
    return nn.ModuleList(Block(cfg.width, cfg.num_heads, cfg.mlp_ratio, qkv_bias=True) for _ in range(depth))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- encoder


class TokenMix(nn.Module):
    """A learned linear map along the token axis: B×n_in×w → B×n_out×w."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("oi,biw->bow", self.weight, x)


class PatchEmbed(nn.Module):
    """Image → B×L×width patch tokens; an optional 3×3 conv in front sees across patch borders."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        c, p = cfg.conv_channels, cfg.patch_size
        stem = [nn.Conv2d(3, c, 3, padding=1), nn.GELU()] if c else []
        self.net = nn.Sequential(*stem, nn.Conv2d(c or 3, cfg.width, p, stride=p))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).flatten(2).transpose(1, 2)


class Encoder(nn.Module):
    """Patches + N learnable latent tokens → full self-attention → the latent outputs, B×N×d."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.patch_embed = PatchEmbed(cfg)
        self.patch_pos = nn.Parameter(0.02 * torch.randn(1, cfg.grid**2, cfg.width))
        self.latents = nn.Parameter(0.02 * torch.randn(1, cfg.num_tokens, cfg.width))
        self.read_in = TokenMix(cfg.grid**2, cfg.num_tokens) if cfg.token_mixing else None
        self.blocks = _blocks(cfg, cfg.encoder_depth)
        self.norm = nn.LayerNorm(cfg.width)
        self.to_tokens = nn.Linear(cfg.width, cfg.token_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images) + self.patch_pos
        latents = self.latents.expand(len(x), -1, -1)
        if self.read_in is not None:
            latents = latents + self.read_in(x)
        x = torch.cat([x, latents], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.to_tokens(self.norm(x[:, -self.latents.shape[1] :]))


# ----------------------------------------------------------------------------- decoder


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


class Decoder(nn.Module):
    """Tokens B×M×d → image.  One query per output patch attends jointly with the tokens
    (self-attention over the concatenation, as in TiTok / SoftVQ-VAE)."""

    def __init__(self, cfg: TokenizerConfig, num_tokens: int | None = None):
        super().__init__()
        self.from_tokens = nn.Linear(cfg.token_dim, cfg.width)
        self.token_pos = nn.Parameter(0.02 * torch.randn(1, num_tokens or cfg.num_tokens, cfg.width))
        self.queries = nn.Parameter(0.02 * torch.randn(1, cfg.grid**2, cfg.width))
        self.read_out = TokenMix(num_tokens or cfg.num_tokens, cfg.grid**2) if cfg.token_mixing else None
        self.blocks = _blocks(cfg, cfg.decoder_depth)
        self.norm = nn.LayerNorm(cfg.width)
        self.head = PatchHead(cfg)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.from_tokens(tokens)
        queries = self.queries.expand(len(tokens), -1, -1)
        if self.read_out is not None:
            queries = queries + self.read_out(tokens)
        x = torch.cat([queries, tokens + self.token_pos], 1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, : self.queries.shape[1]]))


# ----------------------------------------------------------------------------- model


@dataclass
class Encoding:
    """The tokens of a batch of images, by group, with their soft code assignments."""

    z_global: torch.Tensor  # B×N×d, soft-quantized global tokens
    probs: dict[str, torch.Tensor]  # group name → B×N×K soft assignment
    entropy_loss: torch.Tensor  # summed over groups


class SelfBootTok(nn.Module):
    """The tokenizer.  With its local parts switched off it is the SoftVQ-VAE baseline."""

    def __init__(self, cfg: TokenizerConfig | None = None, **overrides):
        super().__init__()
        cfg = cfg or TokenizerConfig()
        self.cfg = TokenizerConfig.from_dict({**cfg.to_dict(), **overrides})
        self.encoder = Encoder(self.cfg)
        self.quantizers = nn.ModuleDict(
            {"global": SoftVQ(self.cfg.token_dim, self.cfg.codebook_size, self.cfg.tau, self.cfg.normalize_codes)}
        )
        self.decoder = Decoder(self.cfg)
        self.apply(_init_weights)

    def check_images(self, images: torch.Tensor) -> None:
        """Raise a clear error for a batch that is not B×3×S×S at this model's size."""
        s = self.cfg.image_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (s, s):
            raise ValueError(
                f"expected images of shape B×3×{s}×{s} in [-1, 1], got {tuple(images.shape)}; "
                f"resize the images (the data loaders take image_size / resize=True) "
                f"or build the tokenizer with image_size={images.shape[-1]}"
            )

    def encode(self, images: torch.Tensor) -> Encoding:
        self.check_images(images)
        q: Quantized = self.quantizers["global"](self.encoder(images))
        return Encoding(z_global=q.z, probs={"global": q.probs}, entropy_loss=q.entropy_loss)

    def decode(self, z_global: torch.Tensor) -> torch.Tensor:
        """Render images (B×3×S×S, unclamped) from global tokens."""
        n, d = self.cfg.num_tokens, self.cfg.token_dim
        if z_global.shape[-2:] != (n, d):
            raise ValueError(f"expected global tokens of shape B×{n}×{d}, got {tuple(z_global.shape)}")
        return self.decoder(z_global)

    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, Encoding]:
        """Encode and decode; returns the reconstruction and the encoding."""
        enc = self.encode(images)
        return self.decode(enc.z_global), enc

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, Encoding]:
        return self.reconstruct(images)

    def num_params(self) -> dict[str, int]:
        """Parameter counts by part."""
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {"encoder": count(self.encoder), "quantizers": count(self.quantizers),
                "decoder": count(self.decoder), "total": count(self)}
