"""Procedural street scenes with and without work zones.

The toolkit's tests, benchmarks and offline demo need labelled street photos without a download,
so this package draws them: a perspective road seen from a car, scenery that depends on the scene
type, traffic and pedestrians, and on positives a work zone. Negatives carry look-alikes (orange
cars, school buses, striped awnings, amber lights, yellow warning signs, orange clothes) so that
colour alone cannot separate the classes. Each scene is planned first (all the randomness) and
drawn second (none), which makes images deterministic and lets a positive be redrawn without its
work zone to prove that the work zone is visible.

Every work-zone object and look-alike is annotated as it shows in the final picture (visible box and
instance mask, nearer objects taken away) in ``annotations.json``, COCO JSON in the format of
``roadwork.data.annotations``, and each image's true depth map (``depth/``, named by its annotation's
``depth_file``) beside them when asked for (it doubles the drawing time: every object is tracked).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from roadwork.data.annotations import (
    ANNOTATIONS,
    CATEGORIES,
    ImageAnnotations,
    ObjectAnnotation,
    coco_document,
    encode_depth,
    mask_box,
)
from roadwork.data.synth.drive import Drive, frame_plan, plan_drive
from roadwork.data.synth.metadata import CSV_COLUMNS, GROUP_COLUMN, csv_row, describe
from roadwork.data.synth.plan import Plan
from roadwork.data.synth.render import RenderedScene, draw_plan
from roadwork.data.synth.scenes import plan_scene
from roadwork.storage import atomic_write_bytes, atomic_write_json, atomic_write_text

JPEG_QUALITY = 90
CATEGORY_OF_KIND = {"excavator": "machinery", **{c: c for c in CATEGORIES}}   # planned kind -> annotation


def render_scene_details(rng: np.random.Generator, width: int, height: int, positive: bool, *,
                         without_roadwork: bool = False, masks: bool = False, depth: bool = False) -> RenderedScene:
    """Render one scene and say what is in it (with ``masks``, the visible pixels of every object that
    is annotated; with ``depth``, its depth map).

    ``without_roadwork`` draws the very same scene minus its work zone: a matched counterfactual,
    used to prove that each positive's work zone is actually visible.
    """
    _check_size(width, height)
    plan = plan_scene(rng, width, height, positive)
    return _rendered(plan, describe(rng, plan), without_roadwork, masks, depth)


def render_frame_details(drive: Drive, frame: int, rng: np.random.Generator, *,
                         without_roadwork: bool = False, masks: bool = False, depth: bool = False) -> RenderedScene:
    """Render frame ``frame`` of a drive; ``rng`` draws only what changes between frames (sway, noise)."""
    return _rendered(frame_plan(drive, frame, rng), drive.description, without_roadwork, masks, depth)


def _check_size(width: int, height: int) -> None:
    if width < 32 or height < 32:
        raise ValueError(f"image size must be at least 32x32, got {width}x{height}")


def _rendered(plan: Plan, description: str, without_roadwork: bool, masks: bool = False,
              depth: bool = False) -> RenderedScene:
    scene = draw_plan(plan, without_roadwork, CATEGORY_OF_KIND if masks else (), depth)
    metadata: dict[str, object] = {
        "latitude": round(plan.latitude, 6),
        "longitude": round(plan.longitude, 6),
        "weather": plan.weather,
        "daytime": plan.daytime,
        "scene": plan.scene,
        "description": description,
    }
    return replace(scene, metadata=metadata)


def render_scene(rng: np.random.Generator, width: int, height: int, positive: bool
                 ) -> tuple[Image.Image, dict[str, object]]:
    """Render one street photo and its true metadata (never NULL here; the dataset writer blanks fields)."""
    scene = render_scene_details(rng, width, height, positive)
    return scene.image, scene.metadata


def annotations_of(file_name: str, scene: RenderedScene, depth_file: str | None = None) -> ImageAnnotations:
    """The work-zone objects and look-alikes of a scene rendered with masks, as they show: each box is
    the tight box of its visible pixels, and an object hidden entirely is left out."""
    width, height = scene.image.size
    objects = []
    for drawn in scene.objects:
        category = CATEGORY_OF_KIND.get(drawn.kind)
        if category is None or drawn.mask is None or not drawn.mask.any():
            continue
        objects.append(ObjectAnnotation(category, drawn.roadwork, mask_box(drawn.mask), drawn.mask))
    return ImageAnnotations(file_name, width, height, tuple(objects), depth_file=depth_file)


def _balanced_labels(n: int, seed: int) -> np.ndarray:
    labels = np.zeros(n, dtype=np.int64)
    labels[: n // 2] = 1
    return np.random.default_rng([seed]).permutation(labels)


def _jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _file_name(index: int) -> str:
    return f"images/{index:06d}.jpg"


def _single_images(n: int, seed: int, width: int, height: int, depth: bool
                   ) -> Iterator[tuple[RenderedScene, list[str]]]:
    labels = _balanced_labels(n, seed)
    for index in range(n):
        rng = np.random.default_rng([seed, index])
        label = int(labels[index])
        scene = render_scene_details(rng, width, height, positive=bool(label), masks=True, depth=depth)
        yield scene, csv_row(rng, _file_name(index), label, scene.metadata)


def _drive_frames(n: int, seed: int, width: int, height: int, frames: int, depth: bool
                  ) -> Iterator[tuple[RenderedScene, list[str]]]:
    """Frame f of drive d is image d * frames + f; half of the drives are positive."""
    _check_size(width, height)
    labels = _balanced_labels(math.ceil(n / frames), seed)
    for number in range(len(labels)):
        label = int(labels[number])
        drive = plan_drive(np.random.default_rng([seed, number]), width, height, bool(label), frames)
        for frame in range(min(frames, n - number * frames)):
            rng = np.random.default_rng([seed, number, frame])
            scene = render_frame_details(drive, frame, rng, masks=True, depth=depth)
            row = csv_row(rng, _file_name(number * frames + frame), label, scene.metadata)
            yield scene, [*row, f"drive-{number:06d}"]


def write_synthetic_dataset(out: Path, n: int, seed: int, width: int = 640, height: int = 480,
                            progress: Callable[[int], None] | None = None, frames_per_drive: int = 1,
                            depth: bool = False) -> Path:
    """Write an imagefolder dataset (images/, annotations.json, metadata.csv; depth/ with ``depth``) with
    NULLs as sparse as the target data.

    Each image depends only on (seed, index) and its label, so any subset can be re-rendered alone
    (or in parallel). With ``frames_per_drive`` > 1 the images come in drives of that many
    consecutive, strongly correlated frames of one scene (image = (seed, drive, frame)), and a
    ``group`` column names the drive: the leakage a validation split must keep apart. The CSV is
    written last: a folder without it is an interrupted run, never a silently short dataset.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if not isinstance(frames_per_drive, int) or frames_per_drive < 1:
        raise ValueError(f"frames_per_drive must be an integer >= 1, got {frames_per_drive!r}")
    out = Path(out)
    if frames_per_drive == 1:
        columns, images = CSV_COLUMNS, _single_images(n, seed, width, height, depth)
    else:
        columns, images = (*CSV_COLUMNS, GROUP_COLUMN), _drive_frames(n, seed, width, height, frames_per_drive, depth)
    rows, annotated = [], []
    for count, (scene, row) in enumerate(images, start=1):
        atomic_write_bytes(out / row[0], _jpeg_bytes(scene.image))  # row[0] is the file name
        depth_file = None
        if scene.depth is not None:
            depth_file = f"depth/{Path(row[0]).stem}.png"
            atomic_write_bytes(out / depth_file, encode_depth(scene.depth))
        rows.append(row)
        annotated.append(annotations_of(row[0], scene, depth_file))
        if progress is not None:
            progress(count)
    atomic_write_json(out / ANNOTATIONS, coco_document(annotated, f"roadwork synth: {n} scenes, seed {seed}"))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    atomic_write_text(out / "metadata.csv", buffer.getvalue())
    return out
