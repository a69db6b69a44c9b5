"""Depth as an expert: how far the work-zone objects a detector finds stand, and whether their size fits.

A transformers depth estimator (``AutoModelForDepthEstimation``: Depth Anything V2, Depth Pro, DPT, ...)
by hub id or local folder gives each photo's depth map, the detector of ``experts.detector`` the boxes.
For each concept two fields: the distance of the nearest box that reaches the detector's threshold
(the median depth inside it) and that box's height in the view times its distance. Through a pinhole,
an object of height H at distance Z spans f H / Z pixels, so the second field is H over the camera's
focal length: a real cone's size at its distance, which a toy-sized look-alike does not have.

Metric models (Depth Anything's metric checkpoints, Depth Pro: ``depth_estimation_type`` "metric") give
metres. Relative ones give inverse depth up to a scale and shift of their own per photo; it is turned
into depth relative to the photo's nearest point (largest inverse depth / inverse depth), so their
size field compares objects within a photo more than across photos. A concept no box reaches the
threshold for has NULL (NaN) fields, which the heads read as missing, not as "at distance 0".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from roadwork.backbones.base import weights_unavailable
from roadwork.errors import RoadworkError
from roadwork.experts.detector import DetectorSource, Found
from roadwork.features.store import FeatureStore, default_cache_dir, local_identity, namespace_for
from roadwork.storage import writable_folder

PER_CONCEPT = ("distance", "height")


def object_depths(depth: Tensor, found: Sequence[Sequence[Found]], concepts: int, threshold: float) -> Tensor:
    """``[N, concepts * 2]`` from depth maps ``[N, S, S]`` (NaN: unknown) and each view's boxes in the
    same pixels: per concept the median depth inside its nearest box at ``threshold`` or above, and that
    box's height share of the view times the depth (NaN where no box of the concept reaches it)."""
    side = depth.shape[-1]
    evidence = torch.full((len(found), concepts, len(PER_CONCEPT)), float("nan"))
    for row, boxes in enumerate(found):
        for item in boxes:
            if item.score < threshold:
                continue
            x0, y0, x1, y1 = (min(max(v, 0.0), float(side)) for v in item.box)
            inside = depth[row, int(y0):max(int(y0) + 1, round(y1)), int(x0):max(int(x0) + 1, round(x1))]
            known = inside[~torch.isnan(inside)]
            if not len(known):
                continue
            distance = float(known.median())
            fields = evidence[row, item.concept]
            if torch.isnan(fields[0]) or distance < fields[0]:
                fields[0], fields[1] = distance, (y1 - y0) / side * distance
    return evidence.flatten(1)


class DepthEvidence(nn.Module):
    """A depth estimator and the detector whose boxes it measures, with the ``features`` interface
    extraction calls: global views in, per-concept distance and size out."""

    gives_null = True   # NaN is this expert's NULL (no object of a concept), not a failure

    def __init__(self, model: str, detector: DetectorSource, device: str | torch.device = "cpu") -> None:
        super().__init__()
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        try:
            self.processor = AutoImageProcessor.from_pretrained(model)
            self.model = AutoModelForDepthEstimation.from_pretrained(model)
        except (OSError, ValueError) as error:
            if Path(model).expanduser().exists():
                raise RoadworkError(f"{model}: not a depth model folder saved with `save_pretrained`: {error}") \
                    from None
            raise weights_unavailable("the depth model", model, "a folder saved with `save_pretrained`",
                                      error) from None
        self.model.to(device).eval().requires_grad_(False)
        self.metric = getattr(self.model.config, "depth_estimation_type", "relative") == "metric"
        self.detector = detector.load(device)
        self.threshold, self.input_size = detector.threshold, detector.input_size
        self.concepts = len(self.detector.concepts)
        self.name = f"depth {model}"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def depth(self, views: Tensor) -> Tensor:
        """``[N, S, S]`` depth of each ``[N, 3, S, S]`` view: metres from a metric model, depth relative to
        the view's nearest point from a relative one."""
        images = list(views.permute(0, 2, 3, 1).cpu().numpy())
        side = views.shape[-1]
        with torch.inference_mode():
            inputs = self.processor(images=images, return_tensors="pt").to(self.device)
            outputs = self.model(**inputs)
            maps = self.processor.post_process_depth_estimation(outputs, target_sizes=[(side, side)] * len(images))
        depth = torch.stack([m["predicted_depth"].float().cpu() for m in maps])
        if self.metric:
            return depth
        inverse = depth.clamp_min(0.0)
        nearest = inverse.flatten(1).amax(dim=1).clamp_min(1e-6)[:, None, None]
        return torch.where(inverse > 0, nearest / inverse.clamp_min(1e-6), torch.nan)

    def features(self, views: Tensor) -> Tensor:
        return object_depths(self.depth(views), self.detector.detect(views), self.concepts, self.threshold)


@dataclass(frozen=True)
class DepthSource:
    """A depth model over a detector's boxes as a feature source of per-photo evidence (``experts.depth``)."""

    model: str
    detector: DetectorSource
    name: str = "depth"
    output: ClassVar[str] = "evidence"

    @property
    def plan(self) -> str:
        return self.detector.plan

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(f"depth.{c}.{field}" for c in self.detector.concepts for field in PER_CONCEPT)

    @property
    def views(self) -> tuple[str, int]:
        return self.detector.views

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "depth", "model": self.model,
                "detector": {k: v for k, v in self.detector.describe().items() if k != "kind"}}

    def store(self, cache_dir: str | Path | None, device: str | torch.device = "cpu",
              variant: str | None = None) -> FeatureStore:
        root = writable_folder(cache_dir if cache_dir is not None else default_cache_dir(), "cache folder")
        precision = "bf16" if torch.device(device).type == "cuda" else "fp32"
        identity = f"depth|{local_identity(self.model)}|{self.detector.identity}" + (f"|{variant}" if variant else "")
        return FeatureStore(root, namespace_for(f"depth-{self.model}", self.detector.input_size, self.plan, None,
                                                precision, identity))

    def load(self, device: str | torch.device) -> DepthEvidence:
        return DepthEvidence(self.model, self.detector, device)
