"""The SelfBootTok tokenizer (paper §3.1-3.2, Eq. 1-3 and 8-11).

    image ─Enc─▶ ẑ_G ─SoftVQ_G─▶ z_global ─┬─────────────────────────────────────┐
                                          ├─ MLP (Eq. 8) ─▶ SoftVQ_L1 ─▶ z_local_1d ─┤
                                          └─ causal 2D aligner (Eq. 9) ─▶ SoftVQ_L2 ──┴─▶ z_local_2d
    {z_global, z_local_1d, z_local_2d} ─Fuse (Eq. 11)─▶ memory ─Dec (Eq. 10)─▶ image

The encoder's latent outputs are the **global tokens**, the only numbers per image that leave it.  The
**local tokens** are *bootstrapped* from the soft-quantized global tokens alone, so a generator only ever
produces ``z_global`` and :meth:`SelfBootTok.decode_from_global` does the rest.  Every group is
soft-quantized (Eq. 2-3) with its own codebook, or one shared codebook (``shared_codebook=True``, the
ablation).  With the local parts switched off the model is the SoftVQ-VAE baseline.

Where each part lives:

- sizes and switches: :class:`~sbt_lib.models.tokenizer_config.TokenizerConfig`;
- encoder, fusion, decoder, their trunks and the linear path: :mod:`sbt_lib.models.tokenizer_parts`;
- the local 1D and 2D aligners: :mod:`sbt_lib.models.aligners`;
- SoftVQ: :mod:`sbt_lib.models.quantizer`;
- GloTok's residual recovery and the pixel refiner: :mod:`sbt_lib.models.residual`, :mod:`sbt_lib.models.refiner`;
- ``save_pretrained`` / ``from_pretrained``: :mod:`sbt_lib.models.pretrained`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .aligners import LocalAligner1D, LocalAligner2D
from .blocks import init_weights, num_params
from .pretrained import HalfPrecisionHubMixin
from .quantizer import Quantized, SoftVQ
from .refiner import PixelRefiner
from .residual import ResidualRecovery
from .tokenizer_config import TokenizerConfig
from .tokenizer_parts import ConvHead, Decoder, Encoder, Fusion, LinearPath


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
