"""Object annotations of a dataset: COCO JSON (``annotations.json`` beside ``metadata.csv``), the format
real annotated photos come in (real-cones) and ``roadwork synth`` writes.

Images are matched to dataset rows by ``file_name``. Boxes are COCO ``[x, y, width, height]`` in
pixels; instance masks, where present, are COCO run-length encodings (uncompressed ``counts``, column
major) of the visible pixels. Categories keep real-cones' ids for the work-zone objects and add the
look-alikes (supercategory ``lookalike``) after them, so a detector trained on synthetic scenes
names real cones as real-cones does. An image's ``labeled_category_ids`` says which categories are
labelled exhaustively on it (a photo where only cones were boxed is not a photo without barriers);
its ``depth_file``, where known, names a depth map: a 16-bit PNG of metres x 256, 0 where the depth is
unknown (the KITTI depth benchmark's encoding, so real depth data can come in it too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from roadwork.data.records import DatasetError
from roadwork.storage import read_json

ANNOTATIONS = "annotations.json"
ROADWORK_CATEGORIES = ("cone", "drum", "barrier", "jersey_barrier", "work_sign", "worker", "machinery",
                       "other_roadwork")
LOOKALIKE_CATEGORIES = ("orange_vehicle", "school_bus", "orange_bin", "striped_awning", "traffic_light",
                        "orange_pedestrian", "warning_sign", "autumn_tree")
CATEGORIES = ROADWORK_CATEGORIES + LOOKALIKE_CATEGORIES
CATEGORY_IDS = {name: i for i, name in enumerate(CATEGORIES, start=1)}


@dataclass(frozen=True)
class ObjectAnnotation:
    """One object in one image: its category, whether it is a work-zone object, its visible box
    ``(x0, y0, x1, y1)`` in pixels, its visible pixels (bool ``[H, W]``) when a mask was drawn, and the
    model's confidence when a model found it (pseudo-masks)."""

    category: str
    roadwork: bool
    box: tuple[float, float, float, float]
    mask: np.ndarray | None = None
    score: float | None = None


@dataclass(frozen=True)
class ImageAnnotations:
    file_name: str
    width: int
    height: int
    objects: tuple[ObjectAnnotation, ...]
    labelled: tuple[str, ...] = CATEGORIES   # categories labelled exhaustively on this image
    depth_file: str | None = None   # its depth map, relative to the dataset folder


DEPTH_SCALE = 256.0   # a depth map's value per metre (KITTI's); 0 is "unknown", so the farthest is 65535 / 256 m


def encode_depth(metres: np.ndarray) -> bytes:
    """A depth map (float ``[H, W]`` metres; 0, NaN or negative: unknown) as the PNG ``depth_file`` names."""
    known = np.nan_to_num(np.asarray(metres, np.float64), nan=0.0)
    values = np.clip(np.round(known * DEPTH_SCALE), 0, 65535).astype(np.uint16)
    values[(known > 0) & (values == 0)] = 1   # nearer than 1/256 m is still known
    buffer = BytesIO()
    Image.fromarray(values).save(buffer, "PNG")
    return buffer.getvalue()


def read_depth(folder: str | Path, image: ImageAnnotations) -> np.ndarray:
    """An image's depth map in metres (float32 ``[H, W]``, NaN where unknown)."""
    if image.depth_file is None:
        raise DatasetError(f"{image.file_name}: no depth map in {Path(folder) / ANNOTATIONS}")
    path = Path(folder) / image.depth_file
    try:
        with Image.open(path) as png:
            values = np.asarray(png, dtype=np.float32)
    except OSError as error:
        raise DatasetError(f"{path}: not a readable depth map ({error})") from None
    if values.shape != (image.height, image.width):
        raise DatasetError(f"{path}: {values.shape[1] if values.ndim > 1 else '?'}x{values.shape[0]} depth map for a "
                           f"{image.width}x{image.height} image")
    return np.where(values > 0, values / DEPTH_SCALE, np.nan).astype(np.float32)


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """The tight box ``(x0, y0, x1, y1)`` of a non-empty mask's pixels: the box every annotation promises."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return float(columns[0]), float(rows[0]), float(columns[-1] + 1), float(rows[-1] + 1)


def roadwork_mask(image: ImageAnnotations) -> np.ndarray | None:
    """The union of the image's work-zone masks (bool ``[H, W]``), or None where it cannot be known: a
    work-zone object annotated by its box alone, or no work-zone object on an image where some
    work-zone category was not labelled (only cones boxed is not "no barriers")."""
    objects = [o for o in image.objects if o.roadwork]
    if any(o.mask is None for o in objects) or (not objects and not set(ROADWORK_CATEGORIES) <= set(image.labelled)):
        return None
    mask = np.zeros((image.height, image.width), dtype=bool)
    for item in objects:
        mask |= item.mask   # type: ignore[arg-type]
    return mask


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE: run lengths over the column-major pixels, starting with a run of 0s.
    (Written here: a few lines of numpy, where pycocotools would add a compiled dependency.) Only the
    columns the object spans are scanned; the empty columns around it join the first and last runs."""
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    columns = np.flatnonzero(mask.any(axis=0))
    if not len(columns):
        return {"size": [height, width], "counts": [height * width]}
    first, last = int(columns[0]), int(columns[-1]) + 1
    flat = mask[:, first:last].ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    counts = [0, *counts] if flat[0] else counts
    counts[0] += first * height
    if width > last:   # the zeros after the object's last column
        if len(counts) % 2:
            counts[-1] += (width - last) * height
        else:
            counts.append((width - last) * height)
    return {"size": [height, width], "counts": counts}


