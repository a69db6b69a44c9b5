"""Metrics per slice of the evaluation set: weather, daytime, scene, GPS region, any categorical
column, and rows with a metadata field missing against present.

A slice with few photos (or few of one class) is flagged: its MCC interval is wide, and reading its
second decimal is the mistake this table exists to prevent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from roadwork.data.geo import TargetRegions
from roadwork.data.groups import GROUP_COLUMNS
from roadwork.data.records import CATEGORY_FIELDS, Sample
from roadwork.evaluate.metrics import bootstrap_metrics, interval
from roadwork.stats import mcc_table

MISSING = "(missing)"
MAX_CATEGORIES = 12   # an extra column with more distinct values is an id, not a category
SMALL_SLICE, SMALL_CLASS = 30, 5
GPS_REGIONS = 5
METADATA_PRESENT = {"gps": lambda s: s.has_gps, "description": lambda s: s.description is not None,
                    **{f: (lambda s, f=f: getattr(s, f) is not None) for f in CATEGORY_FIELDS}}


@dataclass(frozen=True)
class Slice:
    column: str
    value: str
    rows: np.ndarray


def _categorical(column: str, values: Sequence[str | None], known: bool = False) -> list[Slice]:
    """One slice per value (and the missing rows); an unknown column with more than MAX_CATEGORIES
    values, or about one value per row, is an id and gives none."""
    present = {v for v in values if v is not None}
    if not present or (not known and (len(present) > MAX_CATEGORIES or len(present) >= 0.5 * len(values))):
        return []
    names = np.array([MISSING if v is None else v for v in values], dtype=object)
    return [Slice(column, value, np.flatnonzero(names == value))
            for value in sorted(present) + ([MISSING] if None in values else [])]


def gps_regions(samples: Sequence[Sample], seed: int = 0) -> list[Slice]:
    """k-means regions (on the unit sphere) of the evaluation photos' own positions, each named by
    its centre."""
    located = np.flatnonzero([s.has_gps for s in samples])
    if len(located) < 2 * GPS_REGIONS:
        return []
    coordinates = np.array([[samples[i].latitude, samples[i].longitude] for i in located], dtype=np.float64)
    regions = TargetRegions.fit(coordinates, GPS_REGIONS, seed)
    nearest = regions.assign(coordinates)
    return [Slice("gps region", f"{lat:.2f}, {lon:.2f}", located[nearest == r])
            for r, (lat, lon) in enumerate(regions.centres)]


def find_slices(samples: Sequence[Sample], seed: int = 0) -> list[Slice]:
    slices = [s for field in CATEGORY_FIELDS for s in _categorical(field, [getattr(x, field) for x in samples], True)]
    slices += gps_regions(samples, seed)
    extra = sorted({key for s in samples for key in s.extra} - set(GROUP_COLUMNS))   # drives are not categories
    slices += [s for column in extra for s in _categorical(column, [x.extra.get(column) for x in samples])]
    # Category fields show their missing rows as a value above; GPS and descriptions are not categories.
    for field in ("gps", "description"):
        present = np.array([METADATA_PRESENT[field](s) for s in samples])
        if present.any() and not present.all():
            slices += [Slice(f"{field} metadata", "present", np.flatnonzero(present)),
                       Slice(f"{field} metadata", "missing", np.flatnonzero(~present))]
    count = np.array([sum(has(s) for has in METADATA_PRESENT.values()) for s in samples])
    levels = {
        "all fields": count == len(METADATA_PRESENT),
        "some fields": (count > 0) & (count < len(METADATA_PRESENT)),
        "none": count == 0,
    }
    if sum(bool(rows.any()) for rows in levels.values()) > 1:
        slices += [Slice("metadata present", name, np.flatnonzero(rows)) for name, rows in levels.items() if rows.any()]
    return slices


def slice_table(slices: Sequence[Slice], probabilities: np.ndarray, labels: np.ndarray,
                groups: np.ndarray | None, *, resamples: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """One row per slice: size, classes, MCC with its (group) bootstrap interval, accuracy, and the
    share of each class called wrong; ``small`` where the numbers should not be read closely."""
    table = []
    predicted = probabilities > 0.5
    for piece in slices:
        rows = piece.rows
        truth, called = labels[rows] == 1, predicted[rows]
        positives, negatives = int(truth.sum()), int((~truth).sum())
        tp, fp = int((called & truth).sum()), int((called & ~truth).sum())
        mcc = float(mcc_table(np.array(tp), np.array(fp), np.array(positives), np.array(negatives)))
        both = positives > 0 and negatives > 0
        draws = bootstrap_metrics([probabilities[rows]], labels[rows], None if groups is None else groups[rows],
                                  resamples=resamples, seed=seed)[0] if both else None
        table.append({
            "column": piece.column, "value": piece.value, "n": int(len(rows)), "positives": positives,
            "mcc": round(mcc, 4) if both else None,
            "mcc_ci95": interval(draws["mcc"]) if draws is not None else None,
            "accuracy": round(float(np.mean(called == truth)), 4),
            "missed_roadwork": round((positives - tp) / positives, 4) if positives else None,
            "false_alarms": round(fp / negatives, 4) if negatives else None,
            "small": len(rows) < SMALL_SLICE or min(positives, negatives) < SMALL_CLASS,
        })
    return table
