"""SAM 3 pseudo-masks: instance masks of work-zone objects on photos nobody annotated, written in the
annotation format synthetic scenes use (``roadwork.data.annotations``), so training reads either.

transformers' ``Sam3Model`` is prompted with text ("traffic cone", ...); each prompt names the
category its instances are filed under. The image encoder runs once per photo and every prompt's
decoder reads its features (measured equal to one forward per photo and prompt). Each photo's result
is cached under its content's SHA-256 and the settings (model, prompts, thresholds), so a killed run
resumes where it stopped and the same photo in another dataset is not segmented twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from roadwork.backbones.base import weights_unavailable
from roadwork.data.annotations import (
    ANNOTATIONS,
    ImageAnnotations,
    ObjectAnnotation,
    coco_document,
    decode_mask,
    encode_mask,
    mask_box,
)
from roadwork.data.decode import decode_image
from roadwork.data.records import DatasetError, Sample
from roadwork.errors import RoadworkError
from roadwork.experts.prompts import Prompt
from roadwork.features.extract import content_keys
from roadwork.features.store import default_cache_dir, local_identity
from roadwork.progress import progress_bar
from roadwork.storage import atomic_write_json, check_output, read_json, write_folder

DEFAULT_MODEL = "facebook/sam3"
MAX_TOKENS = 32   # SAM 3's text encoder reads at most 32 tokens


class Sam3Segmenter:
    """Text-prompted instance masks from a SAM 3 model named by hub id or local folder."""

    def __init__(self, model: str = DEFAULT_MODEL, *, device: str = "cpu", threshold: float = 0.5,
                 mask_threshold: float = 0.5) -> None:
        from transformers import Sam3Model, Sam3Processor

        if model.startswith(("/", "./", "../", "~")) and not Path(model).expanduser().exists():
            raise FileNotFoundError(f"SAM 3 model folder not found: {model}")
        try:
            self.processor = Sam3Processor.from_pretrained(model)
            self.model = Sam3Model.from_pretrained(model).to(device).eval()
        except OSError as error:
            if Path(model).expanduser().exists():
                raise RoadworkError(f"{model}: not a SAM 3 folder saved with `save_pretrained`: {error}") from None
            raise weights_unavailable("SAM 3", model, "a folder saved with `save_pretrained` as --model", error) \
                from None
        self.device, self.threshold, self.mask_threshold = torch.device(device), threshold, mask_threshold
        self.identity = f"{model}|{local_identity(model)}|{threshold}|{mask_threshold}"

    def segment(self, images: Sequence[Image.Image], prompts: Sequence[Prompt]) -> list[list[ObjectAnnotation]]:
        """Every instance each prompt finds in each image, with its visible pixels and score."""
        pixels = self.processor(images=list(images), return_tensors="pt")
        text = self.processor.tokenizer([p.text for p in prompts], padding="max_length", max_length=MAX_TOKENS,
                                        truncation=True, return_tensors="pt")
        pairs = torch.arange(len(images)).repeat_interleave(len(prompts))   # (image, prompt), image-major
        with torch.inference_mode():
            vision = self.model.get_vision_features(pixel_values=pixels.pixel_values.to(self.device))
            vision.fpn_hidden_states = tuple(x[pairs] for x in vision.fpn_hidden_states)
            vision.fpn_position_encoding = tuple(x[pairs] for x in vision.fpn_position_encoding)
            outputs = self.model(vision_embeds=vision,
                                 input_ids=text.input_ids.repeat(len(images), 1).to(self.device),
                                 attention_mask=text.attention_mask.repeat(len(images), 1).to(self.device))
        sizes = [(image.height, image.width) for image in images]
        found = self.processor.post_process_instance_segmentation(
            outputs, threshold=self.threshold, mask_threshold=self.mask_threshold,
            target_sizes=[sizes[i] for i in pairs.tolist()])
        results: list[list[ObjectAnnotation]] = [[] for _ in images]
        for row, instances in enumerate(found):
            image, prompt = divmod(row, len(prompts))
            for mask, score in zip(instances["masks"].bool().cpu().numpy(), instances["scores"].tolist()):
                if mask.any():
                    results[image].append(ObjectAnnotation(prompts[prompt].category, True, mask_box(mask), mask,
                                                           round(float(score), 4)))
        return results


def _batches(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


Segmented = tuple[int, int, list[ObjectAnnotation]]   # a photo's width, height and instances


def _cached(path: Path) -> Segmented | None:
    try:
        entry = read_json(path)
        objects = [ObjectAnnotation(o["category"], True, tuple(o["box"]), decode_mask(o["mask"]), o["score"])
                   for o in entry["objects"]]
        return int(entry["width"]), int(entry["height"]), objects
    except (OSError, ValueError, KeyError, TypeError):
        return None   # absent, or unreadable: segmented again


def pseudo_masks(samples: Sequence[Sample], out: str | Path, segmenter: Sam3Segmenter, prompts: Sequence[Prompt], *,
                 cache_dir: str | Path | None = None, batch_size: int = 4, overwrite: bool = False,
                 progress: bool | None = False, inputs: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Segment every photo (from the cache where it is there), then write OUT/annotations.json and
    OUT/summary.json; photos that cannot be read are listed, not fatal. OUT must be new or empty, or
    an earlier result replaced with ``overwrite``."""
    check_output(out, "pseudo-mask folder", replace=overwrite, inputs=inputs)
    settings = json.dumps({"model": segmenter.identity, "prompts": [p.__dict__ for p in prompts]}, sort_keys=True)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:16]
    folder = Path(cache_dir or default_cache_dir()) / f"pseudo-masks-{digest}"
    keys, failures = content_keys(samples, progress)
    found: dict[int, Segmented] = {}
    todo = []
    for index, key in enumerate(keys):
        if key is not None:
            cached = _cached(folder / key[:2] / f"{key}.json")
            if cached is None:
                todo.append(index)
            else:
                found[index] = cached
    reused = len(found)
    with progress_bar(len(todo), "pseudo-masks", enabled=progress) as advance:
        for batch in _batches(todo, batch_size):
            images, readable = [], []
            for index in batch:
                try:
                    images.append(decode_image(samples[index].read_bytes(), source=samples[index].file_name))
                    readable.append(index)
                except (RoadworkError, DatasetError) as error:
                    failures[samples[index].file_name] = str(error)
            segmented = segmenter.segment(images, prompts) if images else []
            for index, image, objects in zip(readable, images, segmented):
                found[index] = (image.width, image.height, objects)
                key = keys[index]
                atomic_write_json(folder / key[:2] / f"{key}.json",   # type: ignore[index]
                                  {"width": image.width, "height": image.height,
                                   "objects": [{"category": o.category, "box": list(o.box), "score": o.score,
                                                "mask": encode_mask(o.mask)} for o in objects]})
            advance(len(batch))
    labelled = tuple(dict.fromkeys(p.category for p in prompts))
    annotated = [ImageAnnotations(samples[i].file_name, found[i][0], found[i][1], tuple(found[i][2]), labelled)
                 for i in sorted(found)]
    summary = {"photos": len(samples), "segmented": len(found) - reused, "from_cache": reused,
               "failed": failures, "instances": sum(len(f[2]) for f in found.values()),
               "prompts": [p.__dict__ for p in prompts], "model": segmenter.identity.split("|")[0],
               "threshold": segmenter.threshold, "mask_threshold": segmenter.mask_threshold}

    def fill(staging: Path) -> None:
        atomic_write_json(staging / ANNOTATIONS, coco_document(annotated, f"SAM 3 pseudo-masks ({summary['model']})"))
        atomic_write_json(staging / "summary.json", summary)

    write_folder(out, fill)
    return summary
