"""The Lightning module: head + multi-part loss, AdamW or SophiaH with warmup-cosine, MCC every epoch.

Checkpoints are chosen (and training stopped) by ``val_served_mcc``: the margins of the inputs that
will be served (the image alone by default), cut where ``roadwork.serve.calibration`` would cut them.
MCC at margin 0 with metadata present, the old criterion, is not what a validator measures.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torchmetrics.classification import BinaryAUROC, BinaryMatthewsCorrCoef

from roadwork.config import OptimConfig
from roadwork.features.metadata import ServedInputs
from roadwork.features.table import Batch
from roadwork.losses import RoadworkLoss
from roadwork.model.head import HeadOutput
from roadwork.serve.calibration import selection_score


class RoadworkModule(L.LightningModule):
    def __init__(self, head: torch.nn.Module, loss: RoadworkLoss, optim: OptimConfig,
                 metadata_dropout: float = 0.0, served: ServedInputs | None = None,
                 step_metrics: bool = False) -> None:
        super().__init__()
        self.head, self.loss, self.optim = head, loss, optim
        self.metadata_dropout = metadata_dropout
        self.served = served or ServedInputs(metadata=False)   # validators send the image alone
        self.step_metrics = step_metrics
        self.val_auroc = BinaryAUROC()
        self.train_mcc = BinaryMatthewsCorrCoef()   # at margin 0, on the rows as trained (metadata and all)
        self.val_mcc = BinaryMatthewsCorrCoef()
        self._served_margins: list[Tensor] = []
        self._served_labels: list[Tensor] = []

    def forward(self, batch: Batch) -> HeadOutput:
        return self.head(batch.features, batch.view_mask, batch.meta, batch.evidence)

    def _step(self, batch: Batch, stage: str) -> tuple[HeadOutput, Tensor]:
        out = self(batch)
        parts = self.loss(out, batch.labels, batch.weather)
        size = batch.labels.shape[0]
        per_step = self.step_metrics and stage == "train"
        for name, value in parts.items():
            self.log(f"{stage}_{name}", value, batch_size=size, prog_bar=name == "loss", on_step=per_step,
                     on_epoch=True)
        mcc = self.train_mcc if stage == "train" else self.val_mcc
        mcc(out.margin.detach().float() > 0, batch.labels)
        self.log(f"{stage}_mcc", mcc, batch_size=size, on_step=per_step, on_epoch=True)
        return out, parts["loss"]

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        if self.metadata_dropout > 0:
            rows = torch.rand(batch.labels.shape[0], device=batch.labels.device) < self.metadata_dropout
            # Only the head's input loses the metadata: the weather target stays, the image still shows it.
            batch = dataclasses.replace(batch, meta=batch.meta.hidden(rows))
        return self._step(batch, "train")[1]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        out, _ = self._step(batch, "val")
        if not self.served.metadata:
            out = self(dataclasses.replace(batch, meta=batch.meta.as_served(self.served)))
        margin = out.margin.float()
        self.val_auroc.update(torch.sigmoid(margin), batch.labels)
        self._served_margins.append(margin.detach().cpu())
        self._served_labels.append(batch.labels.detach().cpu())

    def on_validation_epoch_end(self) -> None:
        margins = torch.cat(self._served_margins).numpy()
        labels = torch.cat(self._served_labels).numpy()
        self._served_margins.clear()
        self._served_labels.clear()
        served_mcc = selection_score(margins, labels)
        self.log("val_served_mcc", served_mcc, prog_bar=True)
        self.log("val_selection", checkpoint_score(served_mcc, margins, labels, self.optim.selection))
        self.log("val_auroc", self.val_auroc.compute().float(), prog_bar=True)
        self.val_auroc.reset()

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        if self.optim.optimizer == "sophia":
            # SophiaH's Hutchinson estimate differentiates the gradients, so they keep their graph; the
            # optimiser frees it by zeroing them to None every step.
            kwargs["create_graph"] = True
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*create_graph=True.*reference cycle")
                super().backward(loss, *args, **kwargs)
        else:
            super().backward(loss, *args, **kwargs)

    def configure_optimizers(self) -> dict:
        # Weight decay only on weight matrices: decaying biases, norms, embedding tables and the
        # learned NULL vectors would pull "unknown" toward a fixed zero, which the NULL design avoids.
        decay, no_decay = [], []
        for module in self.head.modules():
            for param in module.parameters(recurse=False):
                matrix = param.ndim >= 2 and not isinstance(module, torch.nn.Embedding)
                (decay if matrix else no_decay).append(param)
        groups = [{"params": decay, "weight_decay": self.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return warmup_cosine(make_optimizer(groups, self.optim), int(self.trainer.estimated_stepping_batches),
                             self.optim.warmup_fraction)


# At most this much of the selection score comes from the log-loss: less than one photo's worth of
# MCC on any split small enough to saturate, so it decides only between checkpoints the MCC ties.
LOG_LOSS_SHARE = 0.01


def checkpoint_score(served_mcc: float, margins: np.ndarray, labels: np.ndarray, selection: str) -> float:
    """The score the checkpoint choice and early stopping maximise (``optim.selection``)."""
    if selection == "served_mcc":
        return served_mcc
    log_loss = float(np.mean(np.logaddexp(0.0, -np.where(labels == 1, margins, -margins))))
    return served_mcc - LOG_LOSS_SHARE * min(log_loss, 1.0)


def make_optimizer(groups: list[dict[str, Any]], optim: OptimConfig) -> torch.optim.Optimizer:
    if optim.optimizer == "sophia":
        from pytorch_optimizer import SophiaH

        sophia = optim.sophia
        return SophiaH(groups, lr=sophia.step_size(optim.lr), betas=sophia.betas, p=sophia.clip,
                       update_period=sophia.hessian_period)
    return torch.optim.AdamW(groups, lr=optim.lr)


def warmup_cosine(optimizer: torch.optim.Optimizer, steps: int, warmup_fraction: float) -> dict:
    """Lightning's optimiser dict: a linear warmup over ``warmup_fraction`` of ``steps``, then cosine decay
    to zero, stepped every batch (every parameter group keeps its own peak rate)."""
    total = max(1, steps)
    warmup = min(total - 1, round(total * warmup_fraction)) if total > 1 else 0
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
    if warmup:
        ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-3, total_iters=warmup)
        schedule = torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])
    else:
        schedule = cosine
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
