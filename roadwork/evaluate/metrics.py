"""Binary metrics on probabilities (torchmetrics computes; this names and bundles them), and bootstrap
intervals that resample whole groups (frames of one drive are not independent evidence)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_f1_score,
    binary_matthews_corrcoef,
    binary_precision,
    binary_recall,
)

from roadwork.serve.calibration import bootstrap_weights, mcc_table


def binary_metrics(probabilities: Sequence[float] | torch.Tensor, labels: Sequence[int] | torch.Tensor,
                   threshold: float = 0.5) -> dict[str, float | int | None]:
    """MCC, accuracy, AUROC, precision, recall and F1 at ``threshold`` (the validator rounds at 0.5)."""
    probs = torch.as_tensor(probabilities, dtype=torch.float64).flatten()
    target = torch.as_tensor(labels, dtype=torch.long).flatten()
    if probs.numel() == 0 or probs.shape != target.shape:
        raise ValueError(f"need equal, non-empty predictions and labels, got {probs.numel()} and {target.numel()}")
    both_classes = bool(target.min() != target.max())
    return {
        "n": int(target.numel()),
        "positives": int(target.sum()),
        "threshold": float(threshold),
        "mcc": float(binary_matthews_corrcoef(probs, target, threshold=threshold)),
        "accuracy": float(binary_accuracy(probs, target, threshold=threshold)),
        "auroc": float(binary_auroc(probs, target)) if both_classes else None,
        "precision": float(binary_precision(probs, target, threshold=threshold)),
        "recall": float(binary_recall(probs, target, threshold=threshold)),
        "f1": float(binary_f1_score(probs, target, threshold=threshold)),
    }


def mcc_interval(probabilities: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray,
                 groups: Sequence[int] | np.ndarray | None = None, *, threshold: float = 0.5,
                 resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of MCC at ``threshold`` over a (group) bootstrap."""
    predicted = np.asarray(probabilities, dtype=np.float64) > threshold
    positive = np.asarray(labels) == 1
    weights = bootstrap_weights(len(predicted), resamples, np.random.default_rng(seed),
                                None if groups is None else np.asarray(groups))
    tp, fp = weights @ (predicted & positive), weights @ (predicted & ~positive)
    mcc = mcc_table(tp, fp, weights @ positive, weights @ ~positive)
    low, high = np.percentile(mcc, [2.5, 97.5])
    return float(low), float(high)
