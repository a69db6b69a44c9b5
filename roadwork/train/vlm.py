"""``roadwork vlm train``: LoRA fine-tuning of a chat VLM's yes/no answer on labelled photos.

peft injects LoRA adapters into the language model's projections (and the vision tower's with
``--vision``); the loss is binary cross-entropy of the next token's yes/no margin against the label,
the same margin the zero-shot scorer reads. Lightning runs the loop with a checkpoint per epoch for
``--resume``. The adapters are then merged, the model is saved inside the bundle, and the margins of a
grouped held-out share of the photos (never trained on) fit its calibration: RUN/bundle is a ``vlm``
bundle. ``--method qlora`` loads the model in 4 bits with bitsandbytes, on a CUDA GPU only.

``--dpo`` trains by direct preference optimisation instead: each photo is a pair, its right short answer
preferred to the wrong one, against the model it started from, and a classifier bundle's confident
mistakes weigh more. trl's DPOTrainer runs its own Trainer loop over tokenised answer sequences; the
answer here is one token, where DPO's objective is exactly -log sigmoid(beta * s * (m - m_ref)) with m
the yes/no margin, m_ref the start model's and s = +1 when "yes" is right, -1 when "no" is. So it is
written here, in the same Lightning loop as LoRA (resumable, checkpointed, one device policy), not
through a second training stack.
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
from safetensors.torch import load_file, save
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
from roadwork.serve.scorer import load_scorer
from roadwork.serve.vlm import batched_margins, sample_photos, save_vlm
from roadwork.storage import atomic_write_bytes, atomic_write_json
from roadwork.train.trainer import build_trainer, check_run_folder, open_run_folder

LANGUAGE = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
VISION = r".*(visual|vision_tower).*\.(qkv|proj|q_proj|k_proj|v_proj|out_proj|linear_fc1|linear_fc2|fc1|fc2)"


class _Labelled(Dataset):
    """Photos with their label, the start model's margin (DPO's reference) and the pair's weight."""

    def __init__(self, photos: list[Image.Image], labels: np.ndarray, reference: Tensor, weights: Tensor) -> None:
        self.photos, self.labels, self.reference, self.weights = photos, labels, reference, weights

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, index: int) -> tuple[Image.Image, float, float, float]:
        return (self.photos[index], float(self.labels[index]), float(self.reference[index]),
                float(self.weights[index]))


def dpo_loss(margins: Tensor, reference: Tensor, labels: Tensor, weights: Tensor, beta: float) -> Tensor:
    """DPO on one-token answers: the right answer preferred to the wrong one, relative to the reference
    model (``margins``, ``reference``: log p(yes) - log p(no)), weighted pairs."""
    sign = labels.float() * 2 - 1
    return (-F.logsigmoid(beta * sign * (margins - reference)) * weights).sum() / weights.sum()


class VlmModule(L.LightningModule):
    """The VLM with its adapters; the yes/no margin trained by binary cross-entropy or by DPO."""

    def __init__(self, vlm: YesNoVlm, settings: VlmTrainingConfig) -> None:
        super().__init__()
        self.vlm, self.settings = vlm, settings
        self.model = vlm.model   # registered, so Lightning moves and checkpoints it

    def training_step(self, batch: tuple[list[Image.Image], Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        photos, labels, reference, weights = batch
        self.vlm.device = self.device   # wherever Lightning put the model
        margins = self.vlm.answer_margins(self.vlm.inputs(photos))
        labels = labels.float().to(margins.device)
        if self.settings.objective == "dpo":
            loss = dpo_loss(margins, reference.to(margins.device), labels, weights.to(margins.device),
                            self.settings.dpo_beta)
        else:
            loss = F.binary_cross_entropy_with_logits(margins, labels)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(photos))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=self.settings.lr)


def _collate(batch: list[tuple[Image.Image, float, float, float]]) -> tuple[list[Image.Image], Tensor, Tensor, Tensor]:
    photos, labels, reference, weights = zip(*batch)
    return list(photos), torch.tensor(labels), torch.tensor(reference), torch.tensor(weights)


def mistake_weights(probabilities: np.ndarray, labels: np.ndarray, boost: float) -> Tensor:
    """Per photo, 1 + ``boost`` x how surely a classifier got it wrong (0 for a right answer, 1 for a wrong
    one at probability 0 or 1), normalised to mean 1: DPO's pairs weighted toward confident mistakes."""
    wrong = np.where(labels == 1, 1.0 - probabilities, probabilities)
    weights = 1.0 + boost * np.clip(2.0 * wrong - 1.0, 0.0, 1.0)
    return torch.from_numpy(weights / weights.mean()).float()


def _dpo_pairs(vlm: YesNoVlm, photos: list[Image.Image], samples: list, labels: np.ndarray,
               settings: VlmTrainingConfig, out: Path, resume: bool) -> tuple[Tensor, Tensor]:
    """The start model's margins (DPO's reference) and the pairs' weights, stored before the first step so
    that a resumed run compares against the same start, not against its own adapted self."""
    path = out / "dpo_reference.safetensors"
    if resume and path.is_file():
        stored = load_file(str(path))
        return stored["reference"], stored["weights"]
    reference = batched_margins(vlm, photos, settings.batch_size).float()
    weights = torch.ones(len(photos))
    if settings.classifier:
        probabilities, failures = load_scorer(settings.classifier).predict_samples(samples)
        if failures:
            raise RoadworkError(f"the classifier {settings.classifier} could not score {len(failures)} training "
                                f"photos ({next(iter(failures))}: {next(iter(failures.values()))})")
        weights = mistake_weights(np.asarray(probabilities, dtype=np.float64), labels, settings.mistake_weight)
    atomic_write_bytes(path, save({"reference": reference.contiguous(), "weights": weights.contiguous()}))
    return reference, weights


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
    fit_photos = [photos[i] for i in fit]
    reference, weights = torch.zeros(len(fit)), torch.ones(len(fit))
    if settings.objective == "dpo":
        reference, weights = _dpo_pairs(vlm, fit_photos, [samples[good[i]] for i in fit], labels[fit], settings,
                                        out, resume)
    trainable = _adapters(vlm, settings)
    L.seed_everything(settings.seed, workers=True, verbose=False)
    module = VlmModule(vlm, settings)
    trainer, _ = build_trainer(TrainConfig(seed=settings.seed, optim=OptimConfig(ema=False)), out,
                               max_epochs=settings.epochs, device=device, progress=progress,
                               batch_size_fn=lambda batch: len(batch[1]), validate=False)
    loader = DataLoader(_Labelled(fit_photos, labels[fit], reference, weights), batch_size=settings.batch_size,
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
               "model": model, "method": settings.method, "objective": settings.objective,
               "mistake_weighted": settings.objective == "dpo" and settings.classifier is not None,
               "trained_photos": int(len(fit)), "held_out": int(len(held)),
               "trainable_parameters": trainable, "epochs": int(trainer.current_epoch), "fit_s": round(fit_s, 2),
               "failures": failures}

    save_vlm(out / "bundle", model=vlm, question=vlm.question, max_pixels=settings.max_pixels,
             calibration=calibration, metrics={k: v for k, v in metrics.items() if k != "failures"})
    atomic_write_json(out / "metrics.json", metrics)
    return metrics
