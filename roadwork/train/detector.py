"""``roadwork detector train``: fine-tune a closed-set object detector on roadwork's annotations.

Any transformers ``AutoModelForObjectDetection`` (YOLOS, RT-DETRv2, D-FINE, ...) starts from its
weights with a new classifier over roadwork's annotation categories (work-zone objects and their
look-alikes, so it learns to tell them apart), and learns from every photo of a dataset whose
``annotations.json`` (``roadwork synth`` writes one; COCO JSON for real photos) boxes them. It sees the
photo as the detector expert will serve it: the global view squeezed to ``input_size`` square, the
boxes squeezed with it. Lightning runs the loop (the model's own matching loss), with a checkpoint
after every epoch that ``--resume`` continues from; the result, ``RUN/detector/``, is what
``experts.detector`` names.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from roadwork.config import DetectorTrainingConfig, OptimConfig, TrainConfig
from roadwork.data.annotations import CATEGORIES
from roadwork.data.boxes import BoxedPhotos, annotated_photos
from roadwork.errors import RoadworkError
from roadwork.storage import atomic_write_json, write_folder
from roadwork.train.trainer import build_trainer, check_run_folder, open_run_folder

DETECTOR = "detector"   # the folder under the run that experts.detector names


def _collate(batch: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    return torch.stack([v for v, _, _ in batch]), [b for _, b, _ in batch], [c for _, _, c in batch]


class DetectorModule(L.LightningModule):
    """The detector and its processor; each batch goes through the processor as the expert's does."""

    def __init__(self, model: Any, processor: Any, settings: DetectorTrainingConfig) -> None:
        super().__init__()
        self.model, self.processor, self.settings = model, processor, settings

    def training_step(self, batch: tuple[Tensor, list[Tensor], list[Tensor]], batch_idx: int) -> Tensor:
        views, boxes, labels = batch
        size = float(self.settings.input_size)
        targets = []
        for box, label in zip(boxes, labels):   # normalised centre, width, height, as the matching loss reads
            centre = torch.stack([(box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2,
                                  box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]], dim=1) / size
            targets.append({"class_labels": label.to(self.device), "boxes": centre.to(self.device)})
        pixels = self.processor(images=list(views.permute(0, 2, 3, 1).cpu().numpy()), return_tensors="pt")
        loss = self.model(pixel_values=pixels["pixel_values"].to(self.device), labels=targets).loss
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(boxes))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.settings.lr, weight_decay=self.settings.weight_decay)


def train_detector(data: str, model: str, out: str | Path, settings: DetectorTrainingConfig, *, device: str = "cpu",
                   resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``model`` on DATA's boxes; write RUN/detector/ and RUN/detector-metrics.json."""
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    out = check_run_folder(out, resume=resume, overwrite=overwrite, inputs=[data])
    samples, annotations = annotated_photos(data, every_category=True)
    try:
        processor = AutoImageProcessor.from_pretrained(model)
        detector = AutoModelForObjectDetection.from_pretrained(
            model, id2label=dict(enumerate(CATEGORIES)), label2id={c: i for i, c in enumerate(CATEGORIES)},
            ignore_mismatched_sizes=True)   # a new classifier over roadwork's categories
    except (OSError, ValueError) as error:
        raise RoadworkError(f"{model}: cannot load it as a closed-set detector with its image processor: {error}") \
            from None
    open_run_folder(out, clear=overwrite and not resume)
    config = TrainConfig(seed=settings.seed, optim=OptimConfig(ema=False))
    L.seed_everything(settings.seed, workers=True, verbose=False)
    module = DetectorModule(detector, processor, settings)
    trainer, _ = build_trainer(config, out, max_epochs=settings.epochs, device=device, progress=progress,
                               batch_size_fn=lambda batch: len(batch[1]), validate=False)
    loader = DataLoader(BoxedPhotos(samples, annotations, settings.input_size), batch_size=settings.batch_size,
                        shuffle=True, collate_fn=_collate, generator=torch.Generator().manual_seed(settings.seed))
    last = out / "checkpoints" / "last.ckpt"
    started = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(last) if resume and last.is_file() else None,
                weights_only=True)
    boxes = np.bincount([CATEGORIES.index(o.category) for s in samples for o in annotations[s.file_name].objects],
                        minlength=len(CATEGORIES))

    def fill(staging: Path) -> None:
        module.model.save_pretrained(staging)
        processor.save_pretrained(staging)

    write_folder(out / DETECTOR, fill)
    metrics = {"model": model, "photos": len(samples), "boxes": dict(zip(CATEGORIES, boxes.tolist())),
               "epochs": int(trainer.current_epoch), "fit_s": round(time.perf_counter() - started, 2),
               "settings": settings.model_dump(mode="json")}
    atomic_write_json(out / "detector-metrics.json", metrics)
    return metrics
