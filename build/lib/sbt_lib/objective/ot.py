"""Entropic optimal transport between 2D latents and 1D tokens (paper §3.3, Eq. 12-13).

For a batch of B problems with costs C (B×Nx×Nz) and marginals a (B×Nx), b (B×Nz), the plan

    P* = argmin_{P ∈ Π(a, b)} ⟨P, C⟩ − ε H(P)

has the form P = diag(u) K diag(v) with K = exp(−C/ε) (Sinkhorn's theorem), and the scalings are
found by alternating u = a / K v, v = b / Kᵀ u.  The loss of Eq. 13 is ⟨P*, C⟩.

**Why a solver of our own.**  POT's batched solver (``ot.batch.solve_batch``, ``log_sinkhorn``) is
correct and stable, but it runs every iteration in the log domain: two log-sum-exps, i.e. two
exponentials of all B·Nx·Nz entries, per iteration.  Here the iterations are matrix-vector
products in the *scaling* domain, and the stability of the log domain comes from
absorbing the scalings into dual potentials f, g every ``check_every`` iterations (Schmitzer's
log-stabilised Sinkhorn): the kernel K̃ = exp((f ⊕ g − C)/ε) is recomputed, with one
exponential, only then.  Between absorptions the scalings stay near 1, so nothing under- or
overflows; the potentials start at the c-transforms of C, so every row and column of K̃ holds
an entry equal to 1 from the first iteration on, whatever ε.  Should a block of iterations still
go non-finite (it takes an ε far below the cost scale), that block is redone in the log domain.
``benchmarks/ot_speed.py`` measures this against POT; ``tests/test_ot.py`` checks the plans and
costs against ``ot.sinkhorn2`` and ``ot.batch.solve_batch``.

**Stopping.**  As POT's batched solver: every ``check_every`` iterations, stop when the largest
(over the batch) L2 norm of the row-marginal error ‖P 1 − a‖ is below ``tol``; the returned plan's
column marginals are exact (it ends on a column update).

**Gradient.**  :func:`ot_loss` computes the plan without an autograd graph through the
iterations and returns ⟨P*, C⟩ with P* detached, so its gradient with respect to C is P*
(the envelope theorem), at the cost of one forward solve.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SinkhornResult:
    """What :func:`sinkhorn` returns: the solution of a batch of entropic OT problems.  (Not called
    ``Transport``: that name belongs to the generator's flow-matching transport.)"""

    plan: torch.Tensor  # B×Nx×Nz, P*
    cost: torch.Tensor  # B, ⟨P*, C⟩ (the transport cost, without the entropy term)
    iterations: int  # Sinkhorn iterations (one u and one v update each)
    error: float  # max over the batch of ‖P 1 − a‖₂ at the last check
    errors: list[float]  # that error at every check (every ``check_every`` iterations): the convergence curve
    log_domain_blocks: int = 0  # blocks of iterations that had to be redone in the log domain


def squared_euclidean(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The cost of Eq. 12: C_ij = ‖x_i − z_j‖², for x B×Nx×d and z B×Nz×d → B×Nx×Nz.

    Computed as ‖x‖² + ‖z‖² − 2 x·z (one batched matmul) and clamped at 0, as rounding can make
    it slightly negative."""
    if x.ndim != 3 or z.ndim != 3 or x.shape[0] != z.shape[0] or x.shape[-1] != z.shape[-1]:
        raise ValueError(f"expected x of shape B×Nx×d and z of shape B×Nz×d, got {tuple(x.shape)} and {tuple(z.shape)}")
    sq = x.square().sum(-1, keepdim=True) + z.square().sum(-1).unsqueeze(1) - 2 * x @ z.transpose(1, 2)
    return sq.clamp_min(0)


def _marginal(m: torch.Tensor | None, batch: int, n: int, like: torch.Tensor, name: str) -> torch.Tensor:
    """A marginal as B×n (uniform when None), checked: positive entries summing to one."""
    if m is None:
        return torch.full((batch, n), 1.0 / n, dtype=like.dtype, device=like.device)
    m = torch.as_tensor(m, dtype=like.dtype, device=like.device)
    if m.ndim == 1:
        m = m.expand(batch, -1)
    if m.shape != (batch, n):
        raise ValueError(f"marginal {name} has shape {tuple(m.shape)} but the cost needs {(batch, n)} (or ({n},))")
    if not torch.all(m > 0):
        raise ValueError(f"marginal {name} must be strictly positive; drop the points with zero mass instead")
    if not torch.allclose(m.sum(-1), torch.ones((), dtype=m.dtype, device=m.device), atol=1e-5):
        raise ValueError(f"marginal {name} must sum to 1 in every problem, got sums {m.sum(-1).tolist()[:4]}…")
    return m


def _check_inputs(cost: torch.Tensor, eps: float, tol: float, max_iter: int, check_every: int) -> None:
    if cost.ndim != 3:
        raise ValueError(f"expected a batch of cost matrices B×Nx×Nz, got shape {tuple(cost.shape)}")
    if min(cost.shape) < 1:
        raise ValueError(f"empty OT problem: cost shape {tuple(cost.shape)}")
    if not torch.isfinite(cost).all():
        raise ValueError("the cost has NaN or inf entries")
    if not eps > 0:
        raise ValueError(f"the entropic regularisation eps must be > 0, got {eps}")
    if not tol > 0 or max_iter < 1 or check_every < 1:
        raise ValueError(f"need tol > 0, max_iter ≥ 1 and check_every ≥ 1; got {tol}, {max_iter}, {check_every}")


def _c_transforms(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial potentials f_i = min_j C_ij, g_j = min_i (C_ij − f_i): then f ⊕ g ≤ C everywhere,
    with equality at least once in every row and every column."""
    f = cost.amin(2)
    g = (cost - f.unsqueeze(2)).amin(1)
    return f, g


def _kernel(cost, f, g, eps):
    """K̃ = exp((f ⊕ g − C)/ε): the plan with unit scalings."""
    return torch.exp((f.unsqueeze(2) + g.unsqueeze(1) - cost) / eps)


def _log_block(cost, f, g, log_a, log_b, eps, n_iter):
    """``n_iter`` Sinkhorn iterations in the log domain on the potentials (the safe fallback)."""
    for _ in range(n_iter):
        f = eps * log_a - eps * torch.logsumexp((g.unsqueeze(1) - cost) / eps, dim=2)
        g = eps * log_b - eps * torch.logsumexp((f.unsqueeze(2) - cost) / eps, dim=1)
    return f, g


@torch.no_grad()
def sinkhorn(cost: torch.Tensor, a: torch.Tensor | None = None, b: torch.Tensor | None = None, *,
             eps: float = 0.05, tol: float = 1e-6, max_iter: int = 1000, check_every: int = 10) -> SinkhornResult:
    """Solve B entropic OT problems at once (see the module docstring).

    ``cost`` B×Nx×Nz; ``a`` B×Nx or Nx and ``b`` B×Nz or Nz, positive and summing to 1 (uniform
    when omitted).  Computes in the cost's dtype (float32 or float64), on its device.  Returns the
    plan, the transport cost ⟨P, C⟩ per problem, the iterations run and the final marginal error.
    """
    _check_inputs(cost, eps, tol, max_iter, check_every)
    cost = cost.detach() if cost.is_floating_point() else cost.float()
    B, nx, nz = cost.shape
    a, b = _marginal(a, B, nx, cost, "a"), _marginal(b, B, nz, cost, "b")
    f, g = _c_transforms(cost)
    kernel = _kernel(cost, f, g, eps)
    v = torch.ones_like(b)
    iterations, errors, fallbacks = 0, [], 0
    while iterations < max_iter:
        block = min(check_every, max_iter - iterations)
        for _ in range(block):
            u = a / (kernel * v.unsqueeze(1)).sum(2)  # K v; a broadcast product beats bmm with one column on CPU
            v = b / (kernel * u.unsqueeze(2)).sum(1)  # Kᵀ u
        iterations += block
        if torch.isfinite(u).all() and torch.isfinite(v).all() and (u > 0).all() and (v > 0).all():
            f, g = f + eps * u.log(), g + eps * v.log()  # absorb the scalings into the potentials
        else:  # redo this block in the log domain from the last absorbed potentials
            f, g = _log_block(cost, f, g, a.log(), b.log(), eps, block)
            fallbacks += 1
        kernel = _kernel(cost, f, g, eps)  # now the plan itself (unit scalings)
        v = torch.ones_like(b)
        errors.append(torch.linalg.vector_norm(kernel.sum(2) - a, dim=1).max().item())
        if errors[-1] < tol:
            break
    # End on a column update, as Sinkhorn does: the column marginals are then exact even where
    # recomputing the kernel from the potentials rounded (it does, in float32, for ε ≪ the cost).
    plan = kernel * (b / kernel.sum(1)).unsqueeze(1)
    return SinkhornResult(plan=plan, cost=(plan * cost).sum((1, 2)), iterations=iterations, error=errors[-1],
                     errors=errors, log_domain_blocks=fallbacks)


def ot_loss(x: torch.Tensor, z: torch.Tensor, *, eps: float = 0.05, tol: float = 1e-6, max_iter: int = 1000,
            a: torch.Tensor | None = None, b: torch.Tensor | None = None) -> tuple[torch.Tensor, SinkhornResult]:
    """Eq. 13: the mean over the batch of ⟨P*, C⟩ with C = ‖x_i − z_j‖² (Eq. 12), differentiable
    in ``x`` and ``z`` through C only (P* is a constant: ∂loss/∂C = P*/B).  Computed in fp32.

    ``x``: B×Nx×d (the 2D latents), ``z``: B×Nz×d (the 1D tokens).  Returns (loss, the solver's :class:`SinkhornResult`)."""
    with torch.autocast(x.device.type, enabled=False):
        cost = squared_euclidean(x.float(), z.float())
        solution = sinkhorn(cost.detach(), a, b, eps=eps, tol=tol, max_iter=max_iter)
        loss = (solution.plan * cost).sum((1, 2)).mean()
    return loss, solution


class OTAlignment(torch.nn.Module):
    """L_OT of Eq. 5 in a common space that cannot collapse.

    The 1D tokens (``z_local_2d``, d dims) are mapped by a learned linear projector to the
    channels c of the 2D latents, and **both sides are l2-normalised per token** before the cost
    is taken: C_ij = ‖x̂_i − ẑ_j‖² = 2 − 2 cos(x_i, z_j) ∈ [0, 4].  So the loss is invariant to the
    scale of either side: shrinking the tokens (or the projector) towards zero cannot lower it, and
    since the 2D latents are frozen, it is zero only when the N_z tokens sit exactly on the 2D
    latents with the plan's marginals — impossible for N_x latents of more than N_z directions.
    ε is in units of that cost.
    """

    def __init__(self, token_dim: int, latent_dim: int, eps: float = 0.05, tol: float = 1e-5, max_iter: int = 500):
        super().__init__()
        self.proj = torch.nn.Linear(token_dim, latent_dim, bias=False)  # no bias: scaling the tokens cannot move ẑ
        self.eps, self.tol, self.max_iter = eps, tol, max_iter

    def embed(self, latents_2d: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both sides in the common space: (x̂ B×N_x×c, ẑ B×N_z×c), unit vectors, fp32."""
        if latents_2d.shape[-1] != self.proj.out_features:
            raise ValueError(f"2D latents have {latents_2d.shape[-1]} channels, the projector expects "
                             f"{self.proj.out_features}")
        with torch.autocast(tokens.device.type, enabled=False):
            x = torch.nn.functional.normalize(latents_2d.float(), dim=-1)
            z = torch.nn.functional.normalize(self.proj(tokens.float()), dim=-1)
        return x, z

    def forward(self, latents_2d: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, SinkhornResult]:
        """(loss, :class:`SinkhornResult`) for 2D latents B×N_x×c and 1D tokens B×N_z×d."""
        x, z = self.embed(latents_2d, tokens)
        return ot_loss(x, z, eps=self.eps, tol=self.tol, max_iter=self.max_iter)


def source_spread(plan: torch.Tensor, grid: int) -> torch.Tensor:
    """How local each 1D token's source is: the spatial standard deviation, in latent cells, of
    the 2D positions a token receives mass from (its plan column, normalised), averaged over tokens.

    ``plan`` is B×N_x×N_z with N_x = grid² positions in raster order; returns B values.  A token fed
    by one position has spread 0; one fed evenly by the whole map has √((grid² − 1)/6)."""
    if plan.shape[1] != grid * grid:
        raise ValueError(f"plan has {plan.shape[1]} 2D positions, not grid² = {grid * grid}")
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=plan.dtype, device=plan.device),
                            torch.arange(grid, dtype=plan.dtype, device=plan.device), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], -1)  # N_x × 2
    w = plan / plan.sum(1, keepdim=True).clamp_min(1e-30)  # each column a distribution over positions
    mean = torch.einsum("bij,ic->bjc", w, pos)
    var = torch.einsum("bij,ic->bjc", w, pos.square()) - mean.square()
    return var.clamp_min(0).sum(-1).sqrt().mean(-1)
