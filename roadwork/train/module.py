"""The Lightning module: head + multi-part loss, AdamW with warmup-cosine, validation MCC."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from torchmetrics.classification import BinaryAUROC, BinaryMatthewsCorrCoef

from roadwork.config import OptimConfig
from roadwork.losses import RoadworkLoss
from roadwork.model.head import HeadOutput
from roadwork.train.data import Batch


def margins(out: HeadOutput) -> Tensor:
    """Logit margin z = logit(roadwork) - logit(none); sigmoid(z) is the softmax probability."""
    return out.logits[:, 1] - out.logits[:, 0]


class RoadworkModule(L.LightningModule):
    def __init__(self, head: torch.nn.Module, loss: RoadworkLoss, optim: OptimConfig) -> None:
        super().__init__()
        self.head, self.loss, self.optim = head, loss, optim
        self.val_mcc = BinaryMatthewsCorrCoef()
        self.val_auroc = BinaryAUROC()

    def forward(self, batch: Batch) -> HeadOutput:
        return self.head(batch.features, batch.view_mask, batch.meta)

    def _step(self, batch: Batch, stage: str) -> tuple[HeadOutput, Tensor]:
        out = self(batch)
        parts = self.loss(out, batch.labels, batch.weather)
        size = batch.labels.shape[0]
        for name, value in parts.items():
            self.log(f"{stage}_{name}", value, batch_size=size, prog_bar=name == "loss", on_step=False, on_epoch=True)
        return out, parts["loss"]

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")[1]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        out, _ = self._step(batch, "val")
        probs = torch.sigmoid(margins(out).float())
        self.val_mcc.update(probs, batch.labels)
        self.val_auroc.update(probs, batch.labels)

    def on_validation_epoch_end(self) -> None:
        self.log("val_mcc", self.val_mcc.compute().float(), prog_bar=True)
        self.log("val_auroc", self.val_auroc.compute().float(), prog_bar=True)
        self.val_mcc.reset()
        self.val_auroc.reset()

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.optim.lr, weight_decay=self.optim.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(total - 1, round(total * self.optim.warmup_fraction)) if total > 1 else 0
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
        if warmup:
            ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-3, total_iters=warmup)
            schedule = torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])
        else:
            schedule = cosine
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
