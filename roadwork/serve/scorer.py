"""What every bundle kind serves (the ``Scorer`` contract), and the registry that loads a folder by the
``kind`` its manifest names.

Consumers (``predict``, ``evaluate``, ``serve``, ``active``, ``distill``, the miner adapter) hold a
``Scorer`` and never ask which kind it is. A kind is one registry line, ``kind -> "module:Class"``,
imported when a folder of that kind is loaded (as transformers' auto classes do), so a kind that loads
other kinds (an ensemble loads its members) imports this module, never the reverse.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from roadwork.config import TtaConfig
from roadwork.data.decode import ImageDecodeError, decode_base64
from roadwork.data.records import Sample
from roadwork.features.metadata import ServedInputs
from roadwork.serve.bundle import MANIFEST, BundleError
from roadwork.serve.calibration import Calibration
from roadwork.storage import read_file, read_json

ImageInput = bytes | str | Path | Image.Image | np.ndarray
Hashed = tuple[list[str | None], dict[str, str]]   # content_keys(samples): a key per sample, failures

KINDS = {
    "head": "roadwork.serve.predictor:Predictor",
    "fold_ensemble": "roadwork.serve.predictor:Predictor",
    "ensemble": "roadwork.serve.ensemble:EnsemblePredictor",
    "onnx": "roadwork.serve.onnx:OnnxPredictor",
    "cascade": "roadwork.serve.cascade:CascadeScorer",
    "vlm": "roadwork.serve.vlm:VlmScorer",
}
# Folders written before every kind kept its manifest in manifest.json: the file that named the kind.
LEGACY_MANIFESTS = {"ensemble.json": "ensemble", "onnx.json": "onnx"}
# A published model repository (roadwork.serve.publish) holds its bundle in this folder beside the
# network's card; loading the repository loads the bundle.
PUBLISHED_BUNDLE, PUBLISHED_CARD = "bundle", "model_card.json"


def published_bundle(path: str | Path) -> Path:
    """The bundle a folder holds: itself, or the ``bundle/`` of a published model repository."""
    path = Path(path)
    if not (path / MANIFEST).exists() and (path / PUBLISHED_CARD).is_file() and (path / PUBLISHED_BUNDLE).is_dir():
        return path / PUBLISHED_BUNDLE
    return path


@dataclass
class Prediction:
    """One request image's answer: a probability, or the reason it has none."""

    name: str
    probability: float | None = None
    error: str | None = None


@dataclass
class MemberScores:
    """Each member's calibrated probability ``[n, K]`` for the ``good`` samples, and an embedding per
    sample ``[n, D]`` (the global view's features) to tell near-duplicates apart."""

    probabilities: Tensor
    embeddings: Tensor
    good: list[int]
    failures: dict[str, str]


def resolve_image(image: ImageInput, name: str) -> bytes | Image.Image | np.ndarray:
    """A request image as encoded bytes, a PIL image or an ``[H, W, 3]`` uint8 array: a ``data:image/...;
    base64,`` string is decoded and a file path read (a bad one is the request's ``ImageDecodeError``)."""
    if isinstance(image, str) and image.startswith("data:"):
        return decode_base64(image)
    if isinstance(image, (str, Path)):
        try:
            return read_file(image)
        except OSError as error:
            raise ImageDecodeError(f"{name}: cannot read image: {error}") from error
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (Image.Image, np.ndarray)):
        return image
    raise ImageDecodeError(f"{name}: unsupported image input {type(image).__name__}")


@dataclass
class Prepared:
    """Requests made ready for the model (``Scorer.prepare_images``): the images as given, or what a kind
    made of them (a ``Predictor``: each one's views, None with its error where it failed)."""

    images: list[Any]
    names: list[str]
    results: list[Prediction] | None = None


def spread(count: int, good: Sequence[int], values: Tensor | None) -> list[float | None]:
    """``values`` of the rows ``good`` placed in a list of ``count``, None elsewhere (failed images)."""
    placed: list[float | None] = [None] * count
    if values is not None:
        for i, value in zip(good, values.tolist()):
            placed[i] = value
    return placed


