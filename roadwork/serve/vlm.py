"""A vision-language model served as a bundle (kind ``vlm``): ``roadwork vlm zero-shot`` writes it.

The folder holds only ``manifest.json``: the model (hub id or folder, as a bundle names its backbone),
the question, the pixel budget, the calibration fitted on labelled photos and its metrics. The
score is the model's yes/no margin (``roadwork.experts.vlm``), calibrated like a head's, so
``evaluate``, ``predict``, ``serve``, the miner adapter, a cascade's slow tier and ``distill --teacher``
take the folder like any bundle. The model loads on first use.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from roadwork.config import TtaConfig
from roadwork.data.decode import decode_image, to_rgb
from roadwork.data.records import Sample
from roadwork.errors import RoadworkError
from roadwork.experts.vlm import YesNoVlm
from roadwork.features.metadata import ServedInputs
from roadwork.serve.bundle import MANIFEST, BundleError, manifest_digest
from roadwork.serve.calibration import Calibration
from roadwork.serve.scorer import Hashed, ImageInput, MemberScores, Prediction, Scorer, read_kind, resolve_image
from roadwork.storage import atomic_write_json, write_folder

FORMAT_VERSION = 1
MODEL_FOLDER = "model"   # a fine-tuned model lives inside its bundle


def save_vlm(path: str | Path, *, model: str | YesNoVlm, question: str, max_pixels: int, calibration: Calibration,
             metrics: dict[str, Any]) -> Path:
    """The bundle, naming ``model`` (hub id or folder), or holding it (a fine-tuned ``YesNoVlm``)."""

    def fill(staging: Path) -> None:
        if isinstance(model, YesNoVlm):
            model.model.save_pretrained(staging / MODEL_FOLDER)
            model.processor.save_pretrained(staging / MODEL_FOLDER)
        manifest = {"kind": "vlm", "format_version": FORMAT_VERSION,
                    "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "model": MODEL_FOLDER if isinstance(model, YesNoVlm) else model,
                    "model_in_bundle": isinstance(model, YesNoVlm),
                    "question": question, "max_pixels": max_pixels, "calibration": calibration.to_dict(),
                    "decision_threshold": 0.5, "metrics": metrics}
        manifest["manifest_sha256"] = manifest_digest(manifest)
        atomic_write_json(staging / MANIFEST, manifest)

    return write_folder(path, fill)


def as_photo(image: ImageInput, name: str) -> Image.Image:
    """A request image (any ``ImageInput``) as an upright RGB photo."""
    resolved = resolve_image(image, name)
    if isinstance(resolved, bytes):
        return decode_image(resolved, source=name)
    return to_rgb(resolved if isinstance(resolved, Image.Image) else Image.fromarray(np.asarray(resolved)))


def sample_photos(samples: Sequence[Sample]) -> tuple[list[Image.Image], list[int], dict[str, str]]:
    """The photos that decode, their indices, and the failures by file name."""
    photos, good, failures = [], [], {}
    for i, sample in enumerate(samples):
        try:
            photos.append(decode_image(sample.read_bytes(), source=sample.file_name))
            good.append(i)
        except RoadworkError as error:
            failures[sample.file_name] = str(error)
    return photos, good, failures


def batched_margins(vlm: YesNoVlm, photos: Sequence[Image.Image], batch_size: int) -> Tensor:
    return torch.cat([vlm.margins(photos[i:i + batch_size]) for i in range(0, len(photos), batch_size)])


class VlmScorer(Scorer):
    """A ``vlm`` folder: the model asked its question about every photo, batched, calibrated."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 8) -> None:
        self.path = Path(path)
        kind, manifest = read_kind(self.path)
        try:
            if kind != "vlm" or manifest.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"kind {kind!r}, format {manifest.get('format_version')!r}")
            if manifest.get("manifest_sha256") != manifest_digest(manifest):
                raise BundleError(f"{self.path}: the manifest was modified after it was written")
            self.calibration = Calibration.from_dict(manifest["calibration"])
            inside = manifest.get("model_in_bundle", False)
            self.model_name = str(self.path / manifest["model"]) if inside else str(manifest["model"])
            self.question = str(manifest["question"])
            self.max_pixels = int(manifest["max_pixels"])
        except (ValueError, KeyError, TypeError) as error:
            raise BundleError(f"{self.path}: unreadable vlm bundle: {type(error).__name__}: {error}") from error
        self.manifest, self.device, self.batch_size = manifest, torch.device(device), batch_size
        self._vlm: YesNoVlm | None = None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> VlmScorer:
        return cls(path, device)

    @property
    def served(self) -> ServedInputs:
        return ServedInputs(metadata=False)

    @property
    def vlm(self) -> YesNoVlm:
        if self._vlm is None:
            self._vlm = YesNoVlm(self.model_name, self.question, max_pixels=self.max_pixels, device=self.device)
        return self._vlm

    def describe(self) -> dict[str, Any]:
        return {"bundle": str(self.path), "kind": "vlm", "backbone": self.model_name, "question": self.question,
                "tta": TtaConfig().model_dump()}

    def use_tta(self, config: TtaConfig) -> None:
        if config.mode != "none":
            raise BundleError(f"{self.path}: test-time augmentation is not defined for a vlm bundle; use --tta none")

    def warm_up(self) -> None:
        self.predict_images([np.full((64, 64, 3), 128, dtype=np.uint8)])

    def training_fingerprints(self) -> set[int]:
        return set()   # zero-shot: it learnt from none of the user's photos

    def _margins(self, photos: Sequence[Image.Image]) -> Tensor:
        with self._lock:
            return batched_margins(self.vlm, photos, self.batch_size)

    def predict_images(self, images: Sequence[ImageInput], names: Sequence[str] | None = None) -> list[Prediction]:
        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        results, photos, good = [Prediction(name) for name in names], [], []
        for i, (image, result) in enumerate(zip(images, results)):
            try:
                photos.append(as_photo(image, result.name))
                good.append(i)
            except RoadworkError as error:
                result.error = str(error)
        if photos:
            for i, value in zip(good, self.calibration(self._margins(photos)).tolist()):
                results[i].probability = value
        return results

    def sample_margins(self, samples: Sequence[Sample], cache_dir: str | Path | None = None,
                       use_cache: bool = True, progress: bool | None = False,
                       hashed: Hashed | None = None) -> tuple[Tensor | None, list[int], dict[str, str]]:
        """The margin of every sample that decodes (nothing is cached: the model sees the photo itself)."""
        photos, good, failures = sample_photos(samples)
        return (self._margins(photos) if photos else None), good, failures

    def member_scores(self, samples: Sequence[Sample], cache_dir: str | Path | None = None,
                      progress: bool | None = False, hashed: Hashed | None = None) -> MemberScores:
        """One member; its margin stands in for an embedding (a VLM bundle keeps no image features)."""
        margins, good, failures = self.sample_margins(samples, cache_dir, progress=progress, hashed=hashed)
        values = margins if margins is not None else torch.empty(0)
        return MemberScores(self.calibration(values)[:, None], values[:, None].float(), good, failures)
