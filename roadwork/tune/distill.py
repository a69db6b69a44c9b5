"""Distillation: a single probe student learns from a teacher's probabilities (``roadwork distill``).

The teacher (an ensemble or any bundle, however many backbones it runs) scores the training photos;
each photo's target is mix x sigmoid(logit(p_teacher) / temperature) + (1 - mix) x label. The
student is an ordinary ``train`` run of the probe on those targets (its backbone and views from the
configuration), validated, calibrated and bundled as usual against the true labels, so its reported
MCC is comparable with the teacher's. A teacher scoring photos it was trained on is overconfident
there; the share of such photos is reported, and a transfer set the teacher never saw is better.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from roadwork.config import TrainConfig
from roadwork.data.records import DatasetError
from roadwork.data.sources import load_samples
from roadwork.distributed import is_main
from roadwork.evaluate.metrics import binary_metrics
from roadwork.features.extract import content_keys
from roadwork.serve.bundle import fingerprint
from roadwork.serve.ensemble import logit
from roadwork.serve.scorer import load_scorer
from roadwork.storage import atomic_write_json
from roadwork.train.run import train
from roadwork.train.trainer import check_run_folder

log = logging.getLogger(__name__)


def soft_targets(teacher: np.ndarray, labels: np.ndarray, temperature: float, mix: float) -> np.ndarray:
    softened = 1 / (1 + np.exp(-logit(teacher) / temperature))
    return mix * softened + (1 - mix) * labels


def distill(teacher: str | Path, data: str, out: str | Path, config: TrainConfig, *,
            cache_dir: str | Path | None = None, device: str = "cpu", resume: bool = False,
            overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train a probe student on DATA from TEACHER's softened probabilities; write OUT like ``train``."""
    check_run_folder(out, resume=resume, overwrite=overwrite, inputs=[teacher, data])   # before scoring
    config = config.model_copy(update={"model": config.model.model_copy(update={"type": "probe"})})
    predictor = load_scorer(teacher, device)
    samples = load_samples(data)
    hashed = content_keys(samples, progress)
    probabilities, _ = predictor.predict_samples(samples, cache_dir=cache_dir, progress=progress, hashed=hashed)
    scored = [i for i, p in enumerate(probabilities) if p is not None and hashed[0][i] is not None]
    if not scored:
        raise DatasetError(f"{data}: the teacher could not score any photo")
    teacher_p = np.array([probabilities[i] for i in scored])
    labels = np.array([samples[i].label for i in scored], dtype=float)
    targets = soft_targets(teacher_p, labels, config.distill.temperature, config.distill.mix)
    seen = predictor.training_fingerprints()
    seen_share = float(np.mean([fingerprint(hashed[0][i]) in seen for i in scored]))   # type: ignore[arg-type]
    if seen_share > 0.5:
        log.warning("the teacher was trained on %.0f%% of these photos: its probabilities there are overconfident",
                    100 * seen_share)
    metrics = train(data, out, config, cache_dir=cache_dir, device=device, resume=resume, overwrite=overwrite,
                    progress=progress,
                    soft_targets={hashed[0][i]: float(t) for i, t in zip(scored, targets)})   # type: ignore[misc]
    if not is_main():   # ddp: process 0 writes
        return metrics
    metrics["distillation"] = {
        "teacher": str(teacher), "temperature": config.distill.temperature, "mix": config.distill.mix,
        "teacher_trained_on_share": round(seen_share, 4),
        "teacher_on_these_photos": {k: binary_metrics(teacher_p, labels.astype(int))[k] for k in ("mcc", "auroc")},
        "mean_target_distance_from_label": round(float(np.abs(targets - labels).mean()), 4),
    }
    atomic_write_json(Path(out) / "metrics.json", metrics)
    return metrics
