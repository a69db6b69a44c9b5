"""``roadwork adapt``: self-supervised adaptation of a backbone on unlabelled photos of the target domain.

SimCLR: two augmented views of every photo (a random resized crop, then the per-view augmentation
preset), a projection head, and the NT-Xent loss that makes each view pick its twin among the
batch's others; which weights learn follows the fine-tuning modes (last blocks, LoRA/DoRA merged,
full). ExPLoRA (the recipe for ViTs): the DINO objective continued (an EMA teacher's centred,
sharpened prototype distribution over two global crops, learnt by the student from every crop,
global and local), with LoRA on every block and the last blocks unfrozen. Labels, if the data has
any, are ignored. The photos are decoded once into a memory-mapped
file, as for fine-tuning; Lightning runs the loop with a checkpoint after every epoch that
``--resume`` continues from. The result, ``ADAPTED/backbone.safetensors`` (the weights that changed
from the base backbone) and ``ADAPTED/adapted.json`` (what it was adapted from and how), is a feature
source: ``train --set data.adapted=ADAPTED`` extracts its features into their own cache namespace and
fits (or fine-tunes further) on top.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import lightning as L
import numpy as np
import torch
from safetensors.torch import save
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from roadwork.backbones.adapt import adapt_backbone, changed_weights, weight_snapshot, weights_digest
from roadwork.backbones.base import Backbone, BackboneSpec, create_backbone
from roadwork.config import AdaptConfig, OptimConfig, TrainConfig
from roadwork.data.augment import ViewAugmenter
from roadwork.data.records import DatasetError
from roadwork.features.extract import content_keys
from roadwork.features.source import ADAPTED_MANIFEST, ADAPTED_WEIGHTS
from roadwork.losses import dino_loss, nt_xent
from roadwork.storage import atomic_write_bytes, atomic_write_json
from roadwork.train.finetune import decode_global_views
from roadwork.train.module import warmup_cosine
from roadwork.train.prepare import training_samples
from roadwork.train.trainer import build_trainer, check_run_folder, open_run_folder


class _Photos(Dataset):
    def __init__(self, views: np.ndarray) -> None:
        self.views = views

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, index: int) -> Tensor:
        return torch.from_numpy(np.array(self.views[index]))


class SimclrModule(L.LightningModule):
    """The backbone, a two-layer projection head, and NT-Xent over two augmented views of each photo."""

    def __init__(self, backbone: Backbone, settings: AdaptConfig) -> None:
        super().__init__()
        self.backbone, self.settings = backbone, settings
        width = backbone.feature_dim
        self.projection = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, settings.projection_dim))
        size = backbone.input_size
        self.crop = K.RandomResizedCrop((size, size), scale=settings.crop_scale)
        self.augment = ViewAugmenter(settings.augment)

    def training_step(self, views: Tensor, batch_idx: int) -> Tensor:
        with torch.no_grad():
            x = views.float() / 255.0
            pair = torch.cat([self.augment(self.crop(x)), self.augment(self.crop(x))])
        loss = nt_xent(self.projection(self.backbone(pair)), self.settings.temperature)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(views))
        return loss

    def configure_optimizers(self) -> dict:
        parameters = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=self.settings.lr, weight_decay=self.settings.weight_decay)
        return warmup_cosine(optimizer, int(self.trainer.estimated_stepping_batches), 0.1)


class ExploraModule(L.LightningModule):
    """ExPLoRA's continued pre-training: DINO self-distillation (a student on two global and several local
    crops learns the sharpened, centred prototype distribution an EMA teacher gives the global crops),
    with LoRA on every block and the last blocks unfrozen."""

    def __init__(self, backbone: Backbone, settings: AdaptConfig) -> None:
        super().__init__()
        self.backbone, self.settings = backbone, settings
        width = backbone.feature_dim
        self.head = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, settings.projection_dim))
        self.teacher_backbone, self.teacher_head = copy.deepcopy(backbone), copy.deepcopy(self.head)
        for part in (self.teacher_backbone, self.teacher_head):
            part.requires_grad_(False)
        self.register_buffer("center", torch.zeros(settings.projection_dim))
        size = backbone.input_size
        self.global_crop = K.RandomResizedCrop((size, size), scale=(0.4, 1.0))
        self.local_crop = K.RandomResizedCrop((size, size), scale=(0.05, 0.4))
        self.augment = ViewAugmenter(settings.augment)

    def training_step(self, views: Tensor, batch_idx: int) -> Tensor:
        crops = 2 + self.settings.local_crops
        with torch.no_grad():
            x = views.float() / 255.0
            first = [self.augment(self.global_crop(x)) for _ in range(2)]
            seen = torch.cat(first + [self.augment(self.local_crop(x)) for _ in range(self.settings.local_crops)])
            teacher = self.teacher_head(self.teacher_backbone(torch.cat(first)))
        student = self.head(self.backbone(seen))
        loss = dino_loss(student, teacher, self.center, crops, 0.1, 0.04)
        with torch.no_grad():   # the centre follows the teacher's mean output (no collapse onto one prototype)
            self.center.mul_(0.9).add_(0.1 * teacher.mean(dim=0))
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(views))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Tensor, batch_idx: int) -> None:
        momentum = self.settings.teacher_momentum
        with torch.no_grad():
            for student, teacher in ((self.backbone, self.teacher_backbone), (self.head, self.teacher_head)):
                for s, t in zip(student.parameters(), teacher.parameters()):
                    t.mul_(momentum).add_((1 - momentum) * s.detach())

    def configure_optimizers(self) -> dict:
        parameters = [p for p in [*self.backbone.parameters(), *self.head.parameters()] if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=self.settings.lr, weight_decay=self.settings.weight_decay)
        return warmup_cosine(optimizer, int(self.trainer.estimated_stepping_batches), 0.1)


def explora_backbone(model: Backbone, settings: AdaptConfig) -> None:
    """LoRA on every block's projections, and the last ``settings.blocks`` blocks trained whole."""
    adapt_backbone(model, "lora", rank=settings.rank)
    for module in [*model.blocks()[-settings.blocks:], *model.final_modules()]:
        module.requires_grad_(True)