class Scorer(ABC):
    """Calibrated P(roadwork) from a bundle of any kind, for samples on disk (cached features where the
    kind allows) and for images held in memory (the request path)."""

    calibration: Calibration
    served: ServedInputs

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Scorer:
        """The folder of this kind at ``path``, verified."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What answers: the folder, its kind, its backbone(s), test-time augmentation."""

    @abstractmethod
    def use_tta(self, config: TtaConfig) -> None:
        """Score over test-time copies from now on (roadwork.serve.tta); mode none turns it off."""

    @abstractmethod
    def warm_up(self) -> None:
        """Build everything a request needs, so the first one pays no set-up."""

    @abstractmethod
    def training_fingerprints(self) -> set[int]:
        """First 8 bytes (as a signed int) of the SHA-256 of every photo the scorer learnt from."""

    @abstractmethod
    def predict_images(self, images: Sequence[ImageInput], names: Sequence[str] | None = None) -> list[Prediction]:
        """Calibrated P(roadwork) for images in memory or named by path; a bad image fails alone."""

    def prepare_images(self, images: Sequence[ImageInput], names: Sequence[str]) -> Prepared:
        """The first half of ``predict_images``: what can be done before the model runs (decoding, views),
        so that a server decodes the next requests while the model scores these. Kinds that cannot
        split their work pass the images on."""
        return Prepared(list(images), list(names))

    def score_prepared(self, prepared: Prepared) -> list[Prediction]:
        """The second half of ``predict_images``."""
        return self.predict_images(prepared.images, prepared.names)

    def request_views(self, width: int, height: int) -> int:
        """How many backbone views a photo of this size costs on the request path (what a server
        batches by)."""
        return 1

    @abstractmethod
    def sample_margins(self, samples: Sequence[Sample], cache_dir: str | Path | None = None,
                       use_cache: bool = True, progress: bool | None = False, hashed: Hashed | None = None,
                       ) -> tuple[Tensor | None, list[int], dict[str, str]]:
        """Margins (what ``calibration`` takes) of the samples that could be scored, their indices, and
        failures by file name; ``hashed`` passes ``content_keys(samples)`` when the caller has them."""

    @abstractmethod
    def member_scores(self, samples: Sequence[Sample], cache_dir: str | Path | None = None,
                      progress: bool | None = False, hashed: Hashed | None = None) -> MemberScores:
        """Every member's calibrated probability: their disagreement is what active learning asks about."""

    def answers(self) -> dict[str, int]:
        """Photos answered so far by each tier of a kind that has several (a cascade); empty otherwise."""
        return {}

    def last_tiers(self) -> list[str] | None:
        """Which tier answered each sample the last ``sample_margins`` call scored; None for one tier."""
        return None

    def roadwork_maps(self, samples: Sequence[Sample]) -> list[Tensor | None]:
        """Per photo, where a segmentation branch sees roadwork (probabilities ``[g, g]`` over the whole
        photo, squeezed square as its global view); None for every photo of a scorer without one."""
        return [None] * len(samples)

    def predict_samples(self, samples: Sequence[Sample], cache_dir: str | Path | None = None,
                        use_cache: bool = True, progress: bool | None = False, hashed: Hashed | None = None,
                        ) -> tuple[list[float | None], dict[str, str]]:
        """Probabilities (None where an image failed) and the failures by file name."""
        margins, good, failures = self.sample_margins(samples, cache_dir, use_cache, progress, hashed)
        return spread(len(samples), good, None if margins is None else self.calibration(margins)), failures


def read_kind(path: str | Path) -> tuple[str, dict[str, Any]]:
    """The kind a folder's manifest names, and the manifest."""
    path = Path(path)
    for name, legacy_kind in ((MANIFEST, None), *LEGACY_MANIFESTS.items()):
        if not (path / name).exists():
            continue
        try:
            manifest = read_json(path / name)
        except (OSError, ValueError) as error:
            raise BundleError(f"{path}: unreadable {name}: {error}") from error
        if not isinstance(manifest, dict):
            raise BundleError(f"{path}: {name} must hold a JSON object, not {type(manifest).__name__}")
        kind = manifest.get("kind", legacy_kind)
        if kind not in KINDS:
            raise BundleError(f"{path}: unknown bundle kind {kind!r} (this roadwork loads {', '.join(KINDS)})")
        return kind, manifest
    raise BundleError(f"{path}: not a bundle (no {MANIFEST})")


def load_scorer(path: str | Path, device: str | torch.device = "cpu") -> Scorer:
    """Any bundle folder (a head or fold ensemble ``train`` wrote, an ensemble, an ONNX export, or a
    published model repository holding one), by the kind its manifest names."""
    path = published_bundle(path)
    kind, _ = read_kind(path)
    module, _, name = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name).load(path, device)
