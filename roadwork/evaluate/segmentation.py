"""How well a bundle's segmentation branch outlines the roadwork, where the data knows where it is
(an ``annotations.json``: synthetic scenes, SAM 3 pseudo-masks, hand annotations)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from roadwork.data.annotations import ImageAnnotations, roadwork_mask
from roadwork.data.records import Sample


def upsampled(probabilities: Tensor, height: int, width: int) -> Tensor:
    """A branch's ``[g, g]`` map over a photo's squeezed global view, back at the photo's own size."""
    return torch.nn.functional.interpolate(probabilities[None, None].float(), size=(height, width), mode="bilinear",
                                           align_corners=False)[0, 0]


def mask_agreement(samples: Sequence[Sample], maps: Sequence[Tensor | None],
                   annotations: Mapping[str, ImageAnnotations]) -> dict[str, float | int] | None:
    """Intersection over union of the branch's mask (probability > 0.5) and the annotated work-zone mask:
    pooled over every photo whose mask is known (the pixels of all of them together), and the mean over
    those that show roadwork; None when no photo has both a map and a known mask."""
    intersection = union = 0
    per_photo, scored = [], 0
    for sample, found in zip(samples, maps):
        image = annotations.get(sample.file_name)
        truth = None if image is None or found is None else roadwork_mask(image)
        if truth is None:
            continue
        predicted = (upsampled(found, image.height, image.width) > 0.5).numpy()   # type: ignore[union-attr]
        both, either = int((predicted & truth).sum()), int((predicted | truth).sum())
        intersection, union, scored = intersection + both, union + either, scored + 1
        if truth.any():
            per_photo.append(both / either)
    if not scored:
        return None
    return {"photos": scored, "photos_with_roadwork": len(per_photo),
            "iou": round(intersection / union, 4) if union else 1.0,
            "mean_iou_roadwork_photos": round(float(np.mean(per_photo)), 4) if per_photo else None}
