"""Soft vector quantization (SoftVQ-VAE; SelfBootTok Eq. 2-3).

Every token is replaced by a convex combination of codebook entries,

    q = softmax(-||ẑ - C||² / τ),    z = q C,

so the bottleneck is fully differentiable: encoder and codebook learn straight from the
reconstruction loss, with no straight-through estimator and no commitment loss.  As in the
SoftVQ-VAE reference, tokens and codewords are l2-normalised first (``normalize=True``); then
-||ẑ - c||² = 2 ẑ·c - 2, i.e. the cosine-similarity logits of SoftVQ with temperature τ/2.

``keep_norm=True`` makes it *gain-shape* quantization (Sabin & Gray, 1984): the codebook
quantizes each token's direction and the token's length (its gain) is multiplied back, so a token
keeps all d of its degrees of freedom instead of d - 1.  That matters from the first step: the
tokens start as whitened principal-component coefficients (the linear path), whose lengths carry
part of the image, and a unit-length code would throw that part away.  To compare the settings
(``keep_norm``, ``normalize``, τ), look at the held-out PSNR of an untrained tokenizer against the
PCA anchor at the same number of values: the closer to the anchor, the less the quantizer loses.

SelfBootTok gives every token group (global, local-1D, local-2D) its own codebook;
:class:`SoftVQ` is one such codebook, and the tokenizer holds one per group.

**Codebooks started from data.** :meth:`SoftVQ.init_codebook` sets the codewords by k-means (:func:`kmeans`,
spherical when tokens are normalised) on tokens of training images, the common data-dependent start of VQ
codebooks (SoundStream, Jukebox), instead of random directions: the codewords then sit where the tokens
are.  What it is worth is measured where it is used (``SelfBootTok.init_codebooks``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Quantized:
    """What a :class:`SoftVQ` returns: the soft-quantized tokens and the assignment."""

    z: torch.Tensor  # B×N×d, the quantized tokens  q C
    probs: torch.Tensor  # B×N×K, the soft assignment q (rows sum to 1)
    entropy_loss: torch.Tensor  # scalar: per-token entropy minus entropy of the mean assignment


class SoftVQ(nn.Module):
    """One soft codebook of ``codebook_size`` entries of dimension ``dim``.

    ``tau`` is the softmax temperature: small τ makes assignments nearly one-hot (close to
    hard VQ), large τ averages many codewords.
    """

    def __init__(self, dim: int, codebook_size: int = 1024, tau: float = 0.07, normalize: bool = True,
                 keep_norm: bool = False):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"SoftVQ temperature tau must be > 0, got {tau}")
        if keep_norm and not normalize:
            raise ValueError("keep_norm (gain-shape quantization) needs normalize=True")
        self.dim, self.codebook_size, self.tau, self.normalize = dim, codebook_size, tau, normalize
        self.keep_norm = keep_norm
        self.codebook = nn.Parameter(torch.randn(codebook_size, dim) / math.sqrt(dim))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.normalize else x

    @torch.no_grad()
    def init_codebook(self, tokens: torch.Tensor, generator: torch.Generator | None = None,
                      iters: int = 10) -> "SoftVQ":
        """Set the codewords to the k-means centroids of ``tokens`` (…×d, unquantized tokens of training
        images; at least ``codebook_size`` of them): of their directions when the codebook is normalised
        (spherical k-means, as the logits compare directions), else of the tokens themselves."""
        flat = tokens.detach().reshape(-1, tokens.shape[-1]).float()
        if flat.shape[-1] != self.dim:
            raise ValueError(f"SoftVQ expects tokens of dimension {self.dim}, got shape {tuple(tokens.shape)}")
        centroids = kmeans(flat, self.codebook_size, iters, spherical=self.normalize, generator=generator)
        self.codebook.copy_(centroids.to(self.codebook))
        return self

    def forward(self, z_hat: torch.Tensor) -> Quantized:
        """Quantize tokens ``z_hat`` (…×d); computed in fp32 whatever the autocast dtype."""
        if z_hat.shape[-1] != self.dim:
            raise ValueError(f"SoftVQ expects tokens of dimension {self.dim}, got shape {tuple(z_hat.shape)}")
        with torch.autocast(z_hat.device.type, enabled=False):
            gain = z_hat.float().norm(dim=-1, keepdim=True) if self.keep_norm else None
            z_hat, codebook = self._norm(z_hat.float()), self._norm(self.codebook.float())
            if self.normalize:  # unit vectors: -||ẑ - c||² = 2 ẑ·c - 2, one matmul
                logits = (2 * z_hat @ codebook.T - 2) / self.tau
            else:
                sq_dist = z_hat.square().sum(-1, keepdim=True) - 2 * z_hat @ codebook.T + codebook.square().sum(-1)
                logits = -sq_dist / self.tau
            probs = logits.softmax(dim=-1)
            z = self._norm(probs @ codebook)
            if gain is not None:
                z = gain * z
        return Quantized(z=z, probs=probs, entropy_loss=entropy_loss(probs))


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, iters: int = 20, spherical: bool = False,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """k centroids (k×d) of the points ``x`` (n×d, n ≥ k): k-means++ seeding, then ``iters`` Lloyd steps.

    ``spherical``: the points are l2-normalised and the centroids are unit vectors (cosine k-means).  A
    cluster that empties keeps its centroid.  ``generator`` makes the seeding reproducible."""
    if x.ndim != 2 or len(x) < k:
        raise ValueError(f"k-means needs an n×d tensor with n ≥ k = {k} points, got shape {tuple(x.shape)}")
    x = F.normalize(x.float(), dim=-1) if spherical else x.float()

    def nearest_centre(centres):  # argmin_j ||x - c_j||² = argmin_j (||c_j||² - 2 x·c_j), in cache-sized chunks
        sq = centres.square().sum(1)
        return torch.cat([torch.addmm(sq, chunk, centres.T, alpha=-2).argmin(1) for chunk in x.split(8192)])

    def draw(weights):  # one index ∝ weights (searchsorted on the cumulative sum: cheaper than multinomial)
        cum = weights.cumsum(0)
        u = torch.rand(1, generator=generator, device=x.device) * cum[-1]
        return torch.searchsorted(cum, u).clamp_max(len(weights) - 1)

    # k-means++ on at most 8k points (the next centre drawn ∝ squared distance to the nearest chosen one)
    seeds = x[torch.randperm(len(x), generator=generator, device=x.device)[: 8 * k]]
    centres = seeds[draw(torch.ones(len(seeds), device=x.device))]
    nearest = (seeds - centres).square().sum(1)
    for _ in range(1, k):
        pick = seeds[draw(nearest if nearest.sum() > 0 else torch.ones_like(nearest))]
        centres = torch.cat([centres, pick])
        nearest = torch.minimum(nearest, (seeds - pick).square().sum(1))
    for _ in range(iters):
        assign = nearest_centre(centres)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        means = sums / counts.clamp_min(1)
        means = F.normalize(means, dim=-1) if spherical else means
        centres = torch.where(counts > 0, means, centres)
    return centres


def entropy_loss(probs: torch.Tensor) -> torch.Tensor:
    """Per-token entropy minus the entropy of the average assignment (SoftVQ-VAE's regulariser).

    Minimising it makes each token commit to few codewords while the batch as a whole spreads
    over the codebook, which keeps codes from dying.
    """
    flat = probs.reshape(-1, probs.shape[-1])
    per_token = -(flat * flat.clamp_min(1e-12).log()).sum(-1).mean()
    mean = flat.mean(0)
    return per_token + (mean * mean.clamp_min(1e-12).log()).sum()


@torch.no_grad()
def codebook_usage(probs: torch.Tensor) -> dict[str, float]:
    """Usage statistics of a codebook from soft assignments (…×K), over all tokens given.

    - ``perplexity``: exp of the entropy of the average soft assignment (1 … K; K = uniform use);
    - ``used_fraction``: fraction of codewords that are the arg-max of at least one token;
    - ``assignment_entropy``: mean per-token entropy in nats (0 = one-hot, log K = uniform).
    """
    flat = probs.reshape(-1, probs.shape[-1]).float()
    mean = flat.mean(0)
    perplexity = torch.exp(-(mean * mean.clamp_min(1e-12).log()).sum())
    used = torch.bincount(flat.argmax(-1), minlength=flat.shape[-1]).gt(0).float().mean()
    token_entropy = -(flat * flat.clamp_min(1e-12).log()).sum(-1).mean()
    return {
        "perplexity": perplexity.item(),
        "used_fraction": used.item(),
        "assignment_entropy": token_entropy.item(),
    }


def kl_to_uniform(probs: torch.Tensor) -> torch.Tensor:
    """L_KL of Eq. 4 for one codebook: KL(q̄ ‖ U) = Σ_k q̄_k log(K q̄_k), where q̄ is the soft assignment
    averaged over the batch's tokens and U the uniform prior over the K codewords.

    SoftVQ's assignment q is a posterior over codewords; matching its aggregate to the uniform
    prior (rather than each token's q, which would push every token towards the average codeword)
    keeps the whole codebook in use without blurring individual tokens.  0 when every codeword
    gets equal mass, log K when one codeword gets it all."""
    mean = probs.reshape(-1, probs.shape[-1]).float().mean(0)
    return (mean * (mean.clamp_min(1e-12) * mean.shape[0]).log()).sum()
