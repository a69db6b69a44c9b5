"""What the target network would pay for these predictions (DESIGN section 2).

Reward = (0.5 x max(MCC over the last 100 answers, 0) + 0.5 x accuracy over the last 10) ^ 3, on
challenges that are 50/50 by label. Each simulated sequence draws every challenge's label by a coin
flip and then a photo of that label from the evaluation set (with replacement), and scores the
answers as the validator does: rounded at 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from roadwork.stats import mcc_table

MCC_WINDOW, ACCURACY_WINDOW = 100, 10


def simulate_reward(probabilities: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, *,
                    sequences: int = 10000, seed: int = 0) -> dict[str, Any] | None:
    """Mean, spread and percentiles of the reward over ``sequences`` random challenge windows; None
    when the set holds one class (no 50/50 challenge stream can be drawn from it)."""
    predicted = np.asarray(probabilities, dtype=np.float64) > 0.5
    target = np.asarray(labels, dtype=np.int64)
    positives, negatives = np.flatnonzero(target == 1), np.flatnonzero(target == 0)
    if not len(positives) or not len(negatives):
        return None
    rng = np.random.default_rng(seed)
    is_positive = rng.random((sequences, MCC_WINDOW)) < 0.5
    rows = np.where(is_positive, positives[rng.integers(0, len(positives), is_positive.shape)],
                    negatives[rng.integers(0, len(negatives), is_positive.shape)])
    answers = predicted[rows]
    tp, fp = (answers & is_positive).sum(axis=1), (answers & ~is_positive).sum(axis=1)
    mcc = np.maximum(mcc_table(tp, fp, is_positive.sum(axis=1), (~is_positive).sum(axis=1)), 0.0)
    recent = (answers == is_positive)[:, -ACCURACY_WINDOW:].mean(axis=1)
    reward = (0.5 * mcc + 0.5 * recent) ** 3
    p05, p50, p95 = np.percentile(reward, [5, 50, 95])
    return {"sequences": sequences, "seed": seed, "mean": round(float(reward.mean()), 4),
            "std": round(float(reward.std()), 4), "p05": round(float(p05), 4), "median": round(float(p50), 4),
            "p95": round(float(p95), 4), "mcc_mean": round(float(mcc.mean()), 4),
            "accuracy_mean": round(float(recent.mean()), 4)}
