"""The exact flow-matching velocity of a class-conditional Gaussian: where the generator starts.

With data ``x_1 ~ N(μ_y, Σ_y)``, noise ``x_0 ~ N(0, I)`` and the linear path ``x_t = t x_1 + (1 − t) x_0``
(SiT's convention, :mod:`sbt_lib.generation.path`), the velocity flow matching regresses,
``E[x_1 − x_0 | x_t = x]``, has a closed form.  In the eigenbasis ``Σ_y = U diag(λ) Uᵀ``:

    v(x, t, y) = μ_y + U diag((tλ − (1 − t)) / (t²λ + (1 − t)²)) Uᵀ (x − t μ_y)

and its flow carries ``N(0, I)`` exactly onto ``N(μ_y, Σ_y)``.

Fitted to a frozen tokenizer's normalised training tokens (a mean and a full covariance per class, and one
of all tokens for the null class of classifier-free guidance), it is the best generator that knows only
the tokens' first two moments: the generation side of the PCA anchor.  :class:`~sbt_lib.models.sit.SiT`
adds it to its output (``prior="gaussian"``), so, its own output starting at zero, training begins where
the Gaussian ends and the network learns the rest, as the tokenizer begins where PCA ends.  The tokens of
a linear-like code are close to white (every direction of unit variance), so a network trained from zero
spends its first thousands of steps rediscovering these covariances.

Memory: one D×D basis per class (D = tokens × channels), so it suits few classes (CIFAR-10's 10 at
D = 256: 3 MB), not ImageNet's 1000 at D = 2048 (16 GB).
"""
from __future__ import annotations

import torch
from torch import nn

MAX_BASIS_NUMBERS = 2**28  # 1 GiB of float32: beyond that, fitting one covariance per class is the wrong tool


class GaussianFlow(nn.Module):
    """``flow(x, t, y)``: the closed-form velocity at tokens ``x`` (B×…, D numbers each) and times ``t`` (B)
    of the Gaussian of class ``y`` (B; ``num_classes`` is the null class: all classes together)."""

    def __init__(self, num_classes: int, dim: int, min_variance: float = 1e-4):
        super().__init__()
        if (num_classes + 1) * dim * dim > MAX_BASIS_NUMBERS:
            raise ValueError(f"a Gaussian prior for {num_classes} classes over {dim} numbers per sample needs "
                             f"{(num_classes + 1) * dim * dim * 4 / 2**30:.1f} GiB of covariance bases; "
                             "use prior='none' (the generator then learns from zero velocity)")
        self.num_classes, self.dim, self.min_variance = num_classes, dim, min_variance
        self.register_buffer("mean", torch.zeros(num_classes + 1, dim))
        self.register_buffer("basis", torch.eye(dim).repeat(num_classes + 1, 1, 1))  # U per class, columns
        self.register_buffer("variance", torch.ones(num_classes + 1, dim))           # λ per class

    @torch.no_grad()
    def fit(self, x: torch.Tensor, y: torch.Tensor) -> "GaussianFlow":
        """Mean and covariance of the samples ``x`` (B×…) of each class in ``y`` (B), and of all of them for
        the null class; eigenvalues below ``min_variance`` are raised to it (a class with fewer samples
        than dimensions has a singular covariance)."""
        x = x.reshape(len(x), -1).double()
        if x.shape[1] != self.dim:
            raise ValueError(f"GaussianFlow over {self.dim} numbers per sample got {x.shape[1]}")
        y = torch.as_tensor(y, device=x.device)
        for k in range(self.num_classes + 1):
            xk = x if k == self.num_classes else x[y == k]
            if len(xk) < 2:
                raise ValueError(f"class {k} has {len(xk)} training sample(s); a Gaussian per class needs two "
                                 "or more (give every class samples, or use prior='none')")
            variance, basis = torch.linalg.eigh(torch.cov(xk.T))
            self.mean[k] = xk.mean(0).to(self.mean)
            self.basis[k] = basis.to(self.basis)
            self.variance[k] = variance.clamp_min(self.min_variance).to(self.variance)
        return self

    @torch.autocast("cuda", enabled=False)  # in the buffers' precision: the ratio below is sharp near t = 1
    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(len(x), -1).to(self.mean.dtype)
        t = torch.as_tensor(t, dtype=flat.dtype, device=x.device).expand(len(x))
        v = torch.empty_like(flat)
        for k in y.unique().tolist():                                  # one matmul pair per class present
            i = (y == k).nonzero().squeeze(1)
            tk, mu, basis, lam = t[i, None], self.mean[k], self.basis[k], self.variance[k]
            r = (flat[i] - tk * mu) @ basis                             # coordinates in the eigenbasis
            r = r * (tk * lam - (1 - tk)) / (tk * tk * lam + (1 - tk) ** 2)
            v[i] = mu + r @ basis.T
        return v.reshape(x.shape).to(x.dtype)
