"""Fine-tune the backbone on decoded photos: ``backbone_training.mode`` last_blocks, lora, dora or full.

The backbone (made partly trainable by ``roadwork.backbones.adapt``) and a new linear classifier learn
from the global view of each training photo, cropped at random (``crop_scale``) and augmented per
view (the ``augment`` preset) on the training device, with one learning rate for the backbone and a
larger one for the classifier. With ``loss.dice_weight`` > 0 a segmentation branch (a 1x1
convolution over the backbone's spatial map) learns the work-zone mask of the photos that have one,
cropped and warped with its photo, by dice + binary cross-entropy: dense supervision of where the
roadwork is. The classifier is then dropped: the adapted backbone replaces the frozen one for every
view of the plan, its features are cached under the digest of its weights, and the usual heads are
fitted on them (``roadwork.train.run``). The branch is kept as an expert whose evidence the heads
also read (``roadwork.experts.segmentation``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from roadwork.backbones.adapt import (
    adapt_backbone,
    changed_weights,
    create_adapted_backbone,
    load_changed_weights,
    weight_snapshot,
    weights_digest,
)
from roadwork.backbones.base import Backbone, BackboneSpec, create_backbone
from roadwork.config import BackboneTrainingConfig, OptimConfig, TrainConfig
from roadwork.data.augment import ViewAugmenter
from roadwork.data.records import DatasetError, Sample
from roadwork.distributed import barrier, is_main
from roadwork.experts.segmentation import (
    SegmentationEvidence,
    SegmentationSource,
    load_segmenter,
    segmenter_digest,
    segmenter_layer,
)
from roadwork.features.extract import ViewsDataset, default_workers, extract_and_load, one_thread_per_worker
from roadwork.features.source import BackboneSource
from roadwork.features.table import as_is, evidence_rows
from roadwork.losses import segmentation_loss
from roadwork.progress import progress_bar
from roadwork.storage import atomic_write_bytes
from roadwork.train.module import warmup_cosine
from roadwork.train.prepare import DECODE_MARGIN, Photos, PreparedData
from roadwork.train.sampling import EpochSampler
from roadwork.train.trainer import build_trainer, claim_folder

log = logging.getLogger(__name__)
ADAPTED = "backbone.safetensors"
SEGMENTER = "segmenter.safetensors"


@dataclasses.dataclass
class Finetuned:
    """What fine-tuning changed: the backbone's weights, the segmentation branch (with ``loss.dice_weight``
    > 0) and what happened."""

    changed: dict[str, Tensor]
    segmenter: dict[str, Tensor] | None
    info: dict[str, Any]


def decode_global_views(samples: Sequence[Sample], keys: Sequence[str], input_size: int, folder: Path, *,
                        num_workers: int | None, progress: bool) -> np.ndarray:
    """uint8 ``[N, 3, S, S]`` global views (S = DECODE_MARGIN x input), decoded once into a memory-mapped
    file that every fold, epoch and training process reads; reused while the same photos ask for the
    same size."""
    side = round(input_size * DECODE_MARGIN)
    identity = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
    path = folder / f"global-{side}-{identity}.npy"
    if is_main() and not path.is_file():
        _decode_into(path, samples, side, num_workers=num_workers, progress=progress)
    barrier()
    return np.load(path, mmap_mode="r")


def _decode_into(path: Path, samples: Sequence[Sample], side: int, *, num_workers: int | None,
                 progress: bool) -> None:
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".partial.npy")
    array = np.lib.format.open_memmap(staging, mode="w+", dtype=np.uint8, shape=(len(samples), 3, side, side))
    workers = default_workers() if num_workers is None else num_workers
    loader = DataLoader(ViewsDataset(samples, "global", side), batch_size=16, num_workers=workers, collate_fn=as_is,
                        worker_init_fn=one_thread_per_worker, prefetch_factor=2 if workers else None)
    with progress_bar(len(samples), "decode for fine-tuning", enabled=progress) as advance:
        for batch in loader:
            for index, views, error in batch:
                if views is None:  # these photos decoded for the frozen features a moment ago
                    raise DatasetError(f"{samples[index].file_name}: {error}")
                array[index] = views[0].numpy()
            advance(len(batch))
    array.flush()
    del array
    os.replace(staging, path)
    for old in folder.glob("global-*.npy"):   # other photo sets or sizes: a finished run's leftovers
        if old != path:
            old.unlink(missing_ok=True)


class _LabelledViews(Dataset):
    """(global view, label, work-zone mask, whether the photo has a mask) of each training row."""

    def __init__(self, views: np.ndarray, rows: np.ndarray, labels: np.ndarray,
                 masks: dict[int, np.ndarray] | None = None) -> None:
        self.views, self.rows, self.labels, self.masks = views, rows, labels, masks or {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        row = self.rows[index]
        view = torch.from_numpy(np.array(self.views[row]))
        mask = self.masks.get(row)
        return (view, torch.tensor(float(self.labels[row])),
                torch.zeros(view.shape[-2:], dtype=torch.uint8) if mask is None else torch.from_numpy(mask),
                torch.tensor(mask is not None))


class FinetuneModule(L.LightningModule):
    """Backbone + linear classifier on augmented global views, label-smoothed binary cross-entropy; with
    ``dice_weight`` > 0, plus a segmentation branch on the photos that have a mask."""

    def __init__(self, backbone: Backbone, settings: BackboneTrainingConfig, optim: OptimConfig,
                 dice_weight: float = 0.0) -> None:
        super().__init__()
        self.backbone, self.settings, self.optim = backbone, settings, optim
        self.classifier = nn.Linear(backbone.feature_dim, 1)
        self.dice_weight = dice_weight
        self.segmenter = segmenter_layer(backbone.token_dim) if dice_weight > 0 else None
        size = backbone.input_size
        self.crop = K.RandomResizedCrop((size, size), scale=settings.crop_scale)
        self.augment = ViewAugmenter(settings.augment) if settings.augment != "none" else None

    def on_train_start(self) -> None:
        self.first_epoch = self.current_epoch   # > 0 when continuing an interrupted run

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        views, labels, masks, has_mask = batch
        # Augmentation runs batched on the training device (the GPU when there is one), here rather than
        # in a transfer hook so that it draws after the per-batch reseed (BatchSeed).
        with torch.no_grad():
            x = views.float() / 255.0
            if self.segmenter is None:
                x = self.crop(x)
                x = self.augment(x) if self.augment is not None else x
            else:   # one crop and one warp for the photo and its mask
                both = self.crop(torch.cat([x, masks[:, None].float() / 255.0], dim=1))
                x, target = both[:, :3], both[:, 3:]
                if self.augment is not None:
                    x, target = self.augment(x, target)
        size = labels.shape[0]
        smoothing = self.settings.label_smoothing
        if self.segmenter is None:
            logits = self.classifier(self.backbone(x)).squeeze(-1).float()
        else:
            pooled, spatial = self.backbone.forward_with_map(x)
            logits = self.classifier(pooled).squeeze(-1).float()
        loss = F.binary_cross_entropy_with_logits(logits, labels * (1.0 - smoothing) + 0.5 * smoothing)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=size)
        if self.segmenter is not None:
            seg = F.interpolate(self.segmenter(spatial), size=target.shape[-2:], mode="bilinear", align_corners=False)
            if has_mask.any():
                segmentation = segmentation_loss(seg[has_mask], target[has_mask])
                self.log("train_segmentation", segmentation, on_step=False, on_epoch=True, batch_size=size)
            else:   # a batch without masks still touches the branch, as DDP wants every parameter used
                segmentation = 0.0 * seg.sum()
            loss = loss + self.dice_weight * segmentation
        return loss

    def configure_optimizers(self) -> dict:
        heads = [*self.classifier.parameters(), *(self.segmenter.parameters() if self.segmenter else [])]
        groups = [{"params": [p for p in self.backbone.parameters() if p.requires_grad],
                   "lr": self.settings.backbone_lr},
                  {"params": heads, "lr": self.settings.head_lr}]
        optimizer = torch.optim.AdamW(groups, weight_decay=self.settings.weight_decay)
        return warmup_cosine(optimizer, int(self.trainer.estimated_stepping_batches), self.optim.warmup_fraction)


def _base_backbone(source: BackboneSource, device: str) -> Backbone:
    """The base backbone as published (what stored changed weights are relative to)."""
    spec = source.spec
    return create_backbone(spec.name, weights=spec.weights, device=device, input_size=spec.input_size)


def finetune_backbone(views: np.ndarray, rows: np.ndarray, labels: np.ndarray, config: TrainConfig,
                      settings: BackboneTrainingConfig, folder: Path, *, device: str, resume: bool,
                      progress: bool, source: BackboneSource, weights: np.ndarray | None = None,
                      masks: dict[int, np.ndarray] | None = None) -> Finetuned:
    """Fine-tune on ``rows`` of ``views`` (drawn by ``weights`` when given; ``masks`` by row, for the
    segmentation branch of ``loss.dice_weight``) for ``settings.epochs``: the changed weights (adapters
    merged; averaged with ``optim.ema``), the branch's and what happened. A saved result in ``folder``
    is reused with ``resume``; an interrupted one continues from its last epoch. ``source`` is where it
    starts: the base backbone, or one ``roadwork adapt`` adapted (the changed weights returned are then
    relative to the base, so they hold both adaptations)."""
    saved, branch = folder / ADAPTED, folder / SEGMENTER
    with_branch = config.loss.dice_weight > 0
    if resume and saved.is_file() and (branch.is_file() or not with_branch):
        return Finetuned(load_file(str(saved)), load_file(str(branch)) if with_branch else None, {"resumed": True})
    L.seed_everything(config.seed, workers=True, verbose=False)
    backbone = _base_backbone(source, "cpu")
    before = weight_snapshot(backbone)
    if source.weights_file is not None:
        load_changed_weights(backbone, load_file(str(source.weights_file)))
    trainable = adapt_backbone(backbone, settings.mode, blocks=settings.blocks, rank=settings.rank,
                               alpha=settings.alpha, dropout=settings.dropout, targets=settings.targets,
                               batchnorm=settings.batchnorm)
    trainable_parameters = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    if settings.gradient_checkpointing:
        backbone.gradient_checkpointing(True)
    # Lightning keeps the mode it is given
    module = FinetuneModule(backbone, settings, config.optim, config.loss.dice_weight).train()
    trainer, _ = build_trainer(config, folder, max_epochs=settings.epochs, device=device, progress=progress,
                               batch_size_fn=lambda batch: batch[1].shape[0], validate=False)
    sampler = EpochSampler(len(rows), weights=weights, seed=config.seed, epoch=lambda: trainer.current_epoch,
                           samples_per_epoch=config.sampling.samples_per_epoch if weights is not None else None)
    loader = DataLoader(_LabelledViews(views, rows, labels, masks), batch_size=settings.batch_size, sampler=sampler,
                        drop_last=len(sampler) > settings.batch_size)  # a last batch of one upsets BatchNorm
    last = folder / "checkpoints" / "last.ckpt"
    started = time.perf_counter()
    if config.optim.compile:
        backbone.compile()   # in place: weight names stay those the bundle stores
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(last) if resume and last.is_file() else None,
                weights_only=True)
    seconds = time.perf_counter() - started
    backbone = module.backbone.cpu()
    if settings.gradient_checkpointing:
        backbone.gradient_checkpointing(False)
    changed = changed_weights(backbone, before)
    segmenter = None
    if module.segmenter is not None:
        segmenter = {k: v.detach().cpu().contiguous() for k, v in module.segmenter.state_dict().items()}
    if is_main():   # the branch first: a backbone file without its branch is not a finished result
        if segmenter is not None:
            atomic_write_bytes(branch, save(segmenter))
        atomic_write_bytes(saved, save(changed))
    info = {"mode": settings.mode, "trainable_tensors": len(trainable),
            "trainable_parameters": trainable_parameters,
            "changed_tensors": len(changed), "epochs": int(trainer.current_epoch),
            "photos_with_masks": len(masks or {}),
            "continued_from_epoch": module.first_epoch, "fit_s": round(seconds, 2),
            "images_per_s": round(len(rows) * settings.epochs / seconds, 2) if seconds else None}
    return Finetuned(changed, segmenter, info)


# What ``auto`` fine-tunes, per backbone, from grouped 5-fold measurements on real photos
# (bench/RESULTS.md, "Fine-tuning"). Backbones not measured here stay frozen: a DINOv3 7B fine-tuned
# on a CPU would take days, and nothing shows yet that it pays.
AUTO_MODES = {"efficientnet-lite0": "last_blocks"}
# Above this many photos on a CPU, fine-tuning every fold takes hours (about 100 s per fold per 340
# photos on 2 cores); frozen features are then the default and fine-tuning is asked for by name.
AUTO_MAX_PHOTOS_ON_CPU = 5_000


def resolve_mode(settings: BackboneTrainingConfig, spec: BackboneSpec, photos: int,
                 device: str) -> tuple[BackboneTrainingConfig, str]:
    """The mode to train with, and why: ``auto`` follows the measurements behind AUTO_MODES."""
    if settings.mode != "auto":
        return settings, "as configured"
    mode = AUTO_MODES.get(spec.name) if spec.weights is None else None
    if mode is None:
        why = "auto: this backbone stays frozen unless backbone_training.mode asks (only the embedded one is measured)"
        return settings.model_copy(update={"mode": "frozen"}), why
    if photos > AUTO_MAX_PHOTOS_ON_CPU and not str(device).startswith("cuda"):
        why = (f"auto: {photos} photos is too many to fine-tune every fold on a CPU; frozen features "
               f"(ask for backbone_training.mode={mode} to fine-tune anyway)")
        return settings.model_copy(update={"mode": "frozen"}), why
    return settings.model_copy(update={"mode": mode}), f"auto: {mode} measured best for {spec.name} on small data"


def adapted_splits(prep: PreparedData, rows_per_split: list[np.ndarray], config: TrainConfig,
                   settings: BackboneTrainingConfig, out: Path, *, cache_dir: str | Path | None, device: str,
                   resume: bool, progress: bool, weights: np.ndarray | None = None, folder: str = "splits",
                   ) -> list[tuple[PreparedData, Finetuned]]:
    """Per split: fine-tune a backbone on its training rows (drawn by ``weights``, one per training photo,
    when given), then every photo's features from it (cached under its weights' digest, never mixed
    with the frozen features) and, when it learnt a segmentation branch and ``model.evidence`` asks,
    the branch's evidence, as that split's prepared data. Each fine-tuning lives in
    ``out/<folder>/backbone-<i>`` (``refit``: the refit on every photo)."""
    train = prep.train
    views = decode_global_views(train.samples, train.keys, prep.spec.input_size, out / "decoded",
                                num_workers=config.data.num_workers, progress=progress)
    labels = np.asarray(train.labels)
    masks = {row: prep.masks[key] for row, key in enumerate(train.keys) if key in prep.masks}
    everything = train.samples + (prep.val.samples if prep.val is not None else [])
    keys = train.keys + (prep.val.keys if prep.val is not None else [])
    results = []
    for index, rows in enumerate(rows_per_split):
        split_folder = out / folder / f"backbone-{index}"
        split_weights = None if weights is None else weights[rows]
        identity = {"backbone_training": settings.model_dump(mode="json", exclude={"epochs"}), "seed": config.seed,
                    # only the data settings fine-tuning reads: the loader's workers, the heads' metadata
                    # dropout or feature bank do not change it
                    "data": config.data.model_dump(mode="json", include={
                        "backbone", "backbone_weights", "adapted", "views", "input_size"}),
                    "starts_from": prep.adapted_digest,
                    # only what fine-tuning uses: the heads' epochs or rate do not change it
                    "optim": config.optim.model_dump(mode="json", include={
                        "precision", "gradient_clip", "accumulate_grad_batches", "warmup_fraction", "ema",
                        "ema_decay"}),
                    "sampling": None if split_weights is None else [config.sampling.samples_per_epoch,
                                                                    hashlib.sha256(split_weights.tobytes()).hexdigest()],
                    "rows": hashlib.sha256("\n".join(sorted(train.keys[i] for i in rows)).encode()).hexdigest(),
                    "segmentation": None if not masks else [
                        config.loss.dice_weight,
                        hashlib.sha256(b"".join(masks[i].tobytes() for i in sorted(rows) if i in masks)).hexdigest()]}
        claim_folder(split_folder, identity, settings.epochs, resume=resume, setting="backbone_training.epochs",
                     result=ADAPTED)
        tuned = finetune_backbone(views, rows, labels, config, settings, split_folder, device=device, resume=resume,
                                  progress=progress, source=prep.source, weights=split_weights,  # type: ignore[arg-type]
                                  masks={i: masks[i] for i in rows if i in masks})
        changed, info = tuned.changed, tuned.info
        digest = weights_digest(changed)
        spec = prep.spec
        backbone = create_adapted_backbone(spec.name, changed, weights=spec.weights, input_size=spec.input_size,
                                           device=device)
        store = BackboneSource(spec, changed=digest).store(cache_dir, device)
        result, features = extract_and_load(
            everything,
            backbone,
            spec.views,
            store,
            num_workers=config.data.num_workers,
            progress=progress,
            hashed=(list(keys), {}),
        )
        if result.failures:
            raise DatasetError(f"the adapted backbone of split {index} failed on: "
                               + "; ".join(list(result.failures.values())[:3]))
        n = len(train.samples)
        evidence, fields = prep.train.evidence, prep.evidence_fields   # the detector's, when there is one
        if prep.val is not None and evidence is not None:
            evidence = torch.cat([evidence, prep.val.evidence])   # type: ignore[list-item]
        if tuned.segmenter is not None and config.model.evidence:
            source = SegmentationSource(BackboneSource(spec, changed=digest), segmenter_digest(tuned.segmenter))
            expert = SegmentationEvidence(backbone, load_segmenter(tuned.segmenter))
            found, values = extract_and_load(everything, expert, source.plan, source.store(cache_dir, device),
                                             num_workers=config.data.num_workers, progress=progress,
                                             hashed=(list(keys), {}))
            branch = evidence_rows(values, len(everything), len(source.fields))
            evidence = branch if evidence is None else torch.cat([evidence, branch], dim=1)
            fields = (*fields, *source.fields)
            info |= {"evidence_s": round(found.seconds, 2)}
        adapted = dataclasses.replace(
            prep, adapted_digest=digest, evidence_fields=fields,
            train=Photos(train.samples, train.keys, features[:n],  # type: ignore[arg-type]
                         evidence=None if evidence is None else evidence[:n]),
            val=None if prep.val is None else Photos(prep.val.samples, prep.val.keys, features[n:],  # type: ignore[arg-type]
                                                     evidence=None if evidence is None else evidence[n:]))
        info |= {"digest": digest, "extract_s": round(result.seconds, 2)}
        results.append((adapted, tuned))
    return results
