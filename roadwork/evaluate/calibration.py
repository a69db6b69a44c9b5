"""Decision threshold and calibration: make 0.5 the right cut for the served probability.

The validator rounds the miner's answer at 0.5, so the threshold that maximises validation MCC is
folded into the probability itself: p = sigmoid((z - z_t) / T), where z is the head's logit
margin, z_t the margin at the MCC-best cut, and T a temperature fitted by likelihood.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.optimize import minimize_scalar

log = logging.getLogger(__name__)
TEMPERATURE_BOUNDS = (0.05, 20.0)


@dataclass(frozen=True)
class Calibration:
    margin_threshold: float = 0.0   # z_t: logit margin where the decision flips
    temperature: float = 1.0

    def __call__(self, margins: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((margins - self.margin_threshold) / self.temperature)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> Calibration:
        return cls(margin_threshold=float(data["margin_threshold"]), temperature=float(data["temperature"]))


def mcc_at_every_cut(margins: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cuts, MCC of ``margins > cut``) for a cut below, between and above all distinct margins.

    One sort and cumulative counts, O(n log n); written by hand because scikit-learn and
    torchmetrics score one threshold per call, which is quadratic over all cuts.
    """
    order = np.argsort(margins, kind="stable")
    sorted_margins, sorted_labels = margins[order], labels[order]
    distinct = np.flatnonzero(np.diff(sorted_margins)) + 1          # first index of each new value
    starts = np.concatenate([[0], distinct, [len(margins)]])          # cut k: indices >= starts[k] predicted 1
    values = np.unique(sorted_margins)
    cuts = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2.0, [values[-1] + 1.0]])
    positives_below = np.concatenate([[0], np.cumsum(sorted_labels)])[starts]
    total_pos = labels.sum()
    total_neg = len(labels) - total_pos
    tp = (total_pos - positives_below).astype(np.float64)
    fp = ((len(labels) - starts) - (total_pos - positives_below)).astype(np.float64)
    fn, tn = total_pos - tp, total_neg - fp
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        mcc = np.where(denominator > 0, (tp * tn - fp * fn) / denominator, 0.0)
    return cuts, mcc


def best_mcc_threshold(margins: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, MCC): the middle of the widest best-MCC plateau, robust on small validation sets."""
    margins = np.asarray(margins, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.min() == labels.max() or np.ptp(margins) == 0:
        return float(np.median(margins)), 0.0
    cuts, scores = mcc_at_every_cut(margins, labels)
    best = scores.max()
    winners = np.flatnonzero(np.isclose(scores, best))
    runs = np.split(winners, np.flatnonzero(np.diff(winners) > 1) + 1)
    widest = max(runs, key=lambda run: cuts[run[-1]] - cuts[run[0]])
    return float((cuts[widest[0]] + cuts[widest[-1]]) / 2.0), float(best)


def fit_calibration(margins: np.ndarray, labels: np.ndarray) -> Calibration:
    """Threshold at the best validation MCC, then the likelihood-optimal temperature around it.

    Degenerate validation data (one class, identical margins, no positive MCC anywhere) gives
    a warning: the served 0.5 cut then carries no information from this run.
    """
    margins = np.asarray(margins, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    threshold, best = best_mcc_threshold(margins, labels)
    if best <= 0.0:
        log.warning("calibration: no cut of the validation margins has a positive MCC (best %.3f)", best)
        return Calibration(threshold, 1.0)
    shifted = margins - threshold

    def nll(log_t: float) -> float:
        z = shifted / math.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, z) - labels * z))

    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    temperature = float(math.exp(minimize_scalar(nll, bounds=(low, high), method="bounded").x))
    if not TEMPERATURE_BOUNDS[0] * 1.01 < temperature < TEMPERATURE_BOUNDS[1] * 0.99:
        log.warning("calibration: temperature %.3g is at its bound %s", temperature, TEMPERATURE_BOUNDS)
    return Calibration(threshold, temperature)
