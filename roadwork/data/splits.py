"""Reproducible, stratified splits that keep groups together (scikit-learn does the work).

Every split takes one group id per row (``roadwork.data.groups``): rows of one group always land on
the same side, so frames of one drive never sit on both sides of a validation split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from roadwork.data.records import DatasetError


def _check(labels: Sequence[int], groups: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels_array = np.asarray(labels)
    groups_array = np.asarray(groups)
    if labels_array.shape != groups_array.shape:
        raise ValueError(f"need one group per label, got {labels_array.shape} and {groups_array.shape}")
    return labels_array, groups_array


def kfold_splits(labels: Sequence[int], groups: Sequence[int] | np.ndarray, k: int,
                 seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, grouped k-fold (train, held-out) index arrays; every row is held out exactly once."""
    labels_array, groups_array = _check(labels, groups)
    n_groups = len(np.unique(groups_array))
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    if n_groups < k:
        raise DatasetError(f"{k} folds need at least {k} groups of photos; the data has {n_groups}")
    fewest = int(np.bincount(labels_array).min()) if len(np.unique(labels_array)) > 1 else 0
    if fewest < k:
        raise DatasetError(f"{k} folds need at least {k} photos of each class; the rarer class has {fewest}")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    indices = np.arange(len(labels_array))
    return [(np.sort(train), np.sort(held)) for train, held in splitter.split(indices, labels_array, groups_array)]


def train_val_split(labels: Sequence[int], groups: Sequence[int] | np.ndarray, val_fraction: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, validation) index arrays holding out about ``val_fraction`` of the groups.

    One fold of a stratified group k-fold with k = round(1 / val_fraction), so both classes land
    on both sides whenever the groups allow it.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    labels_array, groups_array = _check(labels, groups)
    if len(labels_array) < 4:
        raise DatasetError(f"need at least 4 labelled samples to hold out validation data, got {len(labels_array)}")
    k = max(2, round(1.0 / val_fraction))
    fewest = int(np.bincount(labels_array).min()) if len(np.unique(labels_array)) > 1 else 0
    # Few groups or few photos of a class: hold out a larger share rather than fail (2 = half).
    k = min(k, len(np.unique(groups_array)), max(fewest, 2))
    if k < 2:
        raise DatasetError("all photos form a single group: nothing can be held out for validation "
                           "(name a group column or use --val-data)")
    return kfold_splits(labels_array, groups_array, k, seed)[0]
