"""Feature sources: what a head reads features from, by name.

A source says what it is without loading weights (``describe``), owns the cache namespace its features
are stored under (``store``: two sources never share one, so features of a fine-tuned backbone never
mix with the frozen ones), and builds the model that computes them when a feature is missing
(``load``). Backbones, frozen or fine-tuned, are the sources there are; the experts to come (a
detector, depth, segmentation) implement the same protocol with their own outputs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from safetensors.torch import load_file

from roadwork.backbones.adapt import create_adapted_backbone, weights_digest
from roadwork.backbones.base import Backbone, BackboneSpec, create_backbone
from roadwork.errors import RoadworkError
from roadwork.features.store import FeatureStore, adapted_variant, default_cache_dir, namespace_for
from roadwork.storage import read_json, writable_folder

ADAPTED_WEIGHTS, ADAPTED_MANIFEST = "backbone.safetensors", "adapted.json"   # what `roadwork adapt` writes


class FeatureModel(Protocol):
    """What a source's ``load`` gives: a backbone, or an expert (segmentation, detector, depth, night) that
    extraction calls the same way."""

    @property
    def device(self) -> torch.device: ...

    def features(self, views: torch.Tensor) -> torch.Tensor:
        """``[N, 3, S, S]`` views in, a vector per view out (NaN in evidence is NULL where ``gives_null``)."""


class FeatureSource(Protocol):
    name: str
    output: ClassVar[str]   # "views": a pooled vector per view of each photo; "evidence": one vector per photo

    @property
    def views(self) -> tuple[str, int]:
        """The view plan it reads, and the side its views are resized to."""

    def describe(self) -> dict[str, Any]:
        """What the source is, from its description alone (no weights are read)."""

    def store(self, cache_dir: str | Path | None, device: str | torch.device = "cpu",
              variant: str | None = None) -> FeatureStore:
        """The cache of this source's features (``variant``: of transformed copies of the photos)."""

    def load(self, device: str | torch.device) -> FeatureModel:
        """The model that computes the features."""


@dataclass(frozen=True)
class BackboneSource:
    """A backbone as a feature source: the model a spec names, or that model with the weights fine-tuning
    changed (``changed``: their SHA-256, which names the cache namespace; ``weights_file``: where they are
    stored, when they are to be loaded)."""

    spec: BackboneSpec
    name: str = "backbone"
    changed: str | None = None
    weights_file: Path | None = None
    output: ClassVar[str] = "views"

    @property
    def views(self) -> tuple[str, int]:
        return self.spec.views, self.spec.input_size

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "adapted_backbone" if self.changed else "backbone",
                "backbone": self.spec.name, "input_size": self.spec.input_size, "views": self.spec.views,
                "changed_weights_sha256": self.changed}

    def store(self, cache_dir: str | Path | None, device: str | torch.device = "cpu",
              variant: str | None = None) -> FeatureStore:
        """Under ``cache_dir``, one namespace per spec (name, weights, input size, view plan), changed
        weights, precision (bf16 on CUDA) and variant. Reads the spec only, so a fully cached evaluation
        never loads the model."""
        root = writable_folder(cache_dir if cache_dir is not None else default_cache_dir(), "cache folder")
        precision = "bf16" if torch.device(device).type == "cuda" else "fp32"   # Backbone.run autocasts on CUDA
        parts = [adapted_variant(self.changed) if self.changed else None, variant]
        spec = self.spec
        return FeatureStore(root, namespace_for(spec.name, spec.input_size, spec.views, spec.weights, precision,
                                                "+".join(p for p in parts if p) or None))

    def load(self, device: str | torch.device) -> Backbone:
        spec = self.spec
        if self.weights_file is None:
            if self.changed:
                raise ValueError(f"source {self.name!r}: its changed weights were not stored with it")
            return create_backbone(spec.name, weights=spec.weights, device=device, input_size=spec.input_size)
        return create_adapted_backbone(spec.name, load_file(str(self.weights_file)), weights=spec.weights,
                                       input_size=spec.input_size, device=device)


def adapted_source(folder: str | Path) -> BackboneSource:
    """The backbone a ``roadwork adapt`` folder holds, as a feature source (its features in a namespace of
    their own); the weights' digest is checked against the folder's manifest."""
    folder = Path(folder)
    try:
        manifest = read_json(folder / ADAPTED_MANIFEST)
        spec = BackboneSpec(**manifest["backbone"])
        digest = weights_digest(load_file(str(folder / ADAPTED_WEIGHTS)))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RoadworkError(f"data.adapted: {folder} is not a folder `roadwork adapt` wrote ({error})") from None
    if digest != manifest.get("changed_weights_sha256"):
        raise RoadworkError(f"data.adapted: {folder / ADAPTED_WEIGHTS} does not match its {ADAPTED_MANIFEST}")
    return BackboneSource(spec, changed=digest, weights_file=folder / ADAPTED_WEIGHTS)


class ReadsBackbone(ABC):
    """An evidence source computed over a backbone's global view (the segmentation branch, the night
    stream): its spec, views and cache namespace follow from that backbone and the source's ``identity``."""

    backbone: BackboneSource
    output: ClassVar[str] = "evidence"
    plan: ClassVar[str] = "global"   # the whole scene once: tiles would count one cone several times

    @property
    @abstractmethod
    def identity(self) -> str:
        """What, besides the backbone, its evidence depends on (names its cache namespace)."""

    @property
    def spec(self) -> BackboneSpec:
        return self.backbone.spec

    @property
    def views(self) -> tuple[str, int]:
        return self.plan, self.spec.input_size

    def store(self, cache_dir: str | Path | None, device: str | torch.device = "cpu",
              variant: str | None = None) -> FeatureStore:
        root = writable_folder(cache_dir if cache_dir is not None else default_cache_dir(), "cache folder")
        precision = "bf16" if torch.device(device).type == "cuda" else "fp32"
        spec, identity = self.spec, f"{self.identity}|{self.backbone.changed}"
        return FeatureStore(root, namespace_for(spec.name, spec.input_size, self.plan, spec.weights, precision,
                                                identity + (f"|{variant}" if variant else "")))
