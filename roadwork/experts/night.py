"""The night specialist: a low-light enhancement stream beside the RGB one, for dark photos only.

The second plan's dual-stream idea as one configuration of the expert architecture: each photo's
global view is measured (mean luminance); a dark one (below ``brightness``) is enhanced (kornia's CLAHE,
or a gamma curve) and the backbone's pooled features of the enhanced view become its evidence, which
the heads read beside the usual views (so they learn a night-specific input). A bright photo's
evidence is NULL: the stream is routed by measured brightness, whatever the metadata says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import kornia.enhance as KE
import torch
from torch import Tensor, nn

from roadwork.backbones.base import Backbone
from roadwork.features.source import BackboneSource, ReadsBackbone

ENHANCEMENTS = ("clahe", "gamma")


def luminance(views: Tensor) -> Tensor:
    """Mean Rec. 601 luma of each ``[N, 3, S, S]`` view in 0..1."""
    x = views.float() / 255.0 if views.dtype == torch.uint8 else views.float()
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).flatten(1).mean(dim=1)


def enhance(views: Tensor, how: str) -> Tensor:
    """Low-light enhancement of ``[N, 3, S, S]`` views in 0..1: CLAHE (contrast-limited adaptive
    histogram equalisation) or a brightening gamma of 0.5."""
    if how == "clahe":
        return KE.equalize_clahe(views, clip_limit=2.0, grid_size=(4, 4))
    return KE.adjust_gamma(views, 0.5)


class NightEvidence(nn.Module):
    """The backbone with the ``features`` interface extraction calls: NaN for bright views, the enhanced
    view's pooled features for dark ones."""

    gives_null = True   # NaN is this expert's NULL (a bright photo), not a failure

    def __init__(self, backbone: Backbone, brightness: float, enhancement: str) -> None:
        super().__init__()
        self.backbone, self.brightness, self.enhancement = backbone, brightness, enhancement
        self.name, self.input_size = f"{backbone.name} night stream", backbone.input_size

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def features(self, views: Tensor) -> Tensor:
        x = views.float() / 255.0 if views.dtype == torch.uint8 else views.float()
        dark = luminance(x) < self.brightness
        evidence = torch.full((len(x), self.backbone.feature_dim), float("nan"))
        if dark.any():
            evidence[dark] = self.backbone.features(enhance(x[dark].to(self.device), self.enhancement)).cpu()
        return evidence


@dataclass(frozen=True)
class NightSource(ReadsBackbone):
    """The night stream over ``backbone`` (the frozen base, whatever the heads' sources are)."""

    backbone: BackboneSource
    brightness: float = 0.25
    enhancement: str = "clahe"
    name: str = "night"

    @property
    def identity(self) -> str:
        return f"night-{self.enhancement}|{self.brightness}"

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(f"night.{i}" for i in range(self.spec.feature_dim))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "night", "backbone": self.spec.name, "brightness": self.brightness,
                "enhancement": self.enhancement}

    def load(self, device: str | torch.device) -> NightEvidence:
        return NightEvidence(self.backbone.load(device), self.brightness, self.enhancement)
