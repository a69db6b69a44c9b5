"""Bundle -> calibrated roadwork probabilities, for images on disk, in memory or already cached."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from roadwork.config import TtaConfig
from roadwork.data.augment import TtaTransform, tta_transforms
from roadwork.data.records import Sample
from roadwork.data.views import image_views, plan_boxes, views_from_image
from roadwork.errors import RoadworkError
from roadwork.experts.segmentation import SegmentationSource
from roadwork.features.extract import content_keys, extract_and_load
from roadwork.features.metadata import ServedInputs
from roadwork.features.source import FeatureModel, FeatureSource
from roadwork.features.store import FeatureStore
from roadwork.features.table import FeatureTable, evidence_rows, head_outputs
from roadwork.model.text import TextEncoder
from roadwork.serve.bundle import Bundle, BundleError, load_bundle
from roadwork.serve.calibration import Calibration
from roadwork.serve.scorer import Hashed, ImageInput, MemberScores, Prediction, Prepared, Scorer, resolve_image
from roadwork.serve.tta import FeatureDensity, combine

ViewKey = tuple[str, int]   # a view plan and the side its views are resized to
ImageViews = dict[ViewKey, Tensor]   # one photo's views, for every (plan, size) the bundle's sources read


def transformed(transform: TtaTransform, views: ImageViews) -> ImageViews:
    """A test-time copy of every view of one photo."""
    return {key: transform(tensor) for key, tensor in views.items()}


def request_views(image: ImageInput, plan: str, input_size: int, device: torch.device, name: str) -> Tensor:
    """The views of one request image (see ``resolve_image``)."""
    image = resolve_image(image, name)
    if isinstance(image, bytes):
        return image_views(image, plan, input_size, device=device, source=name)
    return views_from_image(image, plan, input_size, device=device, source=name)


class Predictor(Scorer):
    """A head or fold-ensemble bundle: holds the heads, and loads the backbone(s) and text encoder only
    when first needed.

    Each head reads one of the bundle's feature sources: the frozen backbone, or an adapted one (its
    features cached under that backbone's digest). A k-fold fine-tuned bundle has a source per head;
    a frozen one, or one adapted backbone serving every head, has one. Evidence sources (a
    segmentation branch) follow them in ``feature_sources``: one evidence vector per photo, from its
    global view, which the heads that read them take beside the features.
    """

    reads_cache = True   # False where a runtime computes every feature itself (an ONNX export)

    def __init__(self, bundle: Bundle, device: str | torch.device = "cpu", batch_size: int = 256) -> None:
        self.bundle = bundle
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.head = bundle.head.to(self.device).eval()
        self.feature_sources: list[FeatureSource] = [bundle.feature_source(i) for i in range(len(bundle.sources))]
        self.feature_sources += [bundle.evidence_source(j) for j in range(len(bundle.evidence_sources))]
        self._backbones: dict[int, FeatureModel] = {}
        self._lock = threading.RLock()
        self._text: TextEncoder | None = None
        self.tta = TtaConfig()
        self._densities: list[FeatureDensity] | None = None

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Predictor:
        return cls(load_bundle(path, device), device)

    def use_tta(self, config: TtaConfig) -> None:
        if config.mode == "foods":
            self._densities = self.bundle.densities()
            if self._densities is None:
                raise BundleError(f"{self.bundle.path}: this bundle holds no training-feature statistics for FOODS "
                                  "(it was written before they existed); retrain it, or use --tta plain")
        self.tta = config

    @property
    def calibration(self) -> Calibration:
        return self.bundle.calibration

    @property
    def served(self) -> ServedInputs:
        return self.bundle.served

    def training_fingerprints(self) -> set[int]:
        return self.bundle.training_fingerprints()

    def describe(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle.path), "kind": self.bundle.manifest.get("kind"),
                "backbone": self.bundle.backbone.name, "tta": self.tta.model_dump()}

    @property
    def sources(self) -> int:
        """How many backbones produce features."""
        return len(self.bundle.sources)

    def backbone(self, source: int = 0) -> FeatureModel:
        with self._lock:
            return self._backbone(source)

    def _views(self, source: int) -> ViewKey:
        """The views source ``source`` reads: the bundle's plan at the backbone's input size, or an evidence
        source's (the global view, at its own size for a detector)."""
        return self.feature_sources[source].views

    def _view_keys(self) -> list[ViewKey]:
        """Every (plan, size) some source reads, each decoded once per photo."""
        return list(dict.fromkeys(self._views(i) for i in range(len(self.feature_sources))))

    def _backbone(self, source: int) -> FeatureModel:
        if source not in self._backbones:
            self._backbones[source] = self.feature_sources[source].load(self.device)
        return self._backbones[source]

    def _store(self, source: int, cache_dir: str | Path | None, transform: TtaTransform | None = None) -> FeatureStore:
        return self.feature_sources[source].store(cache_dir, self.device, transform.variant if transform else None)

    def _features(self, views: Sequence[ImageViews]) -> list[list[Tensor]]:
        """Per source, each image's ``[views, dim]`` features (``[1, fields]`` evidence from its global
        view), the views of several images batched together."""
        if not views:
            return [[] for _ in self.feature_sources]
        batched = {key: (torch.cat([v[key] for v in views]), [v[key].shape[0] for v in views])
                   for key in self._view_keys()}   # once per (plan, size), however many sources read it
        per_source = []
        for source in range(len(self.feature_sources)):
            stacked, counts = batched[self._views(source)]
            pooled = torch.cat([self._encode(source, chunk).cpu() for chunk in stacked.split(self.batch_size)])
            per_source.append(list(pooled.split(counts)))
        return per_source

    def _decode(self, image: ImageInput, name: str) -> ImageViews:
        """The views of one image every source needs (raises the decoding error)."""
        return {key: request_views(image, key[0], key[1], self.device, name) for key in self._view_keys()}

    def _encode(self, source: int, views: Tensor) -> Tensor:
        """Pooled ``[N, D]`` features (or ``[N, fields]`` evidence) of ``[N, 3, S, S]`` views from
        feature source ``source``."""
        return self.backbone(source).features(views)

    def predict_images(self, images: Sequence[ImageInput], names: Sequence[str] | None = None) -> list[Prediction]:
        """Calibrated P(roadwork) for images held in memory or named by path: the request path of a server.

        Nothing is cached or written, no worker process is started, and concurrent callers are
        serialised (the backbone is built once). A bad image gets an error in its own result only.
        """
        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        return self.score_prepared(self.prepare_images(images, names))

    def prepare_images(self, images: Sequence[ImageInput], names: Sequence[str]) -> Prepared:
        """Each image decoded into its views on the device (no model runs, no lock is taken, so a server
        decodes the next requests while the backbone scores these)."""
        views: list[ImageViews | None] = []
        results = [Prediction(name) for name in names]
        for image, result in zip(images, results):
            try:
                views.append(self._decode(image, result.name))
            except RoadworkError as error:
                views.append(None)
                result.error = str(error)
        return Prepared(views, list(names), results)

    def score_prepared(self, prepared: Prepared) -> list[Prediction]:
        views, results = prepared.images, prepared.results or [Prediction(name) for name in prepared.names]
        good = [i for i, v in enumerate(views) if v is not None]
        if good:
            with self._lock:
                samples = [Sample(file_name=prepared.names[i], label=None) for i in good]
                margins = self._margins(lambda t: self._features([transformed(t, views[i]) for i in good]), samples)
            for i, value in zip(good, self.calibration(margins).tolist()):
                results[i].probability = value
        return results

    def request_views(self, width: int, height: int) -> int:
        """The plan's views through every backbone source, the global view through every evidence source,
        for every test-time copy."""
        spec = self.bundle.backbone
        tta = 1 if self.tta.mode == "none" else self.tta.augmentations
        views = len(plan_boxes(spec.views, width, height, spec.input_size))
        return (views * self.sources + len(self.bundle.evidence_sources)) * tta

    def roadwork_maps(self, samples: Sequence[Sample]) -> list[Tensor | None]:
        """The mean of the bundle's segmentation branches' maps over each photo's global view (None where
        the photo does not decode, or for every photo without a branch)."""
        experts = [j for j in range(self.sources, len(self.feature_sources))
                   if isinstance(self.feature_sources[j], SegmentationSource)]
        maps: list[Tensor | None] = [None] * len(samples)
        if not experts:
            return maps
        size = self.bundle.backbone.input_size
        for start in range(0, len(samples), self.batch_size):
            views, rows = [], []
            for row in range(start, min(start + self.batch_size, len(samples))):
                try:
                    views.append(image_views(samples[row].read_bytes(), "global", size, device=self.device,
                                             source=samples[row].file_name))
                    rows.append(row)
                except RoadworkError:
                    continue
            if views:
                with self._lock:
                    batch = torch.cat(views)
                    mean = torch.stack([self.backbone(j).roadwork_map(batch).cpu() for j in experts]).mean(0)  # type: ignore[union-attr]
                for row, found in zip(rows, mean):
                    maps[row] = found
        return maps

    def warm_up(self) -> None:
        """Build every backbone and run one image through them, so the first request pays no set-up."""
        self.predict_images([np.full((64, 64, 3), 128, dtype=np.uint8)])

    def _text_embeddings(self, samples: Sequence[Sample]) -> dict[str, Tensor] | None:
        model = self.bundle.head_config
        if not (self.served.metadata and model.metadata and model.text):
            return None
        if self._text is None:
            self._text = TextEncoder()
        return self._text.embed(s.description for s in samples if s.description is not None)

    def margins_from_features(self, features: Sequence[Sequence[Tensor]], samples: Sequence[Sample]) -> Tensor:
        """The head's logit margins before calibration, ``[N]`` (or ``[N, K]`` for K fold members), from
        each sample's cached ``[n_views, dim]`` features, one list per feature source (the backbones,
        then the evidence sources).

        A bundle calibrated for image-only requests scores every sample without its metadata, so
        ``evaluate`` measures what is served.
        """
        return self._outputs(features, samples)[0]

    def _outputs(self, features: Sequence[Sequence[Tensor]], samples: Sequence[Sample],
                 fused: bool = False) -> tuple[Tensor, Tensor | None]:
        """Margins (see ``margins_from_features``) and, with ``fused``, each member's fusion-layer
        features ``[N, K, F]``."""
        if len(features) != len(self.feature_sources):
            raise ValueError(f"this bundle reads {len(self.feature_sources)} feature source(s), "
                             f"got {len(features)} lists")
        text = self._text_embeddings(samples)
        evidence = [evidence_rows(features[self.sources + j], len(samples), len(self.bundle.evidence_sources[j].fields))
                    for j in range(len(self.bundle.evidence_sources))]
        member_evidence = self.bundle.member_evidence or [[] for _ in self.head.members]
        built: dict[tuple[int, tuple[int, ...]], FeatureTable] = {}
        for source, chosen in zip(self.bundle.member_sources, member_evidence):
            if (source, tuple(chosen)) not in built:
                columns = torch.cat([evidence[j] for j in chosen], dim=1) if chosen else None
                built[source, tuple(chosen)] = FeatureTable.build(samples, features[source], self.bundle.vocab, text,
                                                                  evidence=columns).as_served(self.served)
        return self._head_outputs([built[source, tuple(chosen)] for source, chosen
                                   in zip(self.bundle.member_sources, member_evidence)], fused)

    def _head_outputs(self, tables: Sequence[FeatureTable], fused: bool) -> tuple[Tensor, Tensor | None]:
        """Margins and fusion-layer features of the heads, one table per member (see ``_outputs``)."""
        if self.sources == 1 and not self.bundle.evidence_sources:   # every member reads the same table
            return head_outputs(self.head, tables[0], self.device, self.batch_size, fused)
        outputs = [head_outputs(member, table, self.device, self.batch_size, fused)
                   for member, table in zip(self.head.members, tables)]
        return (torch.stack([m for m, _ in outputs], dim=-1),
                torch.cat([f for _, f in outputs], dim=1) if fused else None)  # type: ignore[misc]

    def _margins(self, features_of: Callable[[TtaTransform], list[list[Tensor]]], samples: Sequence[Sample]) -> Tensor:
        """The samples' margins: of the photos themselves, or combined over their test-time copies
        (``self.tta``); ``features_of(transform)`` gives the features of every sample's copy."""
        transforms = tta_transforms(1 if self.tta.mode == "none" else self.tta.augmentations)
        if len(transforms) == 1:
            return self._outputs(features_of(transforms[0]), samples)[0]
        foods = self.tta.mode == "foods"
        margins, distances = [], []
        for transform in transforms:
            copy, fused = self._outputs(features_of(transform), samples, fused=foods)
            margins.append(copy)
            if foods:
                per_member = [d.distances(fused[:, k]) for k, d in enumerate(self._densities)]  # type: ignore[index, arg-type]
                distances.append(torch.stack(per_member, dim=-1).reshape(copy.shape))
        return combine(torch.stack(margins), torch.stack(distances) if foods else None, self.tta)

    def probabilities_from_features(self, features: Sequence[Sequence[Tensor]], samples: Sequence[Sample]) -> Tensor:
        """Calibrated P(roadwork) per sample (see ``margins_from_features``)."""
        return self.bundle.calibration(self.margins_from_features(features, samples))

    def sample_features(self, samples: Sequence[Sample], cache_dir: str | Path | None = None,
                        use_cache: bool = True, progress: bool | None = False,
                        hashed: Hashed | None = None, transform: TtaTransform | None = None,
                        ) -> tuple[list[list[Tensor]], list[int], dict[str, str]]:
        """``[n_views, dim]`` features per source of the samples whose images decoded, their indices,
        and the failures by file name; ``hashed`` passes ``content_keys(samples)`` when the caller
        already has them; ``transform`` gives the features of a test-time copy of every photo instead
        (cached apart from the plain ones)."""
        transform = None if transform is None or transform.identity else transform
        if use_cache and self.reads_cache:
            if hashed is None:
                hashed = content_keys(samples, progress)
            loaded, failures = [], {}
            for source in range(len(self.feature_sources)):
                result, cached = extract_and_load(samples, lambda s=source: self.backbone(s), self._views(source)[0],
                                                  self._store(source, cache_dir, transform), progress=progress,
                                                  hashed=hashed, augment=transform)
                loaded.append(cached)
                failures |= result.failures
            good = [i for i in range(len(samples)) if all(cached[i] is not None for cached in loaded)]
            return [[cached[i] for i in good] for cached in loaded], good, failures   # type: ignore[misc]
        views, good, failures = self._sample_views(samples)
        return self._features([v if transform is None else transformed(transform, v) for v in views]), good, failures

    def _sample_views(self, samples: Sequence[Sample]) -> tuple[list[ImageViews], list[int], dict[str, str]]:
        """The views of the samples whose images decoded, their indices, and the failures by file name."""
        views, good, failures = [], [], {}
        for i, sample in enumerate(samples):
            try:
                views.append(self._decode(sample.read_bytes(), sample.file_name))
                good.append(i)
            except RoadworkError as error:
                failures[sample.file_name] = str(error)
        return views, good, failures

    def sample_margins(self, samples: Sequence[Sample], cache_dir: str | Path | None = None,
                       use_cache: bool = True, progress: bool | None = False,
                       hashed: Hashed | None = None) -> tuple[Tensor | None, list[int], dict[str, str]]:
        """Margins (see ``margins_from_features``; over test-time copies when ``use_tta`` turned them on)
        of the samples whose images decoded, their indices, and the failures by file name."""
        if not use_cache or not self.reads_cache:   # decode once; every copy transforms these views
            views, good, failures = self._sample_views(samples)
            kept = [samples[i] for i in good]
            if not good:
                return None, good, failures
            return self._margins(lambda t: self._features([transformed(t, v) for v in views]), kept), good, failures
        if hashed is None:   # hash once for every copy
            hashed = content_keys(samples, progress)
        features, good, failures = self.sample_features(samples, cache_dir, use_cache, progress, hashed)
        if not good:
            return None, good, failures
        kept = [samples[i] for i in good]
        kept_hashed = ([hashed[0][i] for i in good], {})

        def features_of(transform: TtaTransform) -> list[list[Tensor]]:
            if transform.identity:
                return features
            copies, copy_good, _ = self.sample_features(kept, cache_dir, use_cache, progress, kept_hashed, transform)
            if len(copy_good) != len(kept):
                raise RoadworkError(f"test-time copy {transform.name} failed on a photo whose original decoded")
            return copies

        return self._margins(features_of, kept), good, failures

    def member_scores(self, samples: Sequence[Sample], cache_dir: str | Path | None = None,
                      progress: bool | None = False, hashed: Hashed | None = None) -> MemberScores:
        features, good, failures = self.sample_features(samples, cache_dir, progress=progress, hashed=hashed)
        if not good:
            return MemberScores(torch.empty(0, len(self.head.members)), torch.empty(0, 0), good, failures)
        margins = self.margins_from_features(features, [samples[i] for i in good])
        members = margins if margins.ndim == 2 else margins[:, None]
        probabilities = torch.stack([self.calibration(members[:, k]) for k in range(members.shape[1])], 1)
        return MemberScores(probabilities, torch.stack([f[0] for f in features[0]]), good, failures)
