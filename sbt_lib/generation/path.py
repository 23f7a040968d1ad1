"""The linear interpolant path of flow matching, in SiT's time convention.

    x_t = α_t x_1 + σ_t x_0,   α_t = t,  σ_t = 1 − t,   t ∈ [0, 1]

``x_0 ~ N(0, I)`` is noise (t = 0) and ``x_1`` is data (t = 1); the model predicts the velocity
``u_t = dx_t/dt = x_1 − x_0``, and sampling integrates ``dx/dt = v(x, t)`` from noise at t = 0 to data at
t = 1.  The score of the marginal follows from the velocity: with ``x_0 = x − t v`` (the expected noise),
``∇ log p_t(x) = −E[x_0 | x_t = x] / σ_t = (t v − x) / (1 − t)``.
"""
from __future__ import annotations

import torch


def expand(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A batch of times (B) shaped to broadcast against ``x`` (B×…)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.reshape(-1, *([1] * (x.ndim - 1))) if t.ndim else t


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = t x_1 + (1 − t) x_0``."""
    t = expand(t, x1)
    return t * x1 + (1 - t) * x0


def target_velocity(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """``u_t = x_1 − x_0``, the velocity the model regresses."""
    return x1 - x0


def score_from_velocity(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``∇ log p_t(x) = (t v − x) / (1 − t)`` (undefined at t = 1, where the path is pure data)."""
    t = expand(t, x)
    return (t * v - x) / (1 - t)
