"""``roadwork train``: features (cached) -> Lightning fit -> calibration -> bundle + metrics.json."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger

from roadwork.backbones.base import create_backbone
from roadwork.config import TrainConfig
from roadwork.data.records import DatasetError, Sample
from roadwork.data.sources import load_samples
from roadwork.data.splits import train_val_split
from roadwork.evaluate.calibration import fit_calibration
from roadwork.evaluate.metrics import binary_metrics
from roadwork.evaluate.report import write_predictions
from roadwork.features.extract import extract_features, open_store
from roadwork.features.table import FeatureTable, head_margins
from roadwork.losses import RoadworkLoss
from roadwork.model.head import build_head
from roadwork.model.metadata import MetadataVocab
from roadwork.model.text import TextEncoder
from roadwork.serve.bundle import BackboneSpec, save_bundle
from roadwork.storage import atomic_write_json
from roadwork.train.data import FeatureDataModule
from roadwork.train.module import RoadworkModule

log = logging.getLogger(__name__)


class _ProgressBar(RichProgressBar):
    """Rich bar without Lightning's logger version number, which means nothing to a user."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


def _precision(setting: str, accelerator: str) -> str:
    if setting != "auto":
        return "32-true" if setting == "32" else setting
    return "bf16-mixed" if accelerator == "cuda" else "32-true"


def _summary(samples: Sequence[Sample]) -> dict[str, Any]:
    labels = [s.label for s in samples]
    return {"n": len(samples), "positives": int(sum(labels)),
            "with_gps": sum(s.has_gps for s in samples),
            "with_weather": sum(s.weather is not None for s in samples),
            "with_description": sum(s.description is not None for s in samples)}


def _require_both_classes(samples: Sequence[Sample], name: str) -> None:
    labels = {s.label for s in samples}
    if labels != {0, 1}:
        raise DatasetError(f"{name} data needs both classes (0 and 1); it has {sorted(labels)}")




