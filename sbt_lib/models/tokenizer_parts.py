"""The parts of the SelfBootTok tokenizer (:mod:`sbt_lib.models.tokenizer` puts them together).

- **trunks**: :class:`PatchEmbed` / :class:`PatchHead` (patchify and un-patchify, with an optional 3×3 conv
  stem and head that see across patch borders and smooth patch seams) or, with ``trunk="conv"``,
  :class:`ConvTrunk` / :class:`ConvHead` (residual conv stages down to the token grid and back, GigaTok's
  hybrid CNN-transformer); :class:`LinearPath`, a fixed linear pixels ↔ global-token map beside the networks.
- The **encoder** (:class:`Encoder`, Eq. 1) reads the image as patch tokens plus N learnable latent tokens
  under full self-attention and keeps only the latent outputs: the **global tokens** (B×N×d).
- **Fusion** (:class:`Fusion`, Eq. 11), ``fusion="residual"``: ``α z_G + β z_L1 + (1-α-β) z_L2`` with (α, β,
  1-α-β) = softmax of three learned logits (so they stay positive and sum to one; they start
  equal).  Token counts are matched along the token axis: z_L1 has N tokens by construction, and
  when N_l ≠ N a learned linear token-axis map (:class:`~sbt_lib.models.blocks.TokenMix`) takes z_L2
  from N_l to N tokens (identity when N_l = N, the default).  ``fusion="concat"``:
  ``[z_G; z_L1; z_L2]``, N + N + N_l tokens.
- The **decoder** (:class:`Decoder`, Eq. 10), ``decoder="cross"``: one query per output patch; every block has
  self-attention over the queries and cross-attention to the memory ``[Fuse; z_L1; z_L2]``.  With
  concatenation the fused tokens already *are* ``[z_G; z_L1; z_L2]``, so the memory is that
  (repeating z_L1 and z_L2 would add nothing).  ``decoder="self"`` is the SoftVQ/TiTok decoder:
  self-attention over the concatenation of queries and memory.  With the local parts off, the
  memory is ``z_global`` and the model is the SoftVQ-VAE baseline.

**Token mixing** (``token_mixing=True``) makes the 1D bottleneck learn from the first steps: the latent
tokens start as their learnable embedding *plus a learned linear mix of all patch tokens* (a token-axis
linear map, as in MLP-Mixer), and the decoder's patch queries start as theirs plus a learned linear mix of
the memory tokens.  At initialisation attention is nearly uniform, so every latent token would otherwise
read the same average of the image and the bottleneck would carry almost nothing early in training.  The
tokens stay 1D: the mix is dense over all patches, with no fixed token-to-region assignment.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import CrossAttentionBlock, ResBlock, TokenMix, self_attention_blocks
from .tokenizer_config import TokenizerConfig

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
