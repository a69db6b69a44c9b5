"""Procedural street scenes with and without work zones.

The toolkit's tests, benchmarks and offline demo need labelled street photos without a download,
so this package draws them: a perspective road seen from a car, scenery that depends on the scene
type, traffic and pedestrians, and on positives a work zone. Negatives carry look-alikes (orange
cars, school buses, striped awnings, amber lights, yellow warning signs, orange clothes) so that
colour alone cannot separate the classes. Each scene is planned first (all the randomness) and
drawn second (none), which makes images deterministic and lets a positive be redrawn without its
work zone to prove that the work zone is visible.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from roadwork.data.synth.metadata import CSV_COLUMNS, csv_row, describe
from roadwork.data.synth.render import RenderedScene, draw_plan
from roadwork.data.synth.scenes import plan_scene
from roadwork.storage import atomic_write_bytes, atomic_write_text

JPEG_QUALITY = 90


def render_scene_details(rng: np.random.Generator, width: int, height: int, positive: bool, *,
                         without_roadwork: bool = False) -> RenderedScene:
    """Render one scene and say what is in it.

    ``without_roadwork`` draws the very same scene minus its work zone: a matched counterfactual,
    used to prove that each positive's work zone is actually visible.
    """
    if width < 32 or height < 32:
        raise ValueError(f"image size must be at least 32x32, got {width}x{height}")
    plan = plan_scene(rng, width, height, positive)
    description = describe(rng, plan)
    image, objects = draw_plan(plan, without_roadwork)
    metadata: dict[str, object] = {
        "latitude": round(plan.latitude, 6),
        "longitude": round(plan.longitude, 6),
        "weather": plan.weather,
        "daytime": plan.daytime,
        "scene": plan.scene,
        "description": description,
    }
    return RenderedScene(image, metadata, tuple(objects))


def render_scene(rng: np.random.Generator, width: int, height: int, positive: bool
                 ) -> tuple[Image.Image, dict[str, object]]:
    """Render one street photo and its true metadata (never NULL here; the dataset writer blanks fields)."""
    scene = render_scene_details(rng, width, height, positive)
    return scene.image, scene.metadata


def _balanced_labels(n: int, seed: int) -> np.ndarray:
    labels = np.zeros(n, dtype=np.int64)
    labels[: n // 2] = 1
    return np.random.default_rng([seed]).permutation(labels)


def _jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def write_synthetic_dataset(out: Path, n: int, seed: int, width: int = 640, height: int = 480,
                            progress: Callable[[int], None] | None = None) -> Path:
    """Write an imagefolder dataset (images/ + metadata.csv) with NULLs as sparse as the target data.

    Each image depends only on (seed, index) and its label, so any subset can be re-rendered alone
    (or in parallel). The CSV is
    written last: a folder without it is an interrupted run, never a silently short dataset.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    out = Path(out)
    labels = _balanced_labels(n, seed)
    rows = []
    for index in range(n):
        rng = np.random.default_rng([seed, index])
        label = int(labels[index])
        image, metadata = render_scene(rng, width, height, positive=bool(label))
        file_name = f"images/{index:06d}.jpg"
        atomic_write_bytes(out / file_name, _jpeg_bytes(image))
        rows.append(csv_row(rng, file_name, label, metadata))
        if progress is not None:
            progress(index + 1)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(rows)
    atomic_write_text(out / "metadata.csv", buffer.getvalue())
    return out
