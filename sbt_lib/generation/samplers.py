"""Samplers: integrate the learned velocity from noise (t = 0) to tokens (t = 1), and classifier-free guidance.

A *velocity function* is ``v(x, t) -> dx/dt`` with ``t`` a float; :func:`guided` makes one from a SiT,
classes and a guidance scale.  Every sampler returns the final ``x`` and counts the function evaluations
(NFE) it spent in ``stats["nfe"]`` when given a ``stats`` dict.

- ODE: :func:`euler` (first order) and :func:`heun` (second order, two evaluations per step) on a uniform
  time grid, and :func:`dopri5` (adaptive Dormand–Prince through ``torchdiffeq.odeint``).
- SDE: :func:`euler_maruyama` for ``dx = [v + w(t) s(x, t)] dt + sqrt(2 w(t)) dW``, which keeps the marginals
  of the ODE; ``s`` is the score from the velocity (:func:`~sbt_lib.generation.path.score_from_velocity`)
  and ``w(t) = diffusion_norm · σ_t = diffusion_norm · (1 − t)`` is SiT's "sigma" diffusion.  As in SiT, the
  grid stops ``last_step`` before t = 1 and a last deterministic step of the drift (SiT's "Mean") lands on 1.
  That step keeps the drift's contraction but not the noise, so it narrows dimensions whose data spread is much
  smaller than the noise's; the smaller ``last_step``, the less (``tests/test_generation.py`` checks it).
"""
from __future__ import annotations

from typing import Callable

import torch

Velocity = Callable[[torch.Tensor, float], torch.Tensor]
SAMPLERS = ("euler", "heun", "dopri5", "sde")


def _counted(v: Velocity, stats: dict | None) -> Velocity:
    if stats is None:
        return v
    stats.setdefault("nfe", 0)

    def counted(x, t):
        stats["nfe"] += 1
        return v(x, t)

    return counted


@torch.no_grad()
def euler(v: Velocity, x: torch.Tensor, steps: int, stats: dict | None = None) -> torch.Tensor:
    """``steps`` explicit Euler steps from t = 0 to 1: error O(1/steps)."""
    v, dt = _counted(v, stats), 1.0 / steps
    for i in range(steps):
        x = x + dt * v(x, i * dt)
    return x


@torch.no_grad()
def heun(v: Velocity, x: torch.Tensor, steps: int, stats: dict | None = None,
         trajectory: list | None = None) -> torch.Tensor:
    """``steps`` Heun steps (Euler predictor, trapezoidal corrector): error O(1/steps²), 2 NFE per step.
    With ``trajectory`` (a list), appends ``(t, x_t, x̂_1)`` at every step: the state and the endpoint it
    points at, ``x̂_1 = x_t + (1 − t) v(x_t, t)`` (what the model expects the sample to become)."""
    v, dt = _counted(v, stats), 1.0 / steps
    for i in range(steps):
        t = i * dt
        k1 = v(x, t)
        if trajectory is not None:
            trajectory.append((t, x, x + (1 - t) * k1))
        k2 = v(x + dt * k1, t + dt)
        x = x + dt * 0.5 * (k1 + k2)
    if trajectory is not None:
        trajectory.append((1.0, x, x))
    return x


@torch.no_grad()
def dopri5(v: Velocity, x: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5,
           stats: dict | None = None) -> torch.Tensor:
    """Adaptive Dormand–Prince 5(4) from t = 0 to 1 (``torchdiffeq.odeint``) at tolerances ``rtol``, ``atol``."""
    from torchdiffeq import odeint

    v = _counted(v, stats)
    times = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
    return odeint(lambda t, y: v(y, float(t)), x, times, rtol=rtol, atol=atol, method="dopri5")[-1]


@torch.no_grad()
def euler_maruyama(v: Velocity, x: torch.Tensor, steps: int, diffusion_norm: float = 1.0, last_step: float = 0.04,
                   generator: torch.Generator | None = None, stats: dict | None = None) -> torch.Tensor:
    """The SDE sampler: ``steps`` Euler–Maruyama steps on [0, 1 − last_step], then one deterministic step."""
    v = _counted(v, stats)
    grid = torch.linspace(0.0, 1.0 - last_step, steps + 1).tolist()

    def drift(x, t):
        u = v(x, t)
        return u + diffusion_norm * (t * u - x)  # v + w(t) s(x, t) with w = norm (1 − t), s = (t v − x)/(1 − t)

    for t, t_next in zip(grid[:-1], grid[1:]):
        dt = t_next - t
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x + dt * drift(x, t) + (2 * diffusion_norm * (1 - t) * dt) ** 0.5 * noise
    return x + last_step * drift(x, grid[-1])


def guided(model, y: torch.Tensor, scale: float = 1.0, interval: tuple[float, float] = (0.0, 1.0),
           stats: dict | None = None) -> Velocity:
    """The velocity of ``model`` for classes ``y`` with classifier-free guidance on every token channel:
    ``v_null + scale (v_y − v_null)`` for t inside ``interval``, the conditional ``v_y`` outside it and whenever
    ``scale == 1`` (exactly the conditional model: no null pass at all).  Guiding only part of the path (a
    *guidance interval*, Kynkäänniemi et al. 2024) leaves the noisiest times, where the class is still being
    chosen, to the conditional model: guidance there pushes every sample of a class towards the same few modes.
    With ``stats``, counts the evaluations that ran the null pass in ``stats["guided"]``."""
    lo, hi = interval
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"the guidance interval must satisfy 0 <= start <= end <= 1 (t = 0 is noise, 1 the tokens), "
                         f"got {interval}; e.g. guidance_from=0.3 guides t in [0.3, 1]")
    null = torch.full_like(y, model.null_class)
    if stats is not None:
        stats.setdefault("guided", 0)

    def v(x, t):
        t_b = torch.full((len(x),), float(t), device=x.device)
        if scale == 1.0 or not lo <= t <= hi:
            return model(x, t_b, y)
        if stats is not None:
            stats["guided"] += 1
        both = model(torch.cat([x, x]), torch.cat([t_b, t_b]), torch.cat([y, null]))
        cond, uncond = both.chunk(2)
        return uncond + scale * (cond - uncond)

    return v


@torch.no_grad()
def sample(model, y: torch.Tensor, sampler: str = "heun", steps: int = 20, scale: float = 1.0,
           interval: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | None = None,
           stats: dict | None = None, **options) -> torch.Tensor:
    """New tokens (B×N×d, in the model's normalised space) for classes ``y`` from noise, with ``sampler``
    (``euler``, ``heun``, ``dopri5`` or ``sde``) at ``steps`` (ignored by dopri5) and guidance ``scale`` over
    ``interval`` of t; ``stats`` gets ``nfe`` and ``guided`` (the evaluations with a null pass); ``options`` go to
    the sampler (``trajectory=[]`` for heun, ``rtol``/``atol`` for dopri5, ...)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {SAMPLERS}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    shape = (len(y), model.cfg.num_tokens, model.cfg.token_dim)
    x = torch.randn(shape, generator=generator, device=device)
    v = guided(model, y.to(device), scale, interval, stats)
    if sampler == "euler":
        out = euler(v, x, steps, stats)
    elif sampler == "heun":
        out = heun(v, x, steps, stats, **options)
    elif sampler == "dopri5":
        out = dopri5(v, x, stats=stats, **options)
    else:
        out = euler_maruyama(v, x, steps, generator=generator, stats=stats, **options)
    model.train(was_training)
    return out

