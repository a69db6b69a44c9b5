"""Annotated photos as a detector sees them: the global view squeezed to a square, boxes squeezed with it.

One home for what ``roadwork detector train`` learns from and ``roadwork detector evaluate`` scores, so a
detector is trained and measured on exactly the view the detector expert serves it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from roadwork.data.annotations import ANNOTATIONS, CATEGORIES, ImageAnnotations, read_annotations
from roadwork.data.records import DatasetError, Sample
from roadwork.data.sources import load_samples
from roadwork.data.views import image_views


class BoxedPhotos(Dataset):
    """(global view ``[3, S, S]`` uint8, its boxes ``[n, 4]`` as x0, y0, x1, y1 in view pixels, their
    category indices ``[n]``) of each annotated photo."""

    def __init__(self, samples: list[Sample], annotations: dict[str, ImageAnnotations], size: int) -> None:
        self.samples, self.annotations, self.size = samples, annotations, size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        sample = self.samples[index]
        image = self.annotations[sample.file_name]
        view = image_views(sample.read_bytes(), "global", self.size, source=sample.file_name)[0]
        scale = torch.tensor([self.size / image.width, self.size / image.height] * 2)
        boxes = torch.tensor([o.box for o in image.objects], dtype=torch.float32).reshape(-1, 4) * scale
        labels = torch.tensor([CATEGORIES.index(o.category) for o in image.objects], dtype=torch.long)
        return view, boxes, labels


def annotated_photos(data: str, every_category: bool) -> tuple[list[Sample], dict[str, ImageAnnotations]]:
    """The photos of DATA that its annotations.json covers; with ``every_category``, only those on which
    every category is labelled (what a detector may learn from: an unboxed cone is never background)."""
    if not (Path(data) / ANNOTATIONS).is_file():
        raise DatasetError(f"{data}: no {ANNOTATIONS}; a detector learns from boxes (roadwork synth writes them, "
                           "pseudo-masks gives them for real photos)")
    annotations = read_annotations(data)
    samples = [s for s in load_samples(data) if s.file_name in annotations and
               (not every_category or set(CATEGORIES) <= set(annotations[s.file_name].labelled))]
    if not samples:
        raise DatasetError(f"{data}: no photo of {ANNOTATIONS} " + ("has every category labelled" if every_category
                                                                  else "is one of its photos"))
    return samples, annotations
