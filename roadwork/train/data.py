"""The Lightning data module over cached-feature tables."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from roadwork.features.table import Batch, FeatureTable, loader
from roadwork.train.sampling import EpochSampler


class FeatureDataModule(L.LightningDataModule):
    """Training rows drawn by ``EpochSampler`` (by GPS weight when ``weights`` is given, sharded across
    DDP processes); every process validates on every validation row, so all of them choose the same
    checkpoint."""

    def __init__(self, train: FeatureTable, val: FeatureTable, batch_size: int, seed: int, *,
                 weights: np.ndarray | None = None, samples_per_epoch: int | None = None) -> None:
        super().__init__()
        self.train, self.val, self.batch_size, self.seed = train, val, batch_size, seed
        self.weights, self.samples_per_epoch = weights, samples_per_epoch

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer

        def epoch() -> int:
            return trainer.current_epoch if trainer is not None else 0

        # With a feature bank the trainer reloads this every epoch: a new draw of copies per photo.
        self.train.redraw(torch.Generator().manual_seed(self.seed * 100_003 + epoch()))
        sampler = EpochSampler(len(self.train), weights=self.weights, samples_per_epoch=self.samples_per_epoch,
                               seed=self.seed, epoch=epoch)
        return loader(self.train, self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return loader(self.val, self.batch_size)

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        return batch.to(device)
