"""An object detector as an expert: what it finds in a photo, read off as per-photo evidence.

Any transformers object detector loads by hub id or local folder: open-vocabulary ones
(``AutoModelForZeroShotObjectDetection``: OWLv2, Grounding DINO) are asked for the work-zone concepts by
text prompts (``TEXT=CATEGORY``, as SAM 3 pseudo-masks are); closed-set ones
(``AutoModelForObjectDetection``: RT-DETRv2, D-FINE, or one fine-tuned on roadwork's annotation
categories) report the categories among their labels. The detector sees the photo's global view at its
own input size. For each concept four fields of evidence follow: the highest score, how many boxes
reach ``threshold``, the area share of the largest such box and how near the nearest is (its lower
edge, 0 at the top of the photo, 1 at the bottom: a cone at the roadside ahead is low in the frame).
Evidence is cached by photo content and detector like features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from roadwork.backbones.base import weights_unavailable
from roadwork.data.annotations import CATEGORIES
from roadwork.errors import RoadworkError
from roadwork.experts.prompts import DEFAULT_PROMPTS, Prompt
from roadwork.features.store import FeatureStore, default_cache_dir, local_identity, namespace_for
from roadwork.storage import writable_folder

PER_CONCEPT = ("score", "count", "area", "near")
PLAN = "global"


@dataclass(frozen=True)
class Found:
    """One box a detector found: its concept's index, score and corners in view pixels."""

    concept: int
    score: float
    box: tuple[float, float, float, float]


def concept_evidence(found: Sequence[Sequence[Found]], concepts: int, threshold: float, side: int) -> Tensor:
    """``[N, concepts * 4]``: per concept the highest score, the count of boxes at ``threshold`` or above,
    the largest such box's share of the view and the lowest lower edge of one (0 where none)."""
    evidence = torch.zeros(len(found), concepts, len(PER_CONCEPT))
    for row, boxes in enumerate(found):
        for item in boxes:
            fields = evidence[row, item.concept]
            fields[0] = max(float(fields[0]), item.score)
            if item.score >= threshold:
                x0, y0, x1, y1 = (min(max(v, 0.0), float(side)) for v in item.box)
                fields[1] += 1
                fields[2] = max(float(fields[2]), (x1 - x0) * (y1 - y0) / side**2)
                fields[3] = max(float(fields[3]), y1 / side)
    return evidence.flatten(1)


class DetectorEvidence(nn.Module):
    """A loaded detector with the ``features`` interface extraction calls: global views in, evidence out."""

    def __init__(self, model: str, prompts: Sequence[Prompt], threshold: float, input_size: int,
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        from transformers import (
            AutoImageProcessor,
            AutoModelForObjectDetection,
            AutoModelForZeroShotObjectDetection,
            AutoProcessor,
        )

        self.prompts, self.threshold, self.input_size = tuple(prompts), threshold, input_size
        self.name = f"detector {model}"
        try:
            if self.prompts:
                self.processor = AutoProcessor.from_pretrained(model)
                self.model = AutoModelForZeroShotObjectDetection.from_pretrained(model)
            else:
                self.processor = AutoImageProcessor.from_pretrained(model)
                self.model = AutoModelForObjectDetection.from_pretrained(model)
        except (OSError, ValueError) as error:
            if Path(model).expanduser().exists():
                raise RoadworkError(f"{model}: not a detector folder saved with `save_pretrained`: {error}") from None
            raise weights_unavailable("the detector", model, "a folder saved with `save_pretrained`", error) from None
        self.model.to(device).eval().requires_grad_(False)
        self.concepts = concepts_of(self.prompts, self.model.config.id2label)
        self.label_concept = {label: self.concepts.index(category)
                              for label, category in self.model.config.id2label.items() if category in self.concepts}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def detect(self, views: Tensor) -> list[list[Found]]:
        """Every box each view shows, with its concept (boxes of other labels are dropped)."""
        images = list(views.permute(0, 2, 3, 1).cpu().numpy())
        sizes = [(self.input_size, self.input_size)] * len(images)
        with torch.inference_mode():
            if self.prompts:
                texts = [p.text for p in self.prompts]
                length = self.model.config.text_config.max_position_embeddings   # queries padded alike
                inputs = self.processor(text=[texts] * len(images), images=images, return_tensors="pt",
                                        padding="max_length", truncation=True, max_length=length)
                outputs = self.model(**inputs.to(self.device))
                results = self.processor.post_process_grounded_object_detection(
                    outputs, threshold=0.0, target_sizes=sizes, text_labels=[texts] * len(images))
            else:
                inputs = self.processor(images=images, return_tensors="pt")
                outputs = self.model(**inputs.to(self.device))
                results = self.processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)
        found = []
        for result in results:
            if self.prompts:   # the prompt each box answers, by its text
                concept = [self.concepts.index(self.prompts[[p.text for p in self.prompts].index(t)].category)
                           for t in result["text_labels"]]
            else:
                concept = [self.label_concept.get(int(label), -1) for label in result["labels"]]
            found.append([Found(c, float(s), tuple(float(v) for v in b))   # type: ignore[arg-type]
                          for c, s, b in zip(concept, result["scores"].tolist(), result["boxes"].tolist()) if c >= 0])
        return found

    def features(self, views: Tensor) -> Tensor:
        return concept_evidence(self.detect(views), len(self.concepts), self.threshold, self.input_size)