def train(data: str, out: str | Path, config: TrainConfig, *, val_data: str | None = None,
          cache_dir: str | Path | None = None, device: str = "cpu", resume: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Train a head on DATA and write OUT/bundle and OUT/metrics.json; returns the metrics."""
    out = Path(out)
    started = time.perf_counter()
    if not log.isEnabledFor(logging.INFO):
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # hardware tips, not progress
    L.seed_everything(config.seed, workers=True, verbose=False)
    samples = load_samples(data)
    if val_data is not None:
        train_samples, val_samples = samples, load_samples(val_data)
    else:
        train_idx, val_idx = train_val_split(samples, config.data.val_fraction, config.seed)
        train_samples, val_samples = [samples[i] for i in train_idx], [samples[i] for i in val_idx]
    _require_both_classes(train_samples, "training")  # before extraction, which can take hours
    _require_both_classes(val_samples, "validation")

    backbone = create_backbone(config.data.backbone, weights=config.data.backbone_weights, device=device,
                               input_size=config.data.input_size)
    weights = str(Path(config.data.backbone_weights).resolve()) if config.data.backbone_weights else None
    spec = BackboneSpec(backbone.name, weights, backbone.input_size, backbone.feature_dim, config.data.views)
    store = open_store(cache_dir, backbone.name, backbone.input_size, config.data.views, config.data.backbone_weights,
                       device)
    everything = train_samples + val_samples
    extraction = extract_features(everything, backbone, config.data.views, store,
                                  num_workers=config.data.num_workers, progress=progress)
    del backbone
    usable = [(s, k) for s, k in zip(everything, extraction.keys) if k is not None]
    train_ids = {id(s) for s in train_samples}
    train_usable = [(s, k) for s, k in usable if id(s) in train_ids]
    val_usable = [(s, k) for s, k in usable if id(s) not in train_ids]
    _require_both_classes([s for s, _ in train_usable], "training (after dropping undecodable images)")
    _require_both_classes([s for s, _ in val_usable], "validation (after dropping undecodable images)")
    features = store.load(k for _, k in usable)

    vocab = MetadataVocab.from_samples([s for s, _ in train_usable])
    text = None
    if config.model.metadata and config.model.text:
        text = TextEncoder().embed(s.description for s, _ in usable if s.description is not None)

    def table(part: list[tuple[Sample, str]]) -> FeatureTable:
        return FeatureTable.build([s for s, _ in part], [features[k] for _, k in part], vocab, text)

    train_table, val_table = table(train_usable), table(val_usable)
    head = build_head(config.model, spec.feature_dim, vocab)
    module = RoadworkModule(head, RoadworkLoss(config.loss), config.optim, config.data.metadata_dropout)
    accelerator = "cuda" if str(device).startswith("cuda") else "cpu"
    checkpoints = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="val_mcc", mode="max",
                                  save_last=True, save_top_k=1, enable_version_counter=False)
    callbacks: list[L.Callback] = [checkpoints,
                                   EarlyStopping(monitor="val_mcc", mode="max", patience=config.optim.patience)]
    if progress:
        callbacks.append(_ProgressBar(leave=False))
    trainer = L.Trainer(
        max_epochs=config.optim.epochs, accelerator=accelerator, devices=1,
        precision=_precision(config.optim.precision, accelerator),
        gradient_clip_val=config.optim.gradient_clip, accumulate_grad_batches=config.optim.accumulate_grad_batches,
        callbacks=callbacks, logger=CSVLogger(out, name="logs"), enable_progress_bar=progress,
        enable_model_summary=False, log_every_n_steps=1, deterministic=False, default_root_dir=out,
    )
    last = out / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        log.warning("--resume: no checkpoint at %s; starting from scratch", last)
    fit_started = time.perf_counter()
    trainer.fit(module, datamodule=FeatureDataModule(train_table, val_table, config.optim.batch_size, config.seed),
                ckpt_path=str(last) if resume and last.is_file() else None, weights_only=True)
    fit_seconds = time.perf_counter() - fit_started

    best_path = checkpoints.best_model_path or str(last)
    state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    head = module.head.cpu()
    val_margins = head_margins(head, val_table)
    val_labels = val_table.labels.numpy()
    calibration = fit_calibration(val_margins.numpy(), val_labels)
    val_probs = calibration(val_margins).numpy()
    image_only = FeatureTable(val_table.features, val_table.view_mask,
                              val_table.meta.hidden(torch.ones(len(val_table), dtype=torch.bool)),
                              val_table.labels, val_table.file_names)
    image_only_probs = calibration(head_margins(head, image_only)).numpy()
    write_predictions(out / "validation_predictions.csv", zip(val_table.file_names, val_labels.tolist(), val_probs.tolist()))
    metrics = {
        "validation": binary_metrics(val_probs, val_labels, 0.5),
        # What the validator sends is the image alone: every metadata field NULL.
        "validation_image_only": binary_metrics(image_only_probs, val_labels, 0.5),
        "validation_uncalibrated": binary_metrics(torch.sigmoid(val_margins).numpy(), val_labels, 0.5),
        "calibration": calibration.to_dict(),
        "epochs_run": int(trainer.current_epoch),
        "best_val_mcc_during_training": (float(checkpoints.best_model_score)
                                         if checkpoints.best_model_score is not None else None),
        "timing_s": {"extract": round(extraction.seconds, 2), "fit": round(fit_seconds, 2),
                     "total": round(time.perf_counter() - started, 2)},
        "extraction": {"extracted": extraction.extracted, "cached": extraction.cached,
                       "failed": extraction.failures},
        "parameters": sum(p.numel() for p in head.parameters()),
    }
    data_summary = {"source": str(data), "validation_source": str(val_data) if val_data else f"{config.data.val_fraction:.0%} stratified split",
                    "train": _summary([s for s, _ in train_usable]), "validation": _summary([s for s, _ in val_usable]),
                    "undecodable": len(extraction.failures)}
    save_bundle(out / "bundle", head=head, config=config, vocab=vocab, backbone=spec, calibration=calibration,
                metrics=metrics["validation"], data_summary=data_summary)
    atomic_write_json(out / "metrics.json", metrics)
    return metrics
