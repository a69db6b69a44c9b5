"""Counting statistics shared by calibration, training and evaluation: MCC from confusion counts,
bootstrap weights that draw whole groups, and MCC over every cut under every resample.

A leaf: it imports nothing of roadwork, so every layer may use it.
"""

from __future__ import annotations

import numpy as np


def mcc_table(tp: np.ndarray, fp: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """MCC from counts (broadcasting); 0 where a row or column of the confusion matrix is empty."""
    fn, tn = positives - tp, negatives - fp
    denominator = np.sqrt(np.maximum((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn), 0.0))  # rounding of weighted counts
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (tp * tn - fp * fn) / np.where(denominator > 0, denominator, 1.0), 0.0)


def bootstrap_weights(n: int, resamples: int, rng: np.random.Generator,
                      groups: np.ndarray | None = None) -> np.ndarray:
    """``[resamples, n]`` multiplicities of a bootstrap; with ``groups``, whole groups are drawn together
    (frames of one drive are not independent evidence)."""
    if groups is None:
        draws = rng.integers(0, n, size=(resamples, n))
        return np.stack([np.bincount(row, minlength=n) for row in draws]).astype(np.float64)
    _, codes = np.unique(groups, return_inverse=True)
    n_groups = int(codes.max()) + 1
    draws = rng.integers(0, n_groups, size=(resamples, n_groups))
    group_counts = np.stack([np.bincount(row, minlength=n_groups) for row in draws]).astype(np.float64)
    return group_counts[:, codes]


def bootstrap_mcc_curves(margins: np.ndarray, labels: np.ndarray, cuts: np.ndarray,
                         weights: np.ndarray) -> np.ndarray:
    """MCC of ``margins > cut`` for every cut (sorted ascending) under every resample: ``[resamples, cuts]``.

    Written by hand: scikit-learn and torchmetrics score one threshold and one sample per call;
    here one sort and cumulative counts give every cut under every resample at once.
    """
    below = np.searchsorted(cuts, margins, side="left")     # number of cuts strictly below each margin
    positive = labels == 1
    n_bins = len(cuts) + 1
    pos_bins = np.stack([np.bincount(below, w * positive, minlength=n_bins) for w in weights])
    neg_bins = np.stack([np.bincount(below, w * ~positive, minlength=n_bins) for w in weights])
    # margin > cut_j  <=>  below > j: the counts of predicted positives at cut j sum bins j+1 ...
    tp = np.cumsum(pos_bins[:, ::-1], axis=1)[:, ::-1][:, 1:]
    fp = np.cumsum(neg_bins[:, ::-1], axis=1)[:, ::-1][:, 1:]
    return mcc_table(tp, fp, pos_bins.sum(1, keepdims=True), neg_bins.sum(1, keepdims=True))
