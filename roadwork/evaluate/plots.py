"""The report's figures, as PNG bytes (matplotlib's object API: no pyplot state, no display)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from roadwork.evaluate.metrics import ReliabilityBin
from roadwork.stats import bootstrap_mcc_curves

THRESHOLDS = np.round(np.linspace(0.01, 0.99, 99), 2)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=96)
    return buffer.getvalue()


def threshold_curve(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """MCC of ``probabilities > t`` for every t in THRESHOLDS."""
    return bootstrap_mcc_curves(probabilities, labels, THRESHOLDS, np.ones((1, len(labels))))[0]


def confusion_png(metrics: dict[str, Any], title: str) -> bytes:
    figure = Figure(figsize=(3.2, 3.0))
    axes = figure.add_subplot()
    table = np.array([[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]])
    axes.imshow(table, cmap="Blues")
    for (row, col), count in np.ndenumerate(table):
        axes.text(col, row, str(count), ha="center", va="center",
                  color="white" if count > table.max() / 2 else "black", fontsize=14)
    axes.set_xticks([0, 1], ["no roadwork", "roadwork"])
    axes.set_yticks([0, 1], ["no roadwork", "roadwork"])
    axes.set_xlabel("predicted (p > 0.5)")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=10)
    return _png(figure)


def curves_png(models: Sequence[tuple[str, np.ndarray]], labels: np.ndarray) -> bytes:
    """ROC, precision-recall and threshold-MCC curves, one line per model."""
    figure = Figure(figsize=(12, 3.8))
    roc, pr, mcc = figure.subplots(1, 3)
    both_classes = 0 < labels.sum() < len(labels)
    for name, probabilities in models:
        if both_classes:
            fpr, tpr, _ = roc_curve(labels, probabilities)
            roc.plot(fpr, tpr, label=name)
            precision, recall, _ = precision_recall_curve(labels, probabilities)
            pr.step(recall, precision, where="post", label=name)
        mcc.plot(THRESHOLDS, threshold_curve(probabilities, labels), label=name)
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    pr.axhline(float(np.mean(labels)), color="grey", linestyle=":", linewidth=1)
    pr.set(xlabel="recall", ylabel="precision", title="precision-recall", ylim=(0, 1.02))
    mcc.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    mcc.set(xlabel="threshold on the served probability", ylabel="MCC",
            title="MCC by threshold (the validator cuts at 0.5)")
    for axes in (roc, pr, mcc):
        axes.grid(alpha=0.3)
        if axes is mcc or both_classes:
            axes.legend(fontsize=8)
        else:
            axes.text(0.5, 0.5, "one class only: undefined", ha="center", transform=axes.transAxes)
    return _png(figure)


def reliability_png(models: Sequence[tuple[str, list[ReliabilityBin], list[ReliabilityBin]]]) -> bytes:
    """Positive rate against mean probability per bin, before (the head's own sigmoid) and after
    calibration, one panel per model; marker area grows with the bin's count."""
    figure = Figure(figsize=(4.2 * len(models), 3.8))
    for axes, (name, before, after) in zip(np.atleast_1d(figure.subplots(1, len(models))), models):
        axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        for bins, label, marker in ((before, "before calibration", "s"), (after, "served (calibrated)", "o")):
            filled = [b for b in bins if b.count]
            total = sum(b.count for b in filled)
            axes.plot([b.mean_probability for b in filled], [b.positive_rate for b in filled], marker=marker,
                      label=label)
            axes.scatter([b.mean_probability for b in filled], [b.positive_rate for b in filled],
                         s=[400 * b.count / total for b in filled], alpha=0.25)
        axes.set(xlabel="mean predicted P(roadwork)", ylabel="share that is roadwork", xlim=(0, 1), ylim=(0, 1),
                 title=name)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, loc="upper left")
    return _png(figure)