def decode_mask(rle: dict[str, Any]) -> np.ndarray:
    height, width = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any() or counts.sum() != height * width:
        raise ValueError(f"mask runs must be non-negative and cover {height}x{width} pixels")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape((height, width), order="F")


def coco_document(images: Sequence[ImageAnnotations], description: str) -> dict[str, Any]:
    """The COCO JSON of ``images`` (ids in the order given)."""
    entries, annotations = [], []
    for image_id, image in enumerate(images, start=1):
        entries.append({"id": image_id, "file_name": image.file_name, "width": image.width, "height": image.height,
                        "labeled_category_ids": [CATEGORY_IDS[c] for c in image.labelled]}
                       | ({"depth_file": image.depth_file} if image.depth_file else {}))
        for item in image.objects:
            x0, y0, x1, y1 = item.box
            entry = {"id": len(annotations) + 1, "image_id": image_id, "category_id": CATEGORY_IDS[item.category],
                     "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)], "iscrowd": 0}
            if item.mask is not None:
                entry |= {"area": int(item.mask.sum()), "segmentation": encode_mask(item.mask)}
            else:
                entry |= {"area": round((x1 - x0) * (y1 - y0), 2), "segmentation": []}
            if item.score is not None:
                entry["score"] = item.score
            annotations.append(entry)
    categories = [{"id": CATEGORY_IDS[name], "name": name,
                   "supercategory": "roadwork" if name in ROADWORK_CATEGORIES else "lookalike"} for name in CATEGORIES]
    return {"info": {"description": description, "version": "1"}, "images": entries, "annotations": annotations,
            "categories": categories}


def read_annotations(folder: str | Path) -> dict[str, ImageAnnotations]:
    """A dataset folder's ``annotations.json`` by file name; a file that does not fit COCO's shape, or names
    an unknown image or category, is one ``DatasetError`` naming what is wrong."""
    path = Path(folder) / ANNOTATIONS
    try:
        document = read_json(path)
        categories = {c["id"]: (c["name"], c.get("supercategory") == "roadwork") for c in document["categories"]}
        images = {i["id"]: i for i in document["images"]}
        objects: dict[int, list[ObjectAnnotation]] = {i: [] for i in images}
        for entry in document["annotations"]:
            if entry["image_id"] not in images or entry["category_id"] not in categories:
                raise ValueError(f"annotation {entry['id']} names an unknown image or category")
            image = images[entry["image_id"]]
            x, y, w, h = (float(v) for v in entry["bbox"])
            if not (min(x, y, w, h) >= 0 and x + w <= image["width"] + 1e-6
                    and y + h <= image["height"] + 1e-6):
                raise ValueError(f"annotation {entry['id']}: box {entry['bbox']} outside its "
                                 f"{image['width']}x{image['height']} image")
            segmentation = entry.get("segmentation")
            mask = decode_mask(segmentation) if isinstance(segmentation, dict) else None
            if mask is not None and mask.shape != (image["height"], image["width"]):
                raise ValueError(f"annotation {entry['id']}: mask size {mask.shape} is not its image's")
            name, roadwork = categories[entry["category_id"]]
            score = entry.get("score")
            objects[entry["image_id"]].append(ObjectAnnotation(name, roadwork, (x, y, x + w, y + h), mask,
                                                               None if score is None else float(score)))
        return {image["file_name"]: ImageAnnotations(
                    image["file_name"], int(image["width"]), int(image["height"]), tuple(objects[image_id]),
                    tuple(categories[c][0] for c in image.get("labeled_category_ids", categories)),
                    image.get("depth_file"))
                for image_id, image in images.items()}
    except FileNotFoundError:
        raise DatasetError(f"{folder}: no {ANNOTATIONS}") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DatasetError(f"{path}: not COCO annotations this reader understands: {error}") from None
