"""Reproducible stratified splits (scikit-learn does the work; this maps samples to index arrays)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from roadwork.data.records import DatasetError, Sample


def _labels(samples: Sequence[Sample]) -> np.ndarray:
    missing = [s.file_name for s in samples if s.label is None]
    if missing:
        raise DatasetError(f"splitting needs labels; unlabelled samples include {missing[:3]}")
    return np.array([s.label for s in samples])


def train_val_split(samples: Sequence[Sample], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, validation) index arrays; both classes land in both parts when possible."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    labels = _labels(samples)
    counts = np.bincount(labels, minlength=2)
    n_val = max(1, round(len(samples) * val_fraction))
    if len(samples) < 4 or n_val >= len(samples):
        raise DatasetError(f"need at least 4 labelled samples to hold out validation data, got {len(samples)}")
    stratify = labels if counts.min() >= 2 and n_val >= 2 else None
    train, val = train_test_split(np.arange(len(samples)), test_size=n_val, random_state=seed, shuffle=True, stratify=stratify)
    return np.sort(train), np.sort(val)


def kfold_splits(
    samples: Sequence[Sample], k: int, seed: int, group_by: str | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (train, validation) index arrays, optionally keeping groups (e.g. a city) together.

    ``group_by`` names a Sample attribute or an extra column; rows where it is NULL form one group each.
    """
    labels = _labels(samples)
    indices = np.arange(len(samples))
    if group_by is None:
        folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(indices, labels)
    else:
        groups = []
        for i, sample in enumerate(samples):
            value = getattr(sample, group_by, None) if hasattr(sample, group_by) else sample.extra.get(group_by)
            groups.append(f"\0row{i}" if value is None else str(value))
        folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(indices, labels, groups)
    return [(np.sort(train), np.sort(val)) for train, val in folds]
