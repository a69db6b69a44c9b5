"""Step 1 of ``roadwork train``: load, hash, check, extract (cached), and group the photos.

Everything that is about the data and not about a head happens here once, so that a single split,
k folds and every candidate head reuse it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from roadwork.backbones.base import BackboneSpec
from roadwork.config import TrainConfig
from roadwork.data.annotations import ANNOTATIONS, read_annotations, roadwork_mask
from roadwork.data.augment import SeededCopy
from roadwork.data.groups import Grouping, check_label_conflicts, group_samples, leakage_report
from roadwork.data.records import DatasetError, Sample
from roadwork.data.sources import load_samples
from roadwork.distributed import rank_and_world
from roadwork.experts.depth import DepthSource
from roadwork.experts.detector import DetectorSource, detector_source
from roadwork.experts.night import NightSource
from roadwork.features.extract import content_keys, extract_and_load
from roadwork.features.source import BackboneSource, adapted_source
from roadwork.features.table import evidence_rows
from roadwork.model.text import TextEncoder


@dataclass
class Photos:
    """Photos that decoded, with their content keys and cached ``[views, dim]`` features."""

    samples: list[Sample]
    keys: list[str]
    features: list[Tensor]
    copies: list[list[Tensor]] = field(default_factory=list)   # augmented copies: [copy][photo]
    evidence: Tensor | None = None   # [photos, fields] expert evidence, NaN = NULL (PreparedData.evidence_fields)

    @property
    def labels(self) -> list[int]:
        return [int(s.label) for s in self.samples]  # type: ignore[arg-type]

    def global_features(self) -> Tensor:
        return torch.stack([f[0] for f in self.features])


# Global views are decoded this much larger than the backbone input for fine-tuning, so a random crop of
# a third of the photo is still resized down (or barely up) to the input, as at full resolution.
DECODE_MARGIN = 1.5


@dataclass
class PreparedData:
    train: Photos
    val: Photos | None            # --val-data
    grouping: Grouping
    spec: BackboneSpec
    text: dict[str, Tensor] | None
    leakage: dict[str, Any] | None
    extraction: dict[str, Any]
    adapted_digest: str | None = None   # features from an adapted backbone: its weights' SHA-256
    masks: dict[str, np.ndarray] = field(default_factory=dict)   # by content key: the work-zone mask,
    # uint8 0..255 at the fine-tuning decode size (DECODE_MARGIN x input, as the global view is squeezed)
    evidence_fields: tuple[str, ...] = ()   # the names of the Photos.evidence columns
    experts: list[ImageExpert] = field(default_factory=list)   # whose evidence comes first in them
    source: BackboneSource | None = None   # the backbone before fine-tuning: the base, or data.adapted's


def require_both_classes(samples: Sequence[Sample], name: str) -> None:
    labels = {s.label for s in samples}
    if labels != {0, 1}:
        raise DatasetError(f"{name} data needs both classes (0 and 1); it has {sorted(labels)}")


def training_samples(data: str, add_data: Sequence[str] = ()) -> list[Sample]:
    """DATA's photos, then each added dataset's (labelled active-learning picks, say), whose file
    names are prefixed with their folder's name so that they stay distinct."""
    samples = load_samples(data)
    for extra in add_data:
        prefix = Path(str(extra)).name or "added"
        samples += [replace(s, file_name=f"{prefix}/{s.file_name}") for s in load_samples(extra)]
    return samples


def prepare_data(data: str, config: TrainConfig, *, val_data: str | None, cache_dir: str | Path | None,
                 device: str, progress: bool, add_data: Sequence[str] = ()) -> PreparedData:
    samples = training_samples(data, add_data)
    val_samples = load_samples(val_data) if val_data is not None else []
    require_both_classes(samples, "training")  # before extraction, which can take hours
    if val_data is not None:
        require_both_classes(val_samples, "validation")
    everything = samples + val_samples
    keys, unreadable = content_keys(everything, progress)
    readable = [i for i, k in enumerate(keys[:len(samples)]) if k is not None]
    keep = check_label_conflicts([samples[i] for i in readable], [keys[i] for i in readable],
                                 config.validation.conflicting_labels)
    dropped = set(range(len(samples))) - {readable[i] for i in keep}   # unreadable or conflicting

    settings = config.data
    if settings.adapted is not None:   # the backbone `roadwork adapt` adapted, with its weights
        source = adapted_source(settings.adapted)
        source = replace(source, spec=replace(source.spec, views=settings.views))
    else:
        source = BackboneSource(BackboneSpec.resolve(settings.backbone, weights=settings.backbone_weights,
                                                     input_size=settings.input_size, views=settings.views))
    spec = source.spec
    store = source.store(cache_dir, device)
    build = cache(lambda: source.load(device))   # only if some photo is not cached yet, and then once
    result, features = extract_and_load(everything, build, settings.views, store, num_workers=settings.num_workers,
                                        progress=progress, hashed=(keys, unreadable))

    def photos(rows: range) -> Photos:
        chosen = [i for i in rows if features[i] is not None and i not in dropped]
        return Photos([everything[i] for i in chosen], [result.keys[i] for i in chosen],  # type: ignore[misc]
                      [features[i] for i in chosen])  # type: ignore[misc]

    train = photos(range(len(samples)))
    require_both_classes(train.samples, "training (after dropping undecodable images)")
    for copy in range(1, settings.augment_copies + 1):
        augment = SeededCopy(settings.augment, copy)
        copy_store = source.store(cache_dir, device, variant=augment.variant)
        _, augmented = extract_and_load(train.samples, build, settings.views, copy_store,
                                        num_workers=settings.num_workers, progress=progress,
                                        hashed=(list(train.keys), {}), augment=augment)
        # An augmented copy cannot fail where its photo did not; keep the photo if it somehow does.
        train.copies.append([a if a is not None else f for a, f in zip(augmented, train.features)])
    val = photos(range(len(samples), len(everything))) if val_data is not None else None
    if val is not None:
        require_both_classes(val.samples, "validation (after dropping undecodable images)")
    similarity = config.validation.near_duplicate_similarity
    train_global = train.global_features()
    grouping = group_samples(train.samples, train.keys, train_global, groups=config.validation.groups,
                             similarity=similarity)
    leakage = None
    if val is not None:
        leakage = leakage_report([s.file_name for s in train.samples], train.keys, train_global,
                                 [s.file_name for s in val.samples], val.keys, val.global_features(), similarity)
    text = None
    if config.model.metadata and config.model.text:
        text = TextEncoder().embed(s.description for s in everything if s.description is not None)
    extraction = {"processes": rank_and_world()[1],   # ddp: each extracted its share, then all read all
                  "extracted": result.extracted, "cached": result.cached, "failed": result.failures,
                  "seconds": round(result.seconds, 2), "label_conflicts_dropped": len(readable) - len(keep)}
    masks = training_masks(train, [data, *add_data], config, round(spec.input_size * DECODE_MARGIN)) \
        if config.loss.dice_weight > 0 else {}
    prepared = PreparedData(train, val, grouping, spec, text, leakage, extraction, masks=masks,
                            adapted_digest=source.changed, source=source)
    experts = image_experts(config, source) if config.model.evidence else []
    return with_experts(prepared, experts, config, cache_dir=cache_dir, device=device, progress=progress)


