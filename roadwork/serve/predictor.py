"""Bundle -> calibrated roadwork probabilities, for images on disk, in memory or already cached."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from roadwork.backbones.base import create_backbone
from roadwork.data.records import Sample
from roadwork.data.views import image_views
from roadwork.features.extract import extract_and_load, open_store
from roadwork.features.table import FeatureTable, head_margins
from roadwork.model.text import TextEncoder
from roadwork.serve.bundle import Bundle, load_bundle


class Predictor:
    """Holds the head, and loads the backbone and text encoder only when first needed."""

    def __init__(self, bundle: Bundle, device: str | torch.device = "cpu", batch_size: int = 256) -> None:
        self.bundle = bundle
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.head = bundle.head.to(self.device).eval()
        self._backbone: torch.nn.Module | None = None
        self._text: TextEncoder | None = None

    @classmethod
    def from_bundle(cls, path: str | Path, device: str | torch.device = "cpu") -> Predictor:
        return cls(load_bundle(path, device), device)

    @property
    def backbone(self) -> torch.nn.Module:
        if self._backbone is None:
            spec = self.bundle.backbone
            self._backbone = create_backbone(spec.name, weights=spec.weights, device=self.device, input_size=spec.input_size)
        return self._backbone

    def _text_embeddings(self, samples: Sequence[Sample]) -> dict[str, Tensor] | None:
        model = self.bundle.head_config
        if self.bundle.served_metadata == "none" or not (model.metadata and model.text):
            return None
        if self._text is None:
            self._text = TextEncoder()
        return self._text.embed(s.description for s in samples if s.description is not None)

    def probabilities_from_features(self, features: Sequence[Tensor], samples: Sequence[Sample]) -> Tensor:
        """Calibrated P(roadwork) per sample from its cached ``[n_views, dim]`` features.

        A bundle calibrated for image-only requests scores every sample without its metadata, so
        ``evaluate`` measures what is served.
        """
        table = FeatureTable.build(samples, features, self.bundle.vocab, self._text_embeddings(samples))
        if self.bundle.served_metadata == "none":
            table = table.image_only()
        return self.bundle.calibration(head_margins(self.head, table, self.device, self.batch_size))

    def predict_samples(self, samples: Sequence[Sample], cache_dir: str | Path | None = None,
                        use_cache: bool = True, progress: bool | None = False,
                        hashed: tuple[list[str | None], dict[str, str]] | None = None,
                        ) -> tuple[list[float | None], dict[str, str]]:
        """Probabilities (None where an image failed) and the failures by file name; ``hashed`` passes
        ``content_keys(samples)`` when the caller already has them."""
        spec = self.bundle.backbone
        if use_cache:
            store = open_store(cache_dir, spec.name, spec.input_size, spec.views, spec.weights, self.device)
            result, cached = extract_and_load(samples, lambda: self.backbone, spec.views, store, progress=progress,
                                              hashed=hashed)
            good = [i for i, f in enumerate(cached) if f is not None]
            features = [cached[i] for i in good]
            failures = result.failures
        else:
            good, features, failures = [], [], {}
            for i, sample in enumerate(samples):
                try:
                    views = image_views(sample.read_bytes(), spec.views, spec.input_size, device=self.device,
                                        source=sample.file_name)
                except ValueError as error:
                    failures[sample.file_name] = str(error)
                    continue
                good.append(i)
                features.append(self.backbone.features(views).cpu())
        probs: list[float | None] = [None] * len(samples)
        if good:
            values = self.probabilities_from_features(features, [samples[i] for i in good])
            for i, value in zip(good, values.tolist()):
                probs[i] = value
        return probs, failures
