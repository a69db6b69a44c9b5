"""Binary metrics, their (group) bootstrap intervals, and calibration quality.

Every metric is computed from per-row weights, so one code path gives the point estimate (all
weights 1) and a thousand bootstrap resamples (multiplicities) at once. Written by hand because
scikit-learn and torchmetrics score one sample per call; a test checks every number against
scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import t as student_t

from roadwork.stats import bootstrap_weights, mcc_table

METRICS = ("mcc", "accuracy", "balanced_accuracy", "precision", "recall", "f1", "auroc", "auprc", "brier")
RESAMPLE_BLOCK = 100   # resamples per block: keeps memory at block x rows


def _ratio(numerator: np.ndarray, denominator: np.ndarray, empty: float) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), empty)


def _rank_metrics(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC (ties count one half) and average precision (scikit-learn's step-wise definition) per
    row of ``weights``; NaN where a resample holds one class only."""
    order = np.argsort(scores, kind="stable")
    ranked = scores[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])   # one block per distinct score
    w = weights[:, order]
    pos = np.add.reduceat(w * positive[order], starts, axis=1)
    neg = np.add.reduceat(w * ~positive[order], starts, axis=1)
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    below = np.cumsum(neg, axis=1) - neg
    auroc = _ratio((pos * (below + 0.5 * neg)).sum(axis=1), n_pos * n_neg, np.nan)
    pos_desc, neg_desc = pos[:, ::-1], neg[:, ::-1]
    tp, fp = np.cumsum(pos_desc, axis=1), np.cumsum(neg_desc, axis=1)
    precision = _ratio(tp, tp + fp, 0.0)
    auprc = _ratio((pos_desc * precision).sum(axis=1), n_pos, np.nan)
    return auroc, np.where(n_neg > 0, auprc, np.nan)


