"""The local aligners of SelfBootTok: global tokens → local tokens (paper §3.2, Eq. 8-9).

Both read the encoder's global tokens ``z_global`` (B×N×d) and produce a further group of tokens
that the tokenizer quantizes with its own codebook:

- :class:`LocalAligner1D` (Eq. 8), ``z_local_1d = MLP(z_global)``: one MLP applied to every token
  on its own, so the output has the same token count N (and ``out_dim`` values per token).
- :class:`LocalAligner2D` (Eq. 9), ``p(z_local_2d | z_global) = Π_i p(t_i | z_global, t_<i)``:
  causal transformer blocks that read ``z_global`` as a fully visible prefix and emit N_l local
  tokens.  It is the part of the tokenizer that scales; :data:`ALIGNER_2D_PRESETS` spans the
  sizes used on the scaling axis.

How the 2D aligner realises Eq. 9.  The local positions are *learned query tokens*, not previous
outputs fed back in: the sequence is ``[z_global (projected) | q_1 … q_Nl]`` with learned position
embeddings, and one parallel pass runs it through timm ``Block`` s under the attention mask of
:func:`causal_prefix_mask` (prefix visible to all and blind to the local positions; local position
i sees the prefix and local positions ≤ i).  Hence output i depends on ``z_global`` and on the
hidden states of positions < i, and on nothing after i: the dependency structure of Eq. 9, computed
in one pass as in a decoder-only LM (nanoGPT).  No sampling or teacher forcing is involved; the
optional ``local_inputs`` of :meth:`LocalAligner2D.forward` replaces the learned queries (for tests,
or for a teacher-forced variant later).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import nn

from .blocks import init_weights, num_params
from ..config import Config

# Sizes of the 2D aligner, smallest to largest: xs → xl (≈ 34K → 1.8M parameters at token_dim 8 and
# 32 global + 32 local tokens; see :func:`aligner_2d_param_counts`), CPU-feasible on purpose, the scaling
# axis of notebook 04 at the cpu scale; then the paper's Fig. 6 axis, 10M → 600M, for the gpu/paper scales.
ALIGNER_2D_PRESETS: dict[str, dict] = {
    "xs": dict(width=48, depth=1, num_heads=2),
    "s": dict(width=64, depth=2, num_heads=4),
    "m": dict(width=96, depth=3, num_heads=4),
    "l": dict(width=128, depth=4, num_heads=4),
    "xl": dict(width=192, depth=4, num_heads=6),
    # named by their size (≈ 12 · depth · width²)
    "10M": dict(width=384, depth=6, num_heads=6),
    "50M": dict(width=640, depth=10, num_heads=10),
    "150M": dict(width=1024, depth=12, num_heads=16),
    "300M": dict(width=1024, depth=24, num_heads=16),
    "600M": dict(width=1280, depth=30, num_heads=20),
}


def causal_prefix_mask(num_prefix: int, num_local: int, causal: bool = True, device=None) -> torch.Tensor:
    """The boolean attention mask of the 2D aligner, (P+L)×(P+L), True = may attend (row → column).

    With ``causal``: the prefix (first ``num_prefix`` positions, the global tokens) attends only to
    itself; local position i attends to the whole prefix and to local positions ≤ i.  Without it,
    every position attends to every other (the bidirectional ablation).
    """
    n = num_prefix + num_local
    if not causal:
        return torch.ones(n, n, dtype=torch.bool, device=device)
    mask = torch.zeros(n, n, dtype=torch.bool, device=device)
    mask[:, :num_prefix] = True
    mask[num_prefix:, num_prefix:] = torch.ones(num_local, num_local, dtype=torch.bool, device=device).tril()
    return mask


# ----------------------------------------------------------------------------- 1D aligner


class LocalAligner1D(nn.Module):
    """Eq. 8, ``z_local_1d = MLP(z_global)``: a per-token MLP, B×N×token_dim → B×N×out_dim.

    ``hidden`` defaults to 4·token_dim and ``out_dim`` to token_dim (the tokenizer quantizes the
    output with its own codebook of that dimension); a larger ``out_dim`` lifts the tokens into a
    higher-dimensional space, as the paper describes.
    """

    def __init__(self, token_dim: int, hidden: int | None = None, out_dim: int | None = None):
        super().__init__()
        self.token_dim = token_dim
        self.out_dim = out_dim or token_dim
        self.mlp = Mlp(token_dim, hidden or 4 * token_dim, self.out_dim)
        self.apply(init_weights)

    def forward(self, z_global: torch.Tensor) -> torch.Tensor:
        if z_global.ndim != 3 or z_global.shape[-1] != self.token_dim:
            raise ValueError(f"expected global tokens of shape B×N×{self.token_dim}, got {tuple(z_global.shape)}")
        return self.mlp(z_global)


# ----------------------------------------------------------------------------- 2D aligner


@dataclass
class Aligner2DConfig(Config):
    """Every size of the 2D aligner.  Position tables have fixed sizes, so both token counts are set here."""

    token_dim: int = 8  # d of z_global
    num_global_tokens: int = 32  # N, length of the prefix
    num_local_tokens: int = 32  # N_l, length of the output
    out_dim: int | None = None  # d of z_local_2d; None = token_dim
    width: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    causal: bool = True  # False = bidirectional ablation

    def __post_init__(self):
        for f in ("token_dim", "num_global_tokens", "num_local_tokens", "output_dim", "width", "depth", "num_heads"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be ≥ 1, got {getattr(self, f)}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not a multiple of num_heads {self.num_heads}")

    @property
    def output_dim(self) -> int:
        """d of z_local_2d (``out_dim``, or ``token_dim`` when unset)."""
        return self.out_dim or self.token_dim


class LocalAligner2D(nn.Module):
    """Eq. 9: z_global (B×N×d) → z_local_2d (B×N_l×out_dim) by masked self-attention over
    ``[z_global | local queries]`` (see the module docstring for how this realises the product)."""

    def __init__(self, cfg: Aligner2DConfig | None = None, **overrides):
        super().__init__()
        cfg = cfg or Aligner2DConfig()
        self.cfg = Aligner2DConfig.from_dict({**cfg.to_dict(), **overrides})
        c = self.cfg
        self.from_tokens = nn.Linear(c.token_dim, c.width)
        self.global_pos = nn.Parameter(0.02 * torch.randn(1, c.num_global_tokens, c.width))
        self.local_queries = nn.Parameter(0.02 * torch.randn(1, c.num_local_tokens, c.width))
        self.local_pos = nn.Parameter(0.02 * torch.randn(1, c.num_local_tokens, c.width))
        self.blocks = nn.ModuleList(Block(c.width, c.num_heads, c.mlp_ratio, qkv_bias=True) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, c.output_dim)
        self.apply(init_weights)

    @classmethod
    def from_preset(
        cls,
        name: str,
        token_dim: int,
        num_local_tokens: int,
        out_dim: int | None = None,
        causal: bool = True,
        num_global_tokens: int | None = None,
    ) -> "LocalAligner2D":
        """A 2D aligner of a named size from :data:`ALIGNER_2D_PRESETS`.

        ``num_global_tokens`` (the prefix length) defaults to ``num_local_tokens``.
        """
        if name not in ALIGNER_2D_PRESETS:
            raise ValueError(f"unknown 2D aligner preset {name!r}; valid: {list(ALIGNER_2D_PRESETS)}")
        return cls(
            Aligner2DConfig(
                token_dim=token_dim,
                num_global_tokens=num_global_tokens or num_local_tokens,
                num_local_tokens=num_local_tokens,
                out_dim=out_dim,
                causal=causal,
                **ALIGNER_2D_PRESETS[name],
            )
        )

    def forward(self, z_global: torch.Tensor, local_inputs: torch.Tensor | None = None) -> torch.Tensor:
        """B×N×token_dim → B×N_l×out_dim.

        ``local_inputs`` (optional, B×n×width with 1 ≤ n ≤ N_l) replaces the learned local queries
        as the hidden input of the first n local positions (their position embeddings are still
        added); the output then has n tokens.  With ``causal`` the output at position i < n equals
        that of the full sequence, so this also evaluates truncated sequences.
        """
        c = self.cfg
        if z_global.ndim != 3 or z_global.shape[1:] != (c.num_global_tokens, c.token_dim):
            raise ValueError(
                f"expected global tokens of shape B×{c.num_global_tokens}×{c.token_dim}, got {tuple(z_global.shape)}"
            )
        b = len(z_global)
        if local_inputs is None:
            local_inputs = self.local_queries.expand(b, -1, -1)
        elif (
            local_inputs.ndim != 3
            or len(local_inputs) != b
            or local_inputs.shape[-1] != c.width
            or not 1 <= local_inputs.shape[1] <= c.num_local_tokens
        ):
            raise ValueError(
                f"expected local_inputs of shape {b}×n×{c.width} with 1 ≤ n ≤ {c.num_local_tokens}, "
                f"got {tuple(local_inputs.shape)}"
            )
        n_local = local_inputs.shape[1]
        x = torch.cat([self.from_tokens(z_global) + self.global_pos, local_inputs + self.local_pos[:, :n_local]], 1)
        mask = None if not c.causal else causal_prefix_mask(c.num_global_tokens, n_local, True, x.device)
        for block in self.blocks:
            x = block(x, attn_mask=mask)
        return self.head(self.norm(x[:, c.num_global_tokens :]))

    def num_params(self) -> int:
        return num_params(self)  # the module-level counter of .blocks (a method name is not in scope here)


def aligner_2d_param_counts(token_dim: int = 8, num_local_tokens: int = 32) -> dict[str, int]:
    """Parameter count of every preset (prefix length = ``num_local_tokens``), for tables and plots.
    Counted on the ``meta`` device: no memory is allocated, so the 600M preset costs nothing."""
    with torch.device("meta"):
        return {name: LocalAligner2D.from_preset(name, token_dim, num_local_tokens).num_params()
                for name in ALIGNER_2D_PRESETS}