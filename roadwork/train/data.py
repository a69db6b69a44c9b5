"""The Lightning data module over cached-feature tables."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from roadwork.features.table import Batch, FeatureTable, loader


class FeatureDataModule(L.LightningDataModule):
    def __init__(self, train: FeatureTable, val: FeatureTable, batch_size: int, seed: int) -> None:
        super().__init__()
        self.train, self.val, self.batch_size, self.seed = train, val, batch_size, seed

    def train_dataloader(self) -> DataLoader:
        # With a feature bank the trainer reloads this every epoch: a new draw of copies per photo.
        # A reloaded loader also needs its own shuffle seed, or every epoch would repeat the first order.
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        seed = self.seed * 100_003 + epoch
        self.train.redraw(torch.Generator().manual_seed(seed))
        return loader(self.train, self.batch_size, shuffle=True, seed=seed)

    def val_dataloader(self) -> DataLoader:
        return loader(self.val, self.batch_size)

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        return batch.to(device)