ImageExpert = DetectorSource | DepthSource | NightSource   # experts that read the photo, whatever the heads' backbone


def image_experts(config: TrainConfig, backbone: BackboneSource) -> list[ImageExpert]:
    """The experts ``experts.*`` turns on: a detector, depth over its boxes, the night stream (over the
    frozen ``backbone``)."""
    settings, found = config.experts, []
    if settings.detector:
        detector = detector_source(settings.detector, settings.detector_prompts, settings.detector_threshold,
                                   settings.detector_input_size)
        found.append(detector)
        if settings.depth:
            found.append(DepthSource(settings.depth, detector))
    if settings.night:
        found.append(NightSource(backbone, settings.night_brightness, settings.night_enhancement))
    return found


def with_experts(prep: PreparedData, experts: list[ImageExpert], config: TrainConfig, *,
                 cache_dir: str | Path | None, device: str, progress: bool) -> PreparedData:
    """The photos with each expert's evidence (cached like features; NULL where it gave none for a
    photo), which every head reads, in the experts' order."""
    if not experts:
        return prep
    photos = [p for p in (prep.train, prep.val) if p is not None]
    everything, keys = [s for p in photos for s in p.samples], [k for p in photos for k in p.keys]
    columns, extraction = [], dict(prep.extraction)
    for expert in experts:
        result, found = extract_and_load(everything, cache(lambda e=expert: e.load(device)), expert.plan,
                                         expert.store(cache_dir, device), num_workers=config.data.num_workers,
                                         progress=progress, hashed=(keys, {}))
        columns.append(evidence_rows(found, len(everything), len(expert.fields)))
        extraction[expert.name] = {"extracted": result.extracted, "cached": result.cached,
                                   "failed": len(result.failures), "seconds": round(result.seconds, 2)}
    evidence = torch.cat(columns, dim=1)
    n = len(prep.train.samples)
    train = replace(prep.train, evidence=evidence[:n])
    val = None if prep.val is None else replace(prep.val, evidence=evidence[n:])
    fields = tuple(f for expert in experts for f in expert.fields)
    return replace(prep, train=train, val=val, evidence_fields=fields, experts=experts, extraction=extraction)


def training_masks(train: Photos, folders: Sequence[str], config: TrainConfig, side: int) -> dict[str, np.ndarray]:
    """The work-zone mask of every training photo that has one: from each dataset folder's
    annotations.json and from ``data.masks`` (file names of the first dataset), squeezed to the
    ``side`` x ``side`` global view as the photo is, with soft edges (area averaging)."""
    sources = [(Path(f), Path(f)) for f in folders if (Path(f) / ANNOTATIONS).is_file()]
    if config.data.masks is not None:
        sources.append((Path(config.data.masks), Path(folders[0])))
    known = {}
    for folder, root in sources:
        for file_name, image in read_annotations(folder).items():
            known[(root / file_name).resolve()] = image
    masks = {}
    for sample, key in zip(train.samples, train.keys):
        image = known.get(sample.path.resolve()) if sample.path is not None else None
        mask = None if image is None else roadwork_mask(image)
        if mask is not None:
            soft = torch.nn.functional.interpolate(torch.from_numpy(mask)[None, None].float(), size=(side, side),
                                                   mode="area")
            masks[key] = (soft[0, 0] * 255).round().to(torch.uint8).numpy()
    if not masks:
        raise DatasetError(f"loss.dice_weight is {config.loss.dice_weight} but no training photo has a mask: "
                           f"give data.masks or a dataset with an {ANNOTATIONS}")
    return masks
