"""Decision threshold and calibration: make 0.5 the right cut for the served probability.

The validator rounds the miner's answer at 0.5, so the threshold that maximises validation MCC is
folded into the probability itself: p = sigmoid((z - z_t) / T), where z is the head's logit
margin, z_t the margin at the MCC-best cut, and T a temperature fitted by likelihood.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from sklearn.metrics import matthews_corrcoef


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


def best_mcc_threshold(margins: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, MCC): the middle of the widest best-MCC plateau, robust on small validation sets."""
    order = np.unique(margins)
    if order.size < 2 or labels.min() == labels.max():
        return 0.0, 0.0
    candidates = np.concatenate([[order[0] - 1.0], (order[:-1] + order[1:]) / 2.0, [order[-1] + 1.0]])
    scores = np.array([matthews_corrcoef(labels, margins > c) for c in candidates])
    best = scores.max()
    winners = np.flatnonzero(np.isclose(scores, best))
    runs = np.split(winners, np.flatnonzero(np.diff(winners) > 1) + 1)
    widest = max(runs, key=lambda run: candidates[run[-1]] - candidates[run[0]])
    return float((candidates[widest[0]] + candidates[widest[-1]]) / 2.0), float(best)


def fit_calibration(margins: np.ndarray, labels: np.ndarray) -> Calibration:
    margins = np.asarray(margins, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    threshold, _ = best_mcc_threshold(margins, labels)
    shifted = margins - threshold

    def nll(log_t: float) -> float:
        z = shifted / math.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, z) - labels * z))

    if labels.min() == labels.max():
        return Calibration(threshold, 1.0)
    result = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return Calibration(threshold, float(math.exp(result.x)))
