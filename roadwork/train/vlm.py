"""``roadwork vlm train``: LoRA fine-tuning of a chat VLM's yes/no answer on labelled photos.

peft injects LoRA adapters into the language model's projections (and the vision tower's with
``--vision``); the loss is binary cross-entropy of the next token's yes/no margin against the label,
the same margin the zero-shot scorer reads. Lightning runs the loop with a checkpoint per epoch for
``--resume``. The adapters are then merged, the model is saved inside the bundle, and the margins of a
grouped held-out share of the photos (never trained on) fit its calibration: RUN/bundle is a ``vlm``
bundle. ``--method qlora`` loads the model in 4 bits with bitsandbytes, on a CUDA GPU only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from roadwork.backbones.adapt import merge_adapters
from roadwork.config import OptimConfig, TrainConfig, VlmTrainingConfig
from roadwork.data.groups import group_samples
from roadwork.data.records import DatasetError
from roadwork.data.sources import load_samples
from roadwork.data.splits import train_val_split
from roadwork.errors import RoadworkError
from roadwork.evaluate.metrics import with_intervals
from roadwork.experts.vlm import QUESTION, YesNoVlm
from roadwork.features.extract import content_keys
from roadwork.serve.calibration import fit_calibration
from roadwork.serve.vlm import batched_margins, sample_photos, save_vlm
from roadwork.storage import atomic_write_json
from roadwork.train.trainer import build_trainer, check_run_folder, open_run_folder

LANGUAGE = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
VISION = r".*visual.*\.(qkv|proj|linear_fc1|linear_fc2)"


class _Labelled(Dataset):
    def __init__(self, photos: list[Image.Image], labels: np.ndarray) -> None:
        self.photos, self.labels = photos, labels

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, index: int) -> tuple[Image.Image, float]:
        return self.photos[index], float(self.labels[index])


class VlmModule(L.LightningModule):
    """The VLM with its adapters; the yes/no margin trained by binary cross-entropy."""

    def __init__(self, vlm: YesNoVlm, settings: VlmTrainingConfig) -> None:
        super().__init__()
        self.vlm, self.settings = vlm, settings
        self.model = vlm.model   # registered, so Lightning moves and checkpoints it

    def training_step(self, batch: tuple[list[Image.Image], Tensor], batch_idx: int) -> Tensor:
        photos, labels = batch
        self.vlm.device = self.device   # wherever Lightning put the model
        margins = self.vlm.answer_margins(self.vlm.inputs(photos))
        loss = F.binary_cross_entropy_with_logits(margins, labels.float().to(margins.device))
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(photos))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=self.settings.lr)


def _collate(batch: list[tuple[Image.Image, float]]) -> tuple[list[Image.Image], Tensor]:
    return [photo for photo, _ in batch], torch.tensor([label for _, label in batch])


def _adapters(vlm: YesNoVlm, settings: VlmTrainingConfig) -> int:
    """Inject LoRA into the chosen projections; only the adapters train. Returns their parameter count."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = f"({LANGUAGE})|({VISION})" if settings.vision else LANGUAGE
    vlm.model.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=settings.rank, lora_alpha=2 * settings.rank, target_modules=targets),
                            vlm.model)
    for name, parameter in vlm.model.named_parameters():
        parameter.requires_grad_("lora_" in name)
    return sum(p.numel() for p in vlm.model.parameters() if p.requires_grad)


def train_vlm(model: str, data: str, out: str | Path, settings: VlmTrainingConfig, *, device: str = "cpu",
              resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``model`` on DATA and write RUN/bundle (kind vlm, the merged model inside) and RUN/metrics.json."""
    if settings.method == "qlora" and not (str(device).startswith("cuda") and torch.cuda.is_available()):
        raise RoadworkError("--method qlora loads the model in 4 bits with bitsandbytes, which needs a CUDA GPU; "
                            "use --method lora here")
    out = check_run_folder(out, resume=resume, overwrite=overwrite, inputs=[data])
    samples = load_samples(data)
    if any(s.label is None for s in samples):
        raise DatasetError(f"{data}: every photo needs a label to fine-tune on")
    photos, good, failures = sample_photos(samples)
    labels = np.array([samples[i].label for i in good], dtype=np.int64)
    keys, _ = content_keys([samples[i] for i in good])
    groups = group_samples([samples[i] for i in good], keys, None).ids   # type: ignore[arg-type]
    fit, held = train_val_split(labels, groups, settings.held_out, settings.seed)
    open_run_folder(out, clear=overwrite and not resume)
    vlm = YesNoVlm(model, settings.question or QUESTION, max_pixels=settings.max_pixels, device="cpu",
                   quantised=settings.method == "qlora")
    trainable = _adapters(vlm, settings)
    L.seed_everything(settings.seed, workers=True, verbose=False)
    module = VlmModule(vlm, settings)
    trainer, _ = build_trainer(TrainConfig(seed=settings.seed, optim=OptimConfig(ema=False)), out,
                               max_epochs=settings.epochs, device=device, progress=progress,
                               batch_size_fn=lambda batch: len(batch[1]), validate=False)
    loader = DataLoader(_Labelled([photos[i] for i in fit], labels[fit]), batch_size=settings.batch_size,
                        shuffle=True, collate_fn=_collate, generator=torch.Generator().manual_seed(settings.seed))
    last = out / "checkpoints" / "last.ckpt"
    started = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(last) if resume and last.is_file() else None,
                weights_only=True)
    fit_s = time.perf_counter() - started
    merge_adapters(vlm.model.cpu())
    vlm.device = torch.device("cpu")
    margins = batched_margins(vlm, [photos[i] for i in held], settings.batch_size).numpy().astype(np.float64)
    calibration, _ = fit_calibration(margins, labels[held], groups=groups[held])
    metrics = {**with_intervals(calibration(torch.from_numpy(margins)).numpy(), labels[held], groups[held],
                                seed=settings.seed),
               "estimate": f"a grouped held-out share ({settings.held_out:.0%}) never trained on; it also fitted the "
                           "calibration, so slightly optimistic",
               "model": model, "method": settings.method, "trained_photos": int(len(fit)), "held_out": int(len(held)),
               "trainable_parameters": trainable, "epochs": int(trainer.current_epoch), "fit_s": round(fit_s, 2),
               "failures": failures}

    save_vlm(out / "bundle", model=vlm, question=vlm.question, max_pixels=settings.max_pixels,
             calibration=calibration, metrics={k: v for k, v in metrics.items() if k != "failures"})
    atomic_write_json(out / "metrics.json", metrics)
    return metrics