def concepts_of(prompts: Sequence[Prompt], labels: dict[int, str]) -> tuple[str, ...]:
    """The concepts evidence is given for: the prompts' categories, or the annotation categories among a
    closed-set detector's labels (in the annotation format's order)."""
    if prompts:
        return tuple(dict.fromkeys(p.category for p in prompts))
    named = {str(name) for name in labels.values()}
    concepts = tuple(c for c in CATEGORIES if c in named)
    if not concepts:
        raise RoadworkError(f"this detector's labels ({', '.join(sorted(named)[:8])}, ...) name none of roadwork's "
                            "categories: fine-tune it on them (roadwork's annotation format), or give prompts to an "
                            "open-vocabulary detector")
    return concepts


def detector_source(model: str, prompts: Sequence[str] | None, threshold: float, input_size: int) -> DetectorSource:
    """The source ``experts.detector`` names: open-vocabulary (its configuration's model type is a
    zero-shot detector's) with the given or default prompts, or closed-set with its own labels."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES

    try:
        kind = AutoConfig.from_pretrained(model).model_type
    except (OSError, ValueError) as error:   # ValueError: a folder without a model's config.json
        if Path(model).expanduser().exists():
            raise RoadworkError(f"{model}: not a detector folder saved with `save_pretrained`: {error}") from None
        raise weights_unavailable("the detector", model, "a folder saved with `save_pretrained`", error) from None
    if kind not in MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES:
        if prompts:
            raise RoadworkError(f"experts.detector_prompts: {model} is a closed-set detector ({kind}); it reports "
                                "its own labels and takes no prompts")
        return DetectorSource(model, (), threshold, input_size)
    return DetectorSource(model, tuple(Prompt.parse(p) for p in (prompts or DEFAULT_PROMPTS)), threshold, input_size)


@dataclass(frozen=True)
class DetectorSource:
    """A detector as a feature source of per-photo evidence (``experts.detector``)."""

    model: str
    prompts: tuple[Prompt, ...] = ()
    threshold: float = 0.3
    input_size: int = 640
    name: str = "detector"
    output: ClassVar[str] = "evidence"
    plan: ClassVar[str] = PLAN

    @property
    def concepts(self) -> tuple[str, ...]:
        """Read from the prompts, or from the model's configuration alone (no weights are loaded)."""
        if self.prompts:
            return concepts_of(self.prompts, {})
        from transformers import AutoConfig

        return concepts_of((), AutoConfig.from_pretrained(self.model).id2label)

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(f"detector.{c}.{field}" for c in self.concepts for field in PER_CONCEPT)

    @property
    def views(self) -> tuple[str, int]:
        return self.plan, self.input_size

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "detector", "model": self.model,
                "prompts": [f"{p.text}={p.category}" for p in self.prompts], "threshold": self.threshold,
                "input_size": self.input_size}

    def store(self, cache_dir: str | Path | None, device: str | torch.device = "cpu",
              variant: str | None = None) -> FeatureStore:
        root = writable_folder(cache_dir if cache_dir is not None else default_cache_dir(), "cache folder")
        precision = "bf16" if torch.device(device).type == "cuda" else "fp32"
        return FeatureStore(root, namespace_for(f"detector-{self.model}", self.input_size, self.plan, None, precision,
                                                self.identity + (f"|{variant}" if variant else "")))

    @property
    def identity(self) -> str:
        """What its evidence depends on: the weights (by local files' sizes and times), prompts, threshold."""
        return "|".join(["detector", local_identity(self.model), *(f"{p.text}={p.category}" for p in self.prompts),
                         str(self.threshold)])

    def load(self, device: str | torch.device) -> DetectorEvidence:
        return DetectorEvidence(self.model, self.prompts, self.threshold, self.input_size, device)
