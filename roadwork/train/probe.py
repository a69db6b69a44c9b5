"""Fit the probe head: standardised logistic regression, its L2 strength chosen by grouped cross-validation.

scikit-learn's L-BFGS fit is exact and takes seconds, where a gradient-descent probe is under-trained
or over-trained depending on its schedule; the fitted weights are copied into ``ProbeHead``.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

from roadwork.data.splits import kfold_splits
from roadwork.features.table import FeatureTable
from roadwork.model.head import ProbeHead, probe_inputs

INVERSE_L2 = np.logspace(-4, 1, 11)   # C grid: strong to weak regularisation
INNER_FOLDS = 5


def fit_probe(table: FeatureTable, groups: np.ndarray, seed: int, weights: np.ndarray | None = None,
              targets: np.ndarray | None = None) -> ProbeHead:
    """A ProbeHead fitted on every row of ``table`` (labels 0/1; ``groups`` keep drives together), and on
    every augmented copy of it when the table holds a feature bank (a copy keeps its photo's group).
    ``weights`` (GPS sampling) weight each row's loss as often as a weighted sampler would draw it;
    ``targets`` (distillation) replace the labels by probabilities in [0, 1]."""
    features, rows = table.all_versions()
    x = probe_inputs(features.float(), table.view_mask[rows], table.evidence[rows]).double().numpy()
    y = table.labels[rows].numpy()
    groups = np.asarray(groups)[rows.numpy()]
    row_weights = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=float)[rows.numpy()]
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / scale
    folds = min(INNER_FOLDS, len(np.unique(groups)), int(np.bincount(y, minlength=2).min()))
    if targets is not None:
        # A soft target t is a positive of weight t plus a negative of weight 1 - t: the log-loss is the
        # same, and scikit-learn's logistic regression takes hard labels only. The pair shares a group.
        t = np.asarray(targets, dtype=float)[rows.numpy()]
        z, groups = np.concatenate([z, z]), np.concatenate([groups, groups])
        y = np.concatenate([np.ones(len(t), dtype=y.dtype), np.zeros(len(t), dtype=y.dtype)])
        row_weights = np.concatenate([row_weights * t, row_weights * (1 - t)])
    if folds >= 2:
        splits = kfold_splits(y, groups, folds, seed)
        model = LogisticRegressionCV(Cs=INVERSE_L2, l1_ratios=(0.0,), cv=splits, scoring="neg_log_loss",
                                     max_iter=3000, use_legacy_attributes=False)
    else:  # too few groups or positives to cross-validate: the middle of the grid
        model = LogisticRegression(C=float(np.median(INVERSE_L2)), max_iter=3000)
    model.fit(z, y, sample_weight=row_weights)
    head = ProbeHead(table.features.shape[-1], table.evidence.shape[1])
    with torch.no_grad():
        head.mean.copy_(torch.from_numpy(mean))
        head.scale.copy_(torch.from_numpy(scale))
        head.classifier.weight.copy_(torch.from_numpy(model.coef_))
        head.classifier.bias.copy_(torch.from_numpy(model.intercept_))
    return head.eval()
