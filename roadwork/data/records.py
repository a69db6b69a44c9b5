"""The one record type for a sample, and the one place where metadata NULLs are normalised."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roadwork.errors import RoadworkError
from roadwork.storage import read_file

CATEGORY_FIELDS = ("weather", "daytime", "scene")
METADATA_FIELDS = ("latitude", "longitude", *CATEGORY_FIELDS, "description")
NULL_TOKENS = frozenset({"", "null", "none", "nan"})


class DatasetError(RoadworkError):
    """A dataset that cannot be used as given; the message names the file and row."""


def normalize_text(value: Any) -> str | None:
    """Map every spelling of a missing value (None, NaN, '', 'null', 'none', 'nan') to None."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    text = str(value).strip()
    return None if text.lower() in NULL_TOKENS else text


def normalize_category(value: Any) -> str | None:
    text = normalize_text(value)
    return None if text is None else text.lower()


def _to_float(value: Any) -> float | None:
    text = normalize_text(value)
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def normalize_coordinates(latitude: Any, longitude: Any) -> tuple[float | None, float | None]:
    """Unparseable, non-finite or out-of-range coordinates become NULL; half a pair is no position."""
    lat, lon = _to_float(latitude), _to_float(longitude)
    if lat is None or lon is None or not -90.0 <= lat <= 90.0 or not -180.0 <= lon <= 180.0:
        return None, None
    return lat, lon


def parse_label(value: Any, where: str) -> int:
    if isinstance(value, bool):
        return int(value)
    text = normalize_text(value)
    if text is not None:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if number in (0.0, 1.0):
            return int(number)
    raise DatasetError(f"{where}: label must be 0 or 1, got {value!r}")


@dataclass(frozen=True)
class Sample:
    """One photo and its metadata. The image lives on disk (``path``) or in memory (``data``)."""

    file_name: str
    label: int | None
    latitude: float | None = None
    longitude: float | None = None
    weather: str | None = None
    daytime: str | None = None
    scene: str | None = None
    description: str | None = None
    extra: Mapping[str, str | None] = field(default_factory=dict)
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        if self.path is None:
            raise DatasetError(f"{self.file_name}: sample has neither image bytes nor a path")
        try:
            return read_file(self.path)
        except OSError as error:
            raise DatasetError(f"{self.file_name}: cannot read image {self.path}: {error}") from error

    @property
    def has_gps(self) -> bool:
        return self.latitude is not None


def make_sample(
    row: Mapping[str, Any],
    *,
    file_name: str,
    where: str,
    require_label: bool,
    path: Path | None = None,
    data: bytes | None = None,
) -> Sample:
    """Build a Sample from one raw row of any source, normalising every metadata field."""
    raw_label = row.get("label")
    if require_label or normalize_text(raw_label) is not None:
        label: int | None = parse_label(raw_label, where)
    else:
        label = None
    lat, lon = normalize_coordinates(row.get("latitude"), row.get("longitude"))
    known = {"file_name", "label", "image", *METADATA_FIELDS}
    return Sample(
        file_name=file_name,
        label=label,
        latitude=lat,
        longitude=lon,
        weather=normalize_category(row.get("weather")),
        daytime=normalize_category(row.get("daytime")),
        scene=normalize_category(row.get("scene")),
        description=normalize_text(row.get("description")),
        extra={k: normalize_text(v) for k, v in row.items() if k not in known},
        path=path,
        data=data,
    )
