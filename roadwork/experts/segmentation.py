"""The segmentation branch as an expert: what fine-tuning with ``loss.dice_weight`` > 0 learnt about
where the roadwork is, read off each photo as evidence the heads can use.

The branch is a 1x1 convolution over the fine-tuned backbone's spatial map (``Backbone.forward_with_map``),
trained on work-zone masks (``roadwork.train.finetune``). Served, it runs over the global view of a
photo and gives two fields: the highest roadwork probability anywhere in the map (a single cone is
enough) and the share of the map above one half (how much of the scene is work zone). Its evidence is
cached like features, in a namespace named by both the backbone's and the branch's weights.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from roadwork.backbones.base import Backbone
from roadwork.features.source import BackboneSource, ReadsBackbone

EVIDENCE_FIELDS = ("segmentation.roadwork.max", "segmentation.roadwork.area")


def segmenter_layer(token_dim: int) -> nn.Conv2d:
    """The branch fine-tuning trains: one roadwork logit per position of the backbone's map."""
    return nn.Conv2d(token_dim, 1, kernel_size=1)


def roadwork_map(segmenter: nn.Conv2d, spatial: Tensor) -> Tensor:
    """Per-position roadwork probability ``[N, g, g]`` from the spatial map ``[N, token_dim, g, g]``."""
    return torch.sigmoid(segmenter(spatial.to(segmenter.weight.dtype)))[:, 0]


def map_evidence(probabilities: Tensor) -> Tensor:
    """``[N, g, g]`` probabilities -> ``[N, 2]``: the highest one, the share above one half."""
    flat = probabilities.flatten(1)
    return torch.stack([flat.amax(dim=1), (flat > 0.5).float().mean(dim=1)], dim=1)


class SegmentationEvidence(nn.Module):
    """The fine-tuned backbone and its branch, with the ``features`` interface extraction calls: one
    global view per photo in, ``[N, 2]`` evidence out (``EVIDENCE_FIELDS``)."""

    def __init__(self, backbone: Backbone, segmenter: nn.Conv2d) -> None:
        super().__init__()
        self.backbone, self.segmenter = backbone, segmenter.eval().requires_grad_(False)
        self.name = f"{backbone.name} segmentation"
        self.input_size = backbone.input_size

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def roadwork_map(self, views: Tensor) -> Tensor:
        """Per-position roadwork probability ``[N, g, g]`` of each view."""
        _, tokens = self.backbone.features(views, return_tokens=True)
        side = int(tokens.shape[1] ** 0.5)
        spatial = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)
        with torch.inference_mode():
            return roadwork_map(self.segmenter.to(spatial.device), spatial).float().clone()

    def features(self, views: Tensor) -> Tensor:
        return map_evidence(self.roadwork_map(views))


@dataclass(frozen=True)
class SegmentationSource(ReadsBackbone):
    """The segmentation branch as a feature source of per-photo evidence: ``backbone`` is the adapted
    backbone it reads (a ``BackboneSource`` with changed weights), ``weights_file`` the branch's weights,
    ``digest`` their SHA-256."""

    backbone: BackboneSource
    digest: str
    weights_file: Path | None = None
    name: str = "segmentation"
    fields: ClassVar[tuple[str, ...]] = EVIDENCE_FIELDS

    @property
    def identity(self) -> str:
        return f"segmentation-{self.digest[:12]}|{self.digest}"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "segmentation", "reads": self.backbone.name, "fields": list(self.fields),
                "segmenter_sha256": self.digest}

    def load(self, device: str | torch.device) -> SegmentationEvidence:
        if self.weights_file is None:
            raise ValueError(f"source {self.name!r}: its branch's weights were not stored with it")
        return SegmentationEvidence(self.backbone.load(device), load_segmenter(load_file(str(self.weights_file))))


def segmenter_digest(weights: dict[str, Tensor]) -> str:
    return hashlib.sha256(save(weights)).hexdigest()


def load_segmenter(weights: dict[str, Tensor]) -> nn.Conv2d:
    """The branch from its stored weights (``weight`` [1, token_dim, 1, 1], ``bias`` [1])."""
    layer = segmenter_layer(int(weights["weight"].shape[1]))
    layer.load_state_dict(weights)
    return layer.eval()
