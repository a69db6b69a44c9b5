"""Distances on the Earth, target coordinates, and the target regions GPS-weighted sampling aims at.

Regions are k-means clusters of the target photos' positions taken as points on the unit sphere (in
raw degrees a degree of longitude shrinks with latitude and wraps at +-180, so "near" would mean
different things in Oslo, Quito and across the date line), each centred on its medoid.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.cluster import KMeans

from roadwork.data.records import DatasetError, normalize_coordinates
from roadwork.data.sources import load_samples

log = logging.getLogger(__name__)
EARTH_RADIUS_KM = 6371.0088   # mean radius (IUGG)
LATITUDE_NAMES = ("latitude", "lat")
LONGITUDE_NAMES = ("longitude", "lon", "lng")


def haversine_km(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> np.ndarray:
    """Great-circle distance in km between points given in degrees (arrays broadcast)."""
    p1, p2 = np.radians(np.asarray(lat1, dtype=float)), np.radians(np.asarray(lat2, dtype=float))
    dlat = p2 - p1
    dlon = np.radians(np.asarray(lon2, dtype=float) - np.asarray(lon1, dtype=float))
    h = np.sin(dlat / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def unit_vectors(coordinates: np.ndarray) -> np.ndarray:
    """``[N, 2]`` (latitude, longitude) degrees as ``[N, 3]`` points on the unit sphere."""
    lat, lon = np.radians(coordinates[:, 0]), np.radians(coordinates[:, 1])
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)


def read_target_coordinates(source: str | Path) -> np.ndarray:
    """``[N, 2]`` valid (latitude, longitude) rows of a CSV file (columns latitude/longitude or lat/lon)
    or of a dataset's GPS columns (any source ``--data`` accepts). Rows without a valid position are
    skipped and counted; none at all is an error."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() in (".csv", ".txt"):
        pairs = _csv_pairs(path)
    else:
        samples = load_samples(str(source), require_labels=False)
        pairs = [(s.latitude, s.longitude) for s in samples]
    valid = [normalize_coordinates(lat, lon) for lat, lon in pairs]
    kept = np.array([p for p in valid if p[0] is not None], dtype=float).reshape(-1, 2)
    if len(kept) == 0:
        raise DatasetError(f"{source}: no row has a valid latitude and longitude ({len(pairs)} rows read)")
    if len(kept) < len(pairs):
        log.warning("%s: %d of %d rows have no valid position and are ignored", source, len(pairs) - len(kept),
                    len(pairs))
    return kept


def _csv_pairs(path: Path) -> list[tuple[Any, Any]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = {name.strip().lower(): name for name in reader.fieldnames or []}
            lat = next((columns[n] for n in LATITUDE_NAMES if n in columns), None)
            lon = next((columns[n] for n in LONGITUDE_NAMES if n in columns), None)
            if lat is None or lon is None:
                raise DatasetError(f"{path}: needs a latitude and a longitude column (latitude/longitude or "
                                   f"lat/lon); found {sorted(columns)}")
            return [(row.get(lat), row.get(lon)) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"{path}: cannot read target coordinates: {error}") from None


MEDOID_CANDIDATES = 2000   # above this many points a cluster's medoid is sought among a random sample


def _medoid(coordinates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The point of a cluster nearest (summed great-circle distance) to all its others.

    Not the k-means centroid: a cluster of one city plus a few scattered far photos has its centroid
    between them, often 100 km from the city, in no place any photo comes from.
    """
    candidates = coordinates
    if len(coordinates) > MEDOID_CANDIDATES:
        candidates = coordinates[rng.choice(len(coordinates), MEDOID_CANDIDATES, replace=False)]
    total = haversine_km(candidates[:, None, 0], candidates[:, None, 1], coordinates[None, :, 0],
                         coordinates[None, :, 1]).sum(axis=1)
    return candidates[int(np.argmin(total))]


@dataclass(frozen=True)
class TargetRegions:
    """Centres (latitude, longitude in degrees: each a target photo's position) of the regions the
    served photos come from."""

    centres: np.ndarray   # [k, 2]
    sizes: tuple[int, ...]   # target photos nearest each centre

    @classmethod
    def fit(cls, coordinates: np.ndarray, k: int, seed: int = 0) -> TargetRegions:
        points = unit_vectors(coordinates)
        distinct = len(np.unique(np.round(points, 9), axis=0))
        if distinct < k:
            log.warning("%d target regions asked for, but the targets hold only %d distinct positions: using %d",
                        k, distinct, distinct)
            k = distinct
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(points).labels_
        rng = np.random.default_rng(seed)
        centres = [_medoid(coordinates[labels == c], rng) for c in range(k)]
        return cls(np.array(centres), tuple(int(s) for s in np.bincount(labels, minlength=k)))

    def _distances_km(self, coordinates: np.ndarray) -> np.ndarray:
        return haversine_km(coordinates[:, None, 0], coordinates[:, None, 1], self.centres[None, :, 0],
                            self.centres[None, :, 1])

    def nearest_km(self, coordinates: np.ndarray) -> np.ndarray:
        """Distance in km from each ``[N, 2]`` position to the nearest centre (NaN rows stay NaN)."""
        return self._distances_km(coordinates).min(axis=1)

    def assign(self, coordinates: np.ndarray) -> np.ndarray:
        """Index of the nearest centre for each ``[N, 2]`` position."""
        return self._distances_km(coordinates).argmin(axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {"centres": [[round(float(a), 5), round(float(b), 5)] for a, b in self.centres],
                "target_photos": list(self.sizes)}
