"""Groups of photos that must stay on one side of every split, and the leakage check between sets.

Frames of one drive are near-copies of each other: a random split puts them on both sides and the
validation score measures memory, not generalisation (measured on 450 real photos: 0.92-1.00
reported, 0.69 on unseen drives). So every split keeps a group together. Groups come from a column
(``group``, ``sequence``, ``drive``, ``session``, ``video`` or ``trip``, or the one named), else from
near-duplicate content: two photos whose global-view backbone features have a cosine similarity
(after centring on the dataset mean) of at least ``similarity`` are linked, and linked photos form
one group. Identical files (same SHA-256) are always one group.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from roadwork.config import AUTO, NEAR_DUPLICATE_SIMILARITY, ROWS
from roadwork.data.records import DatasetError, Sample

log = logging.getLogger(__name__)

GROUP_COLUMNS = ("group", "sequence", "drive", "session", "video", "trip")
_BLOCK = 2048


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def labels(self) -> np.ndarray:
        roots = np.array([self.find(i) for i in range(len(self.parent))])
        return np.unique(roots, return_inverse=True)[1]


@dataclass
class Grouping:
    """One group id per row, and how the groups were found (reported in metrics.json)."""

    ids: np.ndarray
    source: str
    duplicate_files: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return int(self.ids.max()) + 1 if len(self.ids) else 0

    def summary(self) -> dict[str, object]:
        sizes = np.bincount(self.ids) if len(self.ids) else np.zeros(0, dtype=int)
        return {"source": self.source, "groups": self.count, "rows": len(self.ids),
                "largest": int(sizes.max()) if len(sizes) else 0,
                "identical_files_grouped": self.duplicate_files, "notes": self.notes}


def find_group_column(samples: Sequence[Sample]) -> str | None:
    """The first of GROUP_COLUMNS that holds a value in some row."""
    for column in GROUP_COLUMNS:
        if any(s.extra.get(column) is not None for s in samples):
            return column
    return None


def centred_unit_vectors(features: Tensor) -> Tensor:
    """Centred, unit-length vectors: raw CNN features are all positive, so their plain cosine
    similarity is high for any two photos; centring keeps what tells photos apart."""
    x = features.float()
    x = x - x.mean(dim=0, keepdim=True)
    return torch.nn.functional.normalize(x, dim=1)


def similar_pairs(a: Tensor, b: Tensor | None, similarity: float) -> list[tuple[int, int, float]]:
    """(i, j, cosine) for rows of ``a`` and ``b`` (or pairs i < j within ``a``) at or above ``similarity``.

    ``a`` and ``b`` must already be normalised together. Blocked so that memory stays
    O(block x n); the cost is O(n^2 d), about a minute for 100,000 photos of 1280-d features.
    """
    other = a if b is None else b
    pairs = []
    for start in range(0, a.shape[0], _BLOCK):
        block = a[start:start + _BLOCK] @ other.T
        rows, cols = torch.nonzero(block >= similarity, as_tuple=True)
        for i, j in zip((rows + start).tolist(), cols.tolist()):
            if b is not None or i < j:
                pairs.append((i, j, float(block[i - start, j])))
    return pairs


def group_samples(samples: Sequence[Sample], keys: Sequence[str], global_features: Tensor | None, *,
                  groups: str = AUTO, similarity: float | None = NEAR_DUPLICATE_SIMILARITY) -> Grouping:
    """Groups for ``samples`` (content keys and view-0 features in the same order).

    ``groups``: ``auto`` (a GROUP_COLUMNS column, else near-duplicates), a column name, or ``rows``
    (every row alone except identical files: the old random split, kept for comparisons).
    """
    n = len(samples)
    links = _UnionFind(n)
    first: dict[str, int] = {}
    duplicates = 0
    for i, key in enumerate(keys):
        if key in first:
            links.union(first[key], i)
            duplicates += 1
        else:
            first[key] = i
    column = find_group_column(samples) if groups == AUTO else (None if groups == ROWS else groups)
    if column is not None:
        if not any(s.extra.get(column) is not None for s in samples):
            raise DatasetError(f"group column {column!r} is missing or empty (columns: {sorted(samples[0].extra)})")
        seen: dict[str, int] = {}
        for i, sample in enumerate(samples):
            value = sample.extra.get(column)
            if value is not None:
                links.union(seen.setdefault(value, i), i)
        source = f"column '{column}'"
        # Rows the column leaves empty (merged sources, say) are grouped by content instead.
        unnamed = [i for i, s in enumerate(samples) if s.extra.get(column) is None]
        if unnamed and similarity is not None and global_features is not None:
            for i, j, _ in similar_pairs(centred_unit_vectors(global_features)[unnamed], None, similarity):
                links.union(unnamed[i], unnamed[j])
            source += f", near-duplicate features for the {len(unnamed)} rows without it"
    elif groups == AUTO and similarity is not None and global_features is not None:
        for i, j, _ in similar_pairs(centred_unit_vectors(global_features), None, similarity):
            links.union(i, j)
        source = f"near-duplicate features (centred cosine >= {similarity})"
    else:
        source = "rows (identical files grouped)"
    grouping = Grouping(links.labels(), source, duplicates)
    largest = int(np.bincount(grouping.ids).max())
    if n >= 20 and largest > 0.25 * n:
        note = (f"one group holds {largest} of {n} photos: splits will be lopsided; name a group column "
                f"(--group-column) or raise validation.near_duplicate_similarity")
        grouping.notes.append(note)
        log.warning(note)
    return grouping


def check_label_conflicts(samples: Sequence[Sample], keys: Sequence[str], policy: str) -> list[int]:
    """Rows to keep. Identical images with labels 0 and 1 are refused with the rows named
    (``policy="error"``) or all dropped (``policy="drop"``, documented opt-in)."""
    labels: dict[str, set[int]] = {}
    for sample, key in zip(samples, keys):
        labels.setdefault(key, set()).add(sample.label)
    conflicting = {key for key, found in labels.items() if len(found) > 1}
    if not conflicting:
        return list(range(len(samples)))
    if policy == "error":
        named = [f"{s.file_name} (label {s.label})" for s, k in zip(samples, keys) if k in conflicting]
        raise DatasetError(
            f"{len(conflicting)} image(s) appear with both labels 0 and 1: {', '.join(named[:6])}"
            f"{' ...' if len(named) > 6 else ''}; fix the labels or set validation.conflicting_labels=drop"
        )
    log.warning("dropping %d image(s) that appear with both labels", len(conflicting))
    return [i for i, k in enumerate(keys) if k not in conflicting]


def leakage_report(train_names: Sequence[str], train_keys: Sequence[str], train_features: Tensor | None,
                   other_names: Sequence[str], other_keys: Sequence[str], other_features: Tensor | None,
                   similarity: float | None, examples: int = 5) -> dict[str, object]:
    """Identical and near-duplicate photos shared by a training set and another set (count + examples)."""
    train_index = {k: i for i, k in enumerate(train_keys)}
    identical = [(train_names[train_index[k]], name) for name, k in zip(other_names, other_keys) if k in train_index]
    near: list[tuple[str, str, float]] = []
    if similarity is not None and train_features is not None and other_features is not None:
        both = centred_unit_vectors(torch.cat([train_features, other_features]))
        for i, j, score in similar_pairs(both[len(train_keys):], both[:len(train_keys)], similarity):
            if other_keys[i] != train_keys[j]:
                near.append((train_names[j], other_names[i], round(score, 4)))
    near_rows = len({name for _, name, _ in near})
    report = {"identical": len(identical), "near_duplicates": near_rows,
              "identical_examples": identical[:examples], "near_duplicate_examples": near[:examples]}
    if identical or near_rows:
        log.warning("leakage: %d identical and %d near-duplicate photo(s) shared with the training data, e.g. %s",
                    len(identical), near_rows, (identical or near)[:2])
    return report
