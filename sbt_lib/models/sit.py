"""SiT: the generator of SelfBootTok (paper §3.2, §4), a DiT-style transformer over a sequence of 1D tokens.

It predicts the velocity of the flow-matching path (:mod:`sbt_lib.generation`) of the ``N`` global tokens
only: the aligners bootstrap the local tokens from what it samples, and the decoder renders them.

    tokens B×N×d ─join p─▶ B×(N/p)×(p·d) ─linear─▶ B×(N/p)×w (+ fixed sinusoidal 1D positions)
    c = embed(t) + embed(y)  (y = num_classes is the null class of classifier-free guidance)
    ─▶ depth × adaLN-Zero block(x, c) ─▶ adaLN final layer ─linear (zero-init)─▶ velocity B×N×d

Blocks as in DiT (Peebles & Xie 2023) and SiT (Ma et al. 2024): LayerNorm without affine parameters,
shift/scale/gate from ``c``, the gates zero-initialised so every block starts as the identity; attention
is timm's (torch SDPA).  The output layer starts at zero, so the untrained model predicts zero velocity.
Label dropout replaces a class by the null class with probability ``class_dropout`` during training.

With ``prior="gaussian"`` the model adds the closed-form velocity of a class-conditional Gaussian fitted to
the training tokens (:class:`~sbt_lib.models.gaussian_flow.GaussianFlow`, fitted before training): the
untrained model is then that Gaussian's exact generator, and the network learns the residual.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Attention
from torch import nn

from ..config import Config
from .gaussian_flow import GaussianFlow
from .pretrained import HalfPrecisionHubMixin

# --------------------------------------------------------------------------------------------- sizes

# Width, depth and heads.  S/B/L/XL are the SiT paper's (its 1D token sequence replaces the 2D patches);
# tiny, mini and cpu fit a 2-core laptop (mini: notebook 05's cpu budget).
SIT_PRESETS: dict[str, dict] = {
    "tiny": dict(width=32, depth=2, num_heads=2),
    "mini": dict(width=128, depth=4, num_heads=4),
    "cpu": dict(width=192, depth=6, num_heads=6),
    "S": dict(width=384, depth=12, num_heads=6),
    "B": dict(width=768, depth=12, num_heads=12),
    "L": dict(width=1024, depth=24, num_heads=16),
    "XL": dict(width=1152, depth=28, num_heads=16),
}

PRIORS = ("none", "gaussian")


@dataclass
class SiTConfig(Config):
    """A SiT over ``num_tokens`` tokens of ``token_dim`` numbers, conditioned on one of ``num_classes``."""

    num_tokens: int = 32
    token_dim: int = 8
    num_classes: int = 10
    size: str = "cpu"  # a preset of SIT_PRESETS
    mlp_ratio: float = 4.0
    class_dropout: float = 0.1  # probability of the null class in training (classifier-free guidance)
    prior: str = "none"  # none | gaussian: the velocity the network's output is added to
    patch: int = 1  # consecutive tokens joined into one element of the sequence (DiT's patch size, in 1D)

    def __post_init__(self):
        if self.patch < 1 or self.num_tokens % self.patch:
            raise ValueError(f"SiT patch {self.patch} must divide num_tokens {self.num_tokens} (try 1, 2, 4, ...)")
        if self.size not in SIT_PRESETS:
            raise ValueError(f"unknown SiT size {self.size!r}; valid: {list(SIT_PRESETS)}")
        if self.prior not in PRIORS:
            raise ValueError(f"unknown SiT prior {self.prior!r}; valid: {PRIORS}")

    @property
    def width(self) -> int:
        return SIT_PRESETS[self.size]["width"]


# --------------------------------------------------------------------------------------------- embeddings

def sinusoidal(values: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of ``values`` (any shape S) → S×dim: [cos(v·f_k), sin(v·f_k)], geometric f_k."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    args = values.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """t ∈ [0, 1] → width: sinusoidal features of 1000·t (DiT's scale of time) through a 2-layer MLP."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal(1000.0 * t, self.freq_dim))


class LabelEmbedder(nn.Module):
    """Class → width, with one extra row for the null class (index ``num_classes``)."""

    def __init__(self, num_classes: int, width: int, dropout: float):
        super().__init__()
        self.num_classes, self.dropout = num_classes, dropout
        self.table = nn.Embedding(num_classes + 1, width)

    def drop(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` with each class replaced by the null class with probability ``dropout`` (training only)."""
        if self.training and self.dropout > 0:
            drop = torch.rand(y.shape, device=y.device) < self.dropout
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return y

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.table(y)


# --------------------------------------------------------------------------------------------- blocks

def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class SiTBlock(nn.Module):
    """adaLN-Zero transformer block: attention and MLP, each modulated (shift, scale) and gated by c."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, int(width * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear map back to ``token_dim`` (zero-initialised)."""

    def __init__(self, width: int, token_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, token_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.out(modulate(self.norm(x), shift, scale))


# --------------------------------------------------------------------------------------------- SiT

class SiT(nn.Module, HalfPrecisionHubMixin, library_name="sbt-lib", tags=["generator", "selfboottok", "sit"]):
    """``model(x, t, y)``: the velocity at tokens ``x`` (B×N×d) and times ``t`` (B) for classes ``y`` (B).

    ``save_pretrained(folder)`` writes its config and float16 weights; ``SiT.from_pretrained(folder or Hub
    id)`` reads them back (:mod:`~sbt_lib.models.pretrained`)."""

    def __init__(self, cfg: SiTConfig | dict | None = None, **overrides):
        super().__init__()
        cfg = cfg.to_dict() if isinstance(cfg, SiTConfig) else dict(cfg or {})
        self.cfg = c = SiTConfig.from_dict({**cfg, **overrides})
        self._hub_mixin_config = {"cfg": c.to_dict()}  # config.json: the resolved config, whatever was passed
        size = SIT_PRESETS[c.size]
        w = size["width"]
        self.embed = nn.Linear(c.patch * c.token_dim, w)
        self.register_buffer("pos", sinusoidal(torch.arange(c.num_tokens // c.patch), w), persistent=False)
        self.t_embed = TimestepEmbedder(w)
        self.y_embed = LabelEmbedder(c.num_classes, w, c.class_dropout)
        self.blocks = nn.ModuleList(SiTBlock(w, size["num_heads"], c.mlp_ratio) for _ in range(size["depth"]))
        self.final = FinalLayer(w, c.patch * c.token_dim)
        self.prior = GaussianFlow(c.num_classes, c.num_tokens * c.token_dim) if c.prior == "gaussian" else None
        self.initialize_weights()

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    def initialize_weights(self) -> None:
        """DiT's initialisation: Xavier-uniform linears, N(0, 0.02) embeddings, adaLN and output at zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.y_embed.table.weight, std=0.02)
        for layer in self.t_embed.mlp[0::2]:
            nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
        for layer in (self.final.ada[-1], self.final.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n, d = self.cfg.num_tokens, self.cfg.token_dim
        if x.ndim != 3 or x.shape[1:] != (n, d):
            raise ValueError(f"SiT expects tokens of shape B×{n}×{d}, got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).expand(len(x))
        y = self.y_embed.drop(y)                                       # the null class, sometimes, in training
        p = self.cfg.patch
        h = self.embed(x.reshape(len(x), n // p, p * d)) + self.pos    # B×(N/p)×w
        c = self.t_embed(t) + self.y_embed(y)                          # B×w
        for block in self.blocks:
            h = block(h, c)
        v = self.final(h, c).reshape(len(x), n, d)                     # B×N×d
        return v if self.prior is None else v + self.prior(x, t, y)
