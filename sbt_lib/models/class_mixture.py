"""A mixture of Gaussians per class over a tokenizer's tokens: how far from Gaussian each class is.

The class-conditional Gaussian (:mod:`~sbt_lib.models.gaussian_flow`) knows each class's first two moments and
nothing else.  A mixture of ``K`` full-covariance Gaussians per class, fitted by EM (scikit-learn's
``GaussianMixture``), knows more as ``K`` grows, towards a density that nearly copies the training tokens.  Its
samples, decoded beside the Gaussian's (``K = 1``) and the SiT's at guidance 1 (a mixture has no guidance), measure
how much structure beyond two moments the tokens hold for a generator to learn, and how much of it the generator has
learnt.  It is an anchor of the generator benchmark, never a generator of the workbook: it has no time, no
guidance, and at large ``K`` it memorises.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.mixture import GaussianMixture


class ClassMixture:
    """``ClassMixture(components).fit(x, y)``, then ``sample(classes, seed)``: tokens of each class drawn from
    that class's mixture of ``components`` Gaussians (``x``: B×… tokens, ``y``: B class indices)."""

    def __init__(self, components: int, seed: int = 0, reg_covar: float = 1e-5, max_iter: int = 200):
        if components < 1:
            raise ValueError(f"a mixture needs at least one component, got {components}")
        self.components, self.seed, self.reg_covar, self.max_iter = components, seed, reg_covar, max_iter
        self.mixtures: dict[int, GaussianMixture] = {}
        self.shape: tuple[int, ...] = ()

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> "ClassMixture":
        """One mixture per class present in ``y``, fitted to that class's tokens (in float64)."""
        flat = x.reshape(len(x), -1).double().cpu().numpy()
        labels = torch.as_tensor(y).cpu().numpy()
        self.shape = tuple(x.shape[1:])
        for k in np.unique(labels).tolist():
            xk = flat[labels == k]
            if len(xk) < self.components + 1:
                raise ValueError(f"class {k} has {len(xk)} samples, too few for {self.components} components; "
                                 "use fewer components")
            self.mixtures[k] = GaussianMixture(self.components, covariance_type="full", reg_covar=self.reg_covar,
                                               max_iter=self.max_iter, random_state=self.seed).fit(xk)
        return self

    def sample(self, classes: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Tokens (float32, len(classes)×…) with row ``i`` drawn from class ``classes[i]``'s mixture; the same
        ``seed`` gives the same tokens."""
        if not self.mixtures:
            raise RuntimeError("fit the mixture before sampling from it")
        classes = torch.as_tensor(classes).cpu()
        out = torch.empty(len(classes), int(np.prod(self.shape)), dtype=torch.float64)
        rng = np.random.default_rng(seed)
        for k in classes.unique().tolist():
            if k not in self.mixtures:
                raise ValueError(f"class {k} was not in the data the mixture was fitted to")
            rows = (classes == k).nonzero().squeeze(1)
            mixture = self.mixtures[k]
            mixture.random_state = int(rng.integers(2**31))  # GaussianMixture.sample draws from its random_state
            drawn, _ = mixture.sample(len(rows))             # grouped by component: shuffle them
            out[rows] = torch.from_numpy(drawn[rng.permutation(len(rows))])
        return out.float().reshape(len(classes), *self.shape)
