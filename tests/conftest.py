"""Shared fixtures: tiny image datasets written on the fly (no network, no assets)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def jpeg_bytes(width: int = 64, height: int = 48, seed: int = 0, **save: object) -> bytes:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90, **save)
    return buffer.getvalue()


def write_folder(root: Path, rows: list[dict], images: dict[str, bytes] | None = None) -> Path:
    """A dataset folder; every file_name gets a random JPEG unless ``images`` says otherwise."""
    root.mkdir(parents=True, exist_ok=True)
    images = images or {}
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    for i, row in enumerate(rows):
        name = row.get("file_name")
        if name and ".." not in name and not name.startswith("/"):
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if name not in images and not path.exists():
                path.write_bytes(jpeg_bytes(seed=i))
            elif name in images and images[name] is not None:
                path.write_bytes(images[name])
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture
def small_folder(tmp_path: Path) -> Path:
    rows = [{"file_name": f"img/{i}.jpg", "label": i % 2, "weather": "rain" if i % 3 else "", "latitude": 52.5,
             "longitude": 13.4} for i in range(8)]
    return write_folder(tmp_path / "ds", rows)