def adapt(data: list[str], out: str | Path, settings: AdaptConfig, *, backbone: str, weights: str | None = None,
          input_size: int | None = None, views: str = "auto", device: str = "cpu", resume: bool = False,
          overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Adapt ``backbone`` to DATA's photos (labels ignored); write OUT/backbone.safetensors and
    OUT/adapted.json, and return the latter."""
    out = check_run_folder(out, resume=resume, overwrite=overwrite, inputs=data)
    samples = training_samples(data[0], data[1:])
    keys, unreadable = content_keys(samples, progress)
    readable = [i for i, k in enumerate(keys) if k is not None]
    if len(readable) < 2:
        raise DatasetError(f"{', '.join(data)}: {len(readable)} readable photo(s); SimCLR contrasts at least two")
    spec = BackboneSpec.resolve(backbone, weights=weights, input_size=input_size, views=views)
    open_run_folder(out, clear=overwrite and not resume)
    photos = decode_global_views([samples[i] for i in readable], [keys[i] for i in readable],  # type: ignore[misc]
                                 spec.input_size, out / "decoded", num_workers=0, progress=progress)
    L.seed_everything(settings.seed, workers=True, verbose=False)
    model = create_backbone(spec.name, weights=spec.weights, device="cpu", input_size=spec.input_size)
    before = weight_snapshot(model)
    if settings.method == "explora":
        explora_backbone(model, settings)
        module: L.LightningModule = ExploraModule(model, settings).train()
    else:
        adapt_backbone(model, settings.mode, blocks=settings.blocks, rank=settings.rank)
        module = SimclrModule(model, settings).train()
    trainer, _ = build_trainer(TrainConfig(seed=settings.seed, optim=OptimConfig(ema=False)), out,
                               max_epochs=settings.epochs, device=device, progress=progress,
                               batch_size_fn=lambda batch: len(batch), validate=False)
    loader = DataLoader(_Photos(photos), batch_size=min(settings.batch_size, len(readable)), shuffle=True,
                        drop_last=True, generator=torch.Generator().manual_seed(settings.seed))
    last = out / "checkpoints" / "last.ckpt"
    started = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(last) if resume and last.is_file() else None,
                weights_only=True)
    changed = changed_weights(module.backbone.cpu(), before)
    atomic_write_bytes(out / ADAPTED_WEIGHTS, save(changed))
    manifest = {"kind": "adapted_backbone", "method": settings.method, "backbone": spec.__dict__,
                "changed_weights_sha256": weights_digest(changed), "changed_tensors": len(changed),
                "photos": len(readable), "unreadable": len(unreadable), "epochs": int(trainer.current_epoch),
                "fit_s": round(time.perf_counter() - started, 2), "settings": settings.model_dump(mode="json"),
                "data": list(data)}
    atomic_write_json(out / ADAPTED_MANIFEST, manifest)
    return manifest

