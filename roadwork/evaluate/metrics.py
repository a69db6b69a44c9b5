"""Binary metrics on probabilities (torchmetrics computes; this names and bundles them)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_f1_score,
    binary_matthews_corrcoef,
    binary_precision,
    binary_recall,
)


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
