"""The Lightning Trainer every fit uses (heads and backbone fine-tuning): devices and DDP, precision,
EMA, per-epoch checkpoints for ``--resume``, seeding that a resume reproduces, loggers, progress.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    EarlyStopping,
    EMAWeightAveraging,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
    ThroughputMonitor,
)
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy

from roadwork.config import ConfigError, TrainConfig
from roadwork.distributed import barrier, is_main
from roadwork.storage import atomic_write_json, check_output

log = logging.getLogger(__name__)


class ProgressBar(RichProgressBar, ThroughputMonitor):
    """Rich bar without Lightning's logger version number, which means nothing to a user."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class BatchSeed(L.Callback):
    """Reseed torch before every training batch from (seed, epoch, batch, rank).

    Dropout, metadata dropout and augmentation then draw the same numbers for batch b of epoch e
    whether the run went straight through or was killed and resumed before it: Lightning's
    checkpoints do not hold the random generators' state, and a resumed run skips the epoch-start
    hooks of the epoch it restores.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        torch.manual_seed(hash((self.seed, trainer.current_epoch, batch_idx, trainer.global_rank)) & (2**63 - 1))


def precision_setting(setting: str, accelerator: str) -> str:
    if setting != "auto":
        return "32-true" if setting == "32" else setting
    return "bf16-mixed" if accelerator == "cuda" else "32-true"


def check_loggers(config: TrainConfig) -> None:
    """Fail at start-up, not after hours of extraction, when a logger asked for is not installed."""
    if "wandb" in config.trainer.loggers:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("trainer.loggers: wandb is asked for but not installed (pip install wandb)") from None


def _loggers(config: TrainConfig, folder: Path) -> list[Logger]:
    loggers: list[Logger] = []
    for name in config.trainer.loggers:
        if name == "csv":
            loggers.append(CSVLogger(folder, name="logs"))
        elif name == "tensorboard":
            loggers.append(TensorBoardLogger(folder, name="tensorboard", default_hp_metric=False))
        else:
            from lightning.pytorch.loggers import WandbLogger

            loggers.append(WandbLogger(save_dir=str(folder), project="roadwork", name=folder.name))
    return loggers


def build_trainer(config: TrainConfig, folder: Path, *, max_epochs: int, device: str, progress: bool,
                  batch_size_fn: Callable[[Any], int], monitor: str | None = None, patience: int | None = None,
                  validate: bool = True, reload_every_epoch: bool = False) -> tuple[L.Trainer, ModelCheckpoint]:
    """A Trainer writing to ``folder``: ``checkpoints/last.ckpt`` after every epoch (what ``--resume``
    continues from) and, with ``monitor``, ``checkpoints/best.ckpt`` (maximum) and early stopping.
    ``reload_every_epoch``: ask the data module for a new training loader each epoch (a feature bank
    redraws its copies)."""
    if not log.isEnabledFor(logging.INFO):
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # hardware tips, not progress
    accelerator = "cuda" if str(device).startswith("cuda") else "cpu"
    optim, run = config.optim, config.trainer
    # Top-1 without a metric keeps the newest epoch: one file, rewritten every epoch. (ModelCheckpoint's
    # save_last only writes when a better checkpoint is saved, so it cannot be what --resume reads.)
    # It runs after every other callback (Lightning orders checkpoints last, these two as listed), so the
    # file holds this epoch's best score, early-stopping count and average.
    latest = ModelCheckpoint(dirpath=folder / "checkpoints", filename="last", save_top_k=1,
                             enable_version_counter=False)
    callbacks: list[L.Callback] = [BatchSeed(config.seed)]
    best = latest
    if monitor is not None:
        best = ModelCheckpoint(dirpath=folder / "checkpoints", filename="best", monitor=monitor, mode="max",
                               save_top_k=1, enable_version_counter=False)
        callbacks += [best, EarlyStopping(monitor=monitor, mode="max", patience=patience or max_epochs)]
    callbacks.append(latest)
    if optim.ema:
        callbacks.append(EMAWeightAveraging(decay=optim.ema_decay))
    loggers = _loggers(config, folder)
    if loggers:
        callbacks += [LearningRateMonitor(logging_interval="step" if run.step_metrics else "epoch"),
                      ThroughputMonitor(batch_size_fn=batch_size_fn, window_size=5)]   # samples/s, batches/s
    if progress:
        callbacks.append(ProgressBar(leave=False))
    if run.strategy == "ddp":
        # gloo on CPUs (tests, laptops), NCCL on GPUs; the sampler shards the epoch itself (EpochSampler).
        strategy: str | DDPStrategy = DDPStrategy(process_group_backend="nccl" if accelerator == "cuda" else "gloo")
    else:
        strategy = "auto"
    trainer = L.Trainer(
        max_epochs=max_epochs, accelerator=accelerator, devices=run.devices,
        strategy=strategy, precision=precision_setting(optim.precision, accelerator),
        # SophiaH clips every weight's update itself; clipping its gradients would also corrupt the
        # graph its Hessian estimate differentiates.
        gradient_clip_val=None if optim.optimizer == "sophia" else optim.gradient_clip,
        accumulate_grad_batches=optim.accumulate_grad_batches, callbacks=callbacks, logger=loggers or False,
        enable_progress_bar=progress, enable_model_summary=False, log_every_n_steps=1, default_root_dir=folder,
        num_sanity_val_steps=0, use_distributed_sampler=False, deterministic=False,
        limit_val_batches=None if validate else 0, reload_dataloaders_every_n_epochs=int(reload_every_epoch),
    )
    return trainer, best


RUN_FLAGS = "--resume (continue the run in it) or --overwrite (replace it)"


def check_run_folder(out: str | Path, *, resume: bool, overwrite: bool, inputs: Sequence[str | Path] = ()) -> Path:
    """A run folder (``train``, ``distill``, ``ensemble``) may hold an earlier run only when the user
    says what to do with it; nothing is created yet (see ``open_run_folder``)."""
    if resume and overwrite:
        raise ConfigError("give --resume or --overwrite, not both")
    return check_output(out, "output folder", replace=resume or overwrite, how=RUN_FLAGS, inputs=inputs)


def open_run_folder(out: Path, *, clear: bool) -> None:
    """Create the run folder once the inputs have passed their checks; ``clear`` (--overwrite) first
    removes the earlier run's files, so none of them mixes with the new run's."""
    if clear and out.is_dir():
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)


def claim_folder(folder: Path, identity: dict[str, Any], epochs: int | None, *, resume: bool, setting: str,
                 result: str) -> None:
    """Make ``folder`` this fit's: with ``resume``, keep what the same fit (same ``identity``) left there;
    otherwise start it empty. An interrupted fit (no ``result`` file yet) that differs only in its epoch
    count (``setting``; None for fits without epochs) is refused, not restarted: its learning-rate
    schedule was built for the other length, so neither continuing it nor silently discarding it is
    what was asked. A finished fit with another count is simply another fit, made afresh."""
    stored = None
    with contextlib.suppress(OSError, ValueError):
        stored = json.loads((folder / "split.json").read_text())
    claim = {"sha256": hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest(), "epochs": epochs}
    interrupted = isinstance(stored, dict) and stored.get("sha256") == claim["sha256"] and \
        stored.get("epochs") != epochs and not (folder / result).is_file()
    if resume and interrupted:   # every process reads and refuses alike, so none waits for another
        raise ConfigError(f"--resume: {folder} was interrupted while training with {setting}={stored['epochs']}, "
                          f"not {epochs}; its learning-rate schedule is built for that length. Resume with "
                          f"{setting}={stored['epochs']}, or train into a new --out")
    barrier()   # all have read the folder before it changes
    if is_main():
        if folder.is_dir() and (not resume or stored != claim):
            if resume and stored is not None:
                log.warning("--resume: %s was made by a different run; fitting it again", folder)
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "split.json", claim)
    barrier()   # the others use the folder only once it is this fit's
