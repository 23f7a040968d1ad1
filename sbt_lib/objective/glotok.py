"""GloTok's codebook-wise histogram relation learning (``../shared/paper/glotok-summary.txt``): the
dataset-level semantic relations of a pretrained model are transferred to the codebook, without the
pretrained model in the training loop (its features of the training images are computed once and cached,
as REPA's are).

Interpretations (the summary gives the idea, not the recipe):

- **The histogram of an image** is the mean of its global tokens' soft code assignments: a distribution
  over the K codewords (B×K).  Images with similar content should use similar codewords.
- **The relation** is the image-to-image similarity within a batch: cosine similarities between the
  histograms (B×B), against cosine similarities between the teacher's global features of the same images
  (B×B; the teacher's patch features pooled to one vector per image).
- **The alignment** is a relational distillation: each image's row of similarities to the other images
  (the diagonal left out) becomes a distribution by a softmax at temperature ``TAU``; the loss is the KL
  divergence from the teacher's distribution to the histograms', averaged over images.  Only the ranking
  and relative sizes of the similarities matter, not their scale (cosines of histograms and of features
  live on different scales).
- The residual recovery module, GloTok's other part, is a part of the tokenizer:
  :class:`~sbt_lib.models.residual.ResidualRecovery`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

TAU = 0.1  # temperature of the similarity rows


def histograms(probs: torch.Tensor) -> torch.Tensor:
    """B×N×K soft code assignments → B×K per-image code histograms (rows sum to 1)."""
    return probs.float().mean(1)


def _relation(x: torch.Tensor) -> torch.Tensor:
    """B×D → B×(B−1): each row's cosine similarities to the other rows, over ``TAU``, as log-probabilities."""
    x = F.normalize(x.float().flatten(1), dim=-1)
    sim = x @ x.T / TAU
    off = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
    return F.log_softmax(sim[off].view(len(x), len(x) - 1), dim=-1)


def histogram_relation_loss(probs: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher relation ‖ histogram relation), averaged over the images of the batch (see the module
    docstring).  ``probs``: B×N×K soft assignments; ``teacher``: B×C (or B×1×C) teacher features."""
    if len(probs) < 3:
        raise ValueError(f"the histogram relation needs a batch of at least 3 images, got {len(probs)}")
    with torch.autocast(probs.device.type, enabled=False):
        target = _relation(teacher).exp()
        return F.kl_div(_relation(histograms(probs)), target, reduction="batchmean")
