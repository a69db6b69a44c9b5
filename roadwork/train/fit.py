"""Fit one multi-view head with Lightning on cached-feature tables; the run decides what the tables are."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from roadwork.config import HeadConfig, TrainConfig
from roadwork.data.records import CATEGORY_FIELDS, Sample
from roadwork.features.metadata import NULL_INDEX, MetadataVocab, ServedInputs
from roadwork.features.table import FeatureTable
from roadwork.losses import RoadworkLoss
from roadwork.model.head import MultiViewHead, build_head
from roadwork.train.data import FeatureDataModule
from roadwork.train.module import RoadworkModule
from roadwork.train.trainer import build_trainer

log = logging.getLogger(__name__)
MONITOR = "val_selection"


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
                  progress: bool, weights: np.ndarray | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train on ``train_table`` (rows drawn by ``weights`` when given), keep the checkpoint with the best
    served MCC on ``val_table`` (of the averaged weights with ``optim.ema``)."""
    L.seed_everything(config.seed, workers=True, verbose=False)
    head = build_head(head_config, feature_dim, vocab, train_table.evidence.shape[1])
    module = RoadworkModule(head, RoadworkLoss(config.loss), config.optim, config.data.metadata_dropout,
                            ServedInputs.named(config.validation.served_metadata),
                            step_metrics=config.trainer.step_metrics)
    trainer, checkpoints = build_trainer(config, out, max_epochs=config.optim.epochs, device=device,
                                         progress=progress, batch_size_fn=lambda batch: batch.labels.shape[0],
                                         monitor=MONITOR, patience=config.optim.patience,
                                         reload_every_epoch=train_table.alternatives is not None)
    last = out / "checkpoints" / "last.ckpt"
    data = FeatureDataModule(train_table, val_table, config.optim.batch_size, config.seed, weights=weights,
                             samples_per_epoch=config.sampling.samples_per_epoch if weights is not None else None)
    started = time.perf_counter()
    if config.optim.compile:
        head.compile()   # in place: the state dict keeps its names; the Lightning step stays eager
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume and last.is_file() else None,
                weights_only=True)
    best_path = checkpoints.best_model_path or str(last)
    if config.optim.compile:
        # uncompiled, for inference on any shape
        module.head = build_head(head_config, feature_dim, vocab, train_table.evidence.shape[1])
    module.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"])
    info = {"epochs_run": int(trainer.current_epoch),
            "best_val_selection": float(checkpoints.best_model_score) if checkpoints.best_model_score is not None
            else None,
            "fit_s": round(time.perf_counter() - started, 2)}
    return module.head.cpu().eval(), info