def weighted_metrics(probabilities: np.ndarray, labels: np.ndarray, weights: np.ndarray,
                     threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Every metric of METRICS (plus confusion counts) under each row of ``weights`` ``[R, n]``.

    A metric undefined on a resample (AUROC with one class) is NaN there; precision with no
    predicted positive is 0, as in scikit-learn.
    """
    predicted = probabilities > threshold
    positive = labels == 1
    tp, fp = weights @ (predicted & positive), weights @ (predicted & ~positive)
    n_pos, n_neg = weights @ positive, weights @ ~positive
    fn, tn = n_pos - tp, n_neg - fp
    recall = _ratio(tp, n_pos, 0.0)
    specificity = _ratio(tn, n_neg, 0.0)
    auroc, auprc = _rank_metrics(probabilities, positive, weights)
    return {
        "mcc": mcc_table(tp, fp, n_pos, n_neg),
        "accuracy": _ratio(tp + tn, n_pos + n_neg, np.nan),
        "balanced_accuracy": np.where((n_pos > 0) & (n_neg > 0), (recall + specificity) / 2, np.nan),
        "precision": _ratio(tp, tp + fp, 0.0),
        "recall": recall,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, 0.0),
        "auroc": auroc,
        "auprc": auprc,
        "brier": _ratio(weights @ (probabilities - positive) ** 2, n_pos + n_neg, np.nan),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


def _as_arrays(probabilities: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probabilities, dtype=np.float64).ravel()
    target = np.asarray(labels, dtype=np.int64).ravel()
    if probs.size == 0 or probs.shape != target.shape:
        raise ValueError(f"need equal, non-empty predictions and labels, got {probs.size} and {target.size}")
    if not np.isfinite(probs).all():
        raise ValueError(f"{int((~np.isfinite(probs)).sum())} probabilities are not finite")
    return probs, target


def binary_metrics(probabilities: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray,
                   threshold: float = 0.5) -> dict[str, float | int | None]:
    """Point estimates of METRICS at ``threshold`` (the validator rounds at 0.5) and the confusion
    counts; a metric undefined here (AUROC with one class) is None."""
    probs, target = _as_arrays(probabilities, labels)
    values = weighted_metrics(probs, target, np.ones((1, probs.size)), threshold)
    metrics: dict[str, float | int | None] = {"n": int(probs.size), "positives": int(target.sum()),
                                              "threshold": float(threshold)}
    for name in METRICS:
        value = float(values[name][0])
        metrics[name] = None if np.isnan(value) else value
    metrics |= {name: int(values[name][0]) for name in ("tp", "fp", "tn", "fn")}
    return metrics


def bootstrap_metrics(models: Sequence[Sequence[float] | np.ndarray], labels: Sequence[int] | np.ndarray,
                      groups: Sequence[int] | np.ndarray | None = None, *, threshold: float = 0.5,
                      resamples: int = 1000, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """METRICS of each model's probabilities under the same ``resamples`` bootstrap draws (whole
    groups drawn together), so differences between models are paired."""
    target = np.asarray(labels, dtype=np.int64).ravel()
    arrays = [_as_arrays(p, target)[0] for p in models]
    rng = np.random.default_rng(seed)
    group_ids = None if groups is None else np.asarray(groups)
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in arrays]
    for start in range(0, resamples, RESAMPLE_BLOCK):
        weights = bootstrap_weights(target.size, min(RESAMPLE_BLOCK, resamples - start), rng, group_ids)
        for part, probs in zip(parts, arrays):
            part.append(weighted_metrics(probs, target, weights, threshold))
    return [{name: np.concatenate([block[name] for block in part]) for name in METRICS} for part in parts]


def interval(values: np.ndarray) -> list[float] | None:
    """95% percentile interval, ignoring resamples where the metric is undefined."""
    finite = values[np.isfinite(values)]
    if finite.size < 0.5 * values.size:
        return None
    low, high = np.percentile(finite, [2.5, 97.5])
    return [round(float(low), 4), round(float(high), 4)]


def group_evidence(labels: Sequence[int] | np.ndarray, groups: Sequence[int] | np.ndarray) -> dict[str, object]:
    """How many independent units decide an estimate: the groups, their effective number (Kish:
    (sum of sizes)^2 / sum of squared sizes, so one giant drive counts about once), and how many
    groups hold each class. Fifty photos from three drives are three pieces of evidence, not fifty."""
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    sizes = np.bincount(codes).astype(float)
    positive = np.bincount(codes, weights=np.asarray(labels, dtype=float), minlength=len(sizes))
    return {"groups": int(len(sizes)), "effective_groups": round(float(sizes.sum() ** 2 / (sizes**2).sum()), 1),
            "groups_with_roadwork": int((positive > 0).sum()), "groups_without": int((positive < sizes).sum())}


def between_fold_interval(values: Sequence[float | None]) -> list[float] | None:
    """95% Student-t interval of the mean of per-fold values (None and NaN folds left out; None for
    fewer than two left): the spread between folds, which a bootstrap of a few large groups understates."""
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if finite.size < 2:
        return None
    half = float(student_t.ppf(0.975, finite.size - 1) * finite.std(ddof=1) / np.sqrt(finite.size))
    return [round(float(finite.mean()) - half, 4), round(float(finite.mean()) + half, 4)]


def with_intervals(probabilities: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray,
                   groups: Sequence[int] | np.ndarray | None = None, *, threshold: float = 0.5,
                   resamples: int = 1000, seed: int = 0) -> dict[str, object]:
    """``binary_metrics`` plus ``ci95``: a seeded (group) bootstrap 95% interval for each metric."""
    metrics: dict[str, object] = dict(binary_metrics(probabilities, labels, threshold))
    draws = bootstrap_metrics([probabilities], labels, groups, threshold=threshold, resamples=resamples,
                              seed=seed)[0]
    metrics["ci95"] = {name: interval(draws[name]) for name in METRICS}
    return metrics


def paired_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray], metric: str = "mcc") -> dict[str, object]:
    """B minus A under shared resamples: its interval and how often B came out ahead."""
    difference = b[metric] - a[metric]
    finite = difference[np.isfinite(difference)]
    return {"metric": metric, "ci95": interval(difference),
            "b_better_share": round(float(np.mean(finite > 0)), 4) if finite.size else None}


@dataclass(frozen=True)
class ReliabilityBin:
    low: float
    high: float
    count: int
    mean_probability: float | None
    positive_rate: float | None


def reliability(probabilities: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray,
                bins: int = 10) -> tuple[float, list[ReliabilityBin]]:
    """Expected calibration error of P(roadwork) over ``bins`` equal-width bins, and the bins.

    ECE = sum over bins of (share of rows) x |positive rate - mean probability|: the binary form
    (on the probability of the positive class, not the top-label confidence).
    """
    probs, target = _as_arrays(probabilities, labels)
    index = np.minimum((probs * bins).astype(int), bins - 1)
    table, error = [], 0.0
    for b in range(bins):
        rows = index == b
        count = int(rows.sum())
        if count:
            mean, rate = float(probs[rows].mean()), float(target[rows].mean())
            error += count / probs.size * abs(rate - mean)
            table.append(ReliabilityBin(b / bins, (b + 1) / bins, count, mean, rate))
        else:
            table.append(ReliabilityBin(b / bins, (b + 1) / bins, 0, None, None))
    return error, table
