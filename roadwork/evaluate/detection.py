"""A detector's mean average precision on annotated photos (``roadwork detector evaluate``).

COCO's mAP (IoU 0.5 to 0.95) and mAP at IoU 0.5, overall and per category, by torchmetrics'
``MeanAveragePrecision`` (pycocotools underneath). The detector is scored as the expert serves it:
each photo's global view squeezed to its input size, the annotated boxes squeezed with it. Only what
can be judged counts: on each photo, detections of a category its annotation does not label
exhaustively are dropped (a cone nobody boxed on a photo where only barriers were boxed is not a false
positive), and categories the detector does not know (a closed-set detector without look-alike labels,
prompts without them) are left out of the ground truth, so the mean is over the categories it was asked
for.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.data import DataLoader

from roadwork.data.annotations import CATEGORIES
from roadwork.data.boxes import BoxedPhotos, annotated_photos
from roadwork.experts.detector import DetectorSource
from roadwork.progress import progress_bar


def detector_map(detector: DetectorSource, data: str, *, device: str = "cpu", batch_size: int = 8,
                 progress: bool = False) -> dict[str, Any]:
    """mAP, mAP@0.5 and per-category AP of ``detector`` on DATA's annotated photos, with counts and time."""
    from torchmetrics.detection import MeanAveragePrecision

    samples, annotations = annotated_photos(data, every_category=False)
    expert = detector.load(device)
    concepts = expert.concepts   # category names, in the expert's concept order
    known = [CATEGORIES.index(c) for c in concepts]
    metric = MeanAveragePrecision(iou_type="bbox", class_metrics=True, backend="pycocotools")
    loader = DataLoader(BoxedPhotos(samples, annotations, detector.input_size), batch_size=batch_size,
                        collate_fn=lambda batch: batch)
    started, seen, boxes = time.perf_counter(), 0, 0
    with progress_bar(len(samples), "mAP", enabled=progress) as advance:
        for batch in loader:
            views = torch.stack([view for view, _, _ in batch])
            found = expert.detect(views)
            predictions, targets = [], []
            for (_, truth, labels), detections, sample in zip(batch, found, samples[seen:seen + len(batch)]):
                labelled = {CATEGORIES.index(c) for c in annotations[sample.file_name].labelled}
                judged = [d for d in detections if CATEGORIES.index(concepts[d.concept]) in labelled]
                predictions.append({
                    "boxes": torch.tensor([d.box for d in judged], dtype=torch.float32).reshape(-1, 4),
                    "scores": torch.tensor([d.score for d in judged], dtype=torch.float32),
                    "labels": torch.tensor([CATEGORIES.index(concepts[d.concept]) for d in judged], dtype=torch.long)})
                asked = torch.isin(labels, torch.tensor(known))
                targets.append({"boxes": truth[asked], "labels": labels[asked]})
                boxes += int(asked.sum())
            metric.update(predictions, targets)
            seen += len(batch)
            advance(len(batch))
    result = metric.compute()
    classes = result["classes"].reshape(-1).tolist()
    per_class = result["map_per_class"].reshape(-1).tolist()
    return {"detector": detector.describe(), "data": data, "photos": len(samples), "boxes": boxes,
            "map": float(result["map"]), "map_50": float(result["map_50"]),
            "map_per_category": {CATEGORIES[c]: round(ap, 4) for c, ap in zip(classes, per_class) if ap >= 0},
            "seconds_per_photo": round((time.perf_counter() - started) / max(len(samples), 1), 4)}
