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
        return loader(self.train, self.batch_size, shuffle=True, seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        return loader(self.val, self.batch_size)

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        return batch.to(device)
