"""Linear probes: how linearly decodable a ground-truth factor is from a group of tokens.

A probe is a multinomial logistic regression (scikit-learn) on the flattened, standardised tokens
of one group, fit on training images and scored on held-out ones.  Accuracy well above chance
means the group carries the factor in a linearly readable form; at chance, it does not.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def probe_accuracy(train_x, train_y, test_x, test_y, c: float = 0.1, max_iter: int = 300, tol: float = 1e-3) -> float:
    """Held-out accuracy of a logistic-regression probe (``c``: inverse L2 strength).

    The defaults (a fairly strong L2 penalty, a loose tolerance) keep a probe quick to fit: a probe is a
    read-out of what the features hold, so a weaker penalty that converges more slowly is not needed."""
    train_x, test_x = _flat(train_x), _flat(test_x)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, tol=tol))
    probe.fit(train_x, np.asarray(train_y))
    return float(probe.score(test_x, np.asarray(test_y)))


def chance_level(train_y, test_y) -> float:
    """Accuracy of always guessing the most frequent training class."""
    values, counts = np.unique(np.asarray(train_y), return_counts=True)
    return float((np.asarray(test_y) == values[counts.argmax()]).mean())


def probe_table(train_feats: dict, test_feats: dict, train_factors: dict, test_factors: dict, **kw) -> dict:
    """Accuracy of a probe for every (factor, feature group), plus the chance level per factor.

    ``*_feats``: group name → N×… features; ``*_factors``: factor name → N integer labels.
    Returns ``{factor: {group: accuracy, ..., "chance": accuracy}}``.
    """
    if set(train_feats) != set(test_feats):
        raise ValueError(f"train and test feature groups differ: {sorted(train_feats)} vs {sorted(test_feats)}")
    table = {}
    for factor in train_factors:
        ytr, yte = train_factors[factor], test_factors[factor]
        row = {g: probe_accuracy(train_feats[g], ytr, test_feats[g], yte, **kw) for g in train_feats}
        table[factor] = {**row, "chance": chance_level(ytr, yte)}
    return table


def _flat(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    return x.reshape(len(x), -1)
