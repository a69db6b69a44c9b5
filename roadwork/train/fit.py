"""Fit one multi-view head with Lightning on cached-feature tables; the run decides what the tables are."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger

from roadwork.config import HeadConfig, TrainConfig
from roadwork.data.records import CATEGORY_FIELDS, Sample
from roadwork.features.table import FeatureTable
from roadwork.losses import RoadworkLoss
from roadwork.model.head import MultiViewHead, build_head
from roadwork.model.metadata import NULL_INDEX, MetadataVocab
from roadwork.train.data import FeatureDataModule
from roadwork.train.module import RoadworkModule

log = logging.getLogger(__name__)
MONITOR = "val_served_mcc"


class ProgressBar(RichProgressBar):
    """Rich bar without Lightning's logger version number, which means nothing to a user."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


def precision_setting(setting: str, accelerator: str) -> str:
    if setting != "auto":
        return "32-true" if setting == "32" else setting
    return "bf16-mixed" if accelerator == "cuda" else "32-true"


def forget_unseen_categories(head: MultiViewHead, vocab: MetadataVocab, seen: list[Sample]) -> None:
    """Give category values absent from ``seen`` (this head's training rows) the NULL embedding.

    One vocabulary serves every fold head of a bundle, so a value seen only in another fold would
    otherwise reach this head through an embedding row it never trained.
    """
    if head.metadata is None:
        return
    with torch.no_grad():
        for name in CATEGORY_FIELDS:
            present = {vocab.index(name, getattr(s, name)) for s in seen}
            table = head.metadata.categories[name].weight
            for index in range(table.shape[0]):
                if index not in present and index != NULL_INDEX:
                    table[index] = table[NULL_INDEX]


def fit_multiview(config: TrainConfig, head_config: HeadConfig, feature_dim: int, vocab: MetadataVocab,
                  train_table: FeatureTable, val_table: FeatureTable, out: Path, *, device: str, resume: bool,
                  progress: bool) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train on ``train_table``, keep the checkpoint with the best served MCC on ``val_table``."""
    if not log.isEnabledFor(logging.INFO):
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # hardware tips, not progress
    L.seed_everything(config.seed, workers=True, verbose=False)
    head = build_head(head_config, feature_dim, vocab)
    module = RoadworkModule(head, RoadworkLoss(config.loss), config.optim, config.data.metadata_dropout,
                            config.validation.served_metadata)
    accelerator = "cuda" if str(device).startswith("cuda") else "cpu"
    checkpoints = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor=MONITOR, mode="max",
                                  save_last=True, save_top_k=1, enable_version_counter=False)
    callbacks: list[L.Callback] = [checkpoints, EarlyStopping(monitor=MONITOR, mode="max",
                                                              patience=config.optim.patience)]
    if progress:
        callbacks.append(ProgressBar(leave=False))
    trainer = L.Trainer(
        max_epochs=config.optim.epochs, accelerator=accelerator, devices=1,
        precision=precision_setting(config.optim.precision, accelerator),
        gradient_clip_val=config.optim.gradient_clip, accumulate_grad_batches=config.optim.accumulate_grad_batches,
        callbacks=callbacks, logger=CSVLogger(out, name="logs"), enable_progress_bar=progress,
        enable_model_summary=False, log_every_n_steps=1, deterministic=False, default_root_dir=out,
        num_sanity_val_steps=0, reload_dataloaders_every_n_epochs=1 if train_table.alternatives is not None else 0,
    )
    last = out / "checkpoints" / "last.ckpt"
    started = time.perf_counter()
    trainer.fit(module, datamodule=FeatureDataModule(train_table, val_table, config.optim.batch_size, config.seed),
                ckpt_path=str(last) if resume and last.is_file() else None, weights_only=True)
    best_path = checkpoints.best_model_path or str(last)
    module.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"])
    info = {"epochs_run": int(trainer.current_epoch),
            "best_val_served_mcc": float(checkpoints.best_model_score) if checkpoints.best_model_score is not None
            else None,
            "fit_s": round(time.perf_counter() - started, 2)}
    return module.head.cpu().eval(), info
