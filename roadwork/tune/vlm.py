"""``roadwork vlm zero-shot``: a vision-language model as a scorer, calibrated on labelled photos.

The model answers the question about every photo of DATA (``roadwork.experts.vlm``); its yes/no margins
are calibrated as a head's are (the served cut, then a temperature), and the out-of-fold estimate
cuts each grouped fold with a calibration fitted on the others. RUN/bundle is a ``vlm`` bundle.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roadwork.data.groups import group_samples
from roadwork.data.records import DatasetError
from roadwork.data.sources import load_samples
from roadwork.data.splits import kfold_splits
from roadwork.evaluate.metrics import with_intervals
from roadwork.experts.vlm import DEFAULT_MAX_PIXELS, QUESTION, YesNoVlm
from roadwork.features.extract import content_keys
from roadwork.serve.calibration import fit_calibration
from roadwork.serve.vlm import batched_margins, sample_photos, save_vlm
from roadwork.storage import atomic_write_json, check_output, write_folder


def zero_shot(model: str, data: str, out: str | Path, *, question: str = QUESTION,
              max_pixels: int = DEFAULT_MAX_PIXELS, device: str = "cpu", folds: int = 5, seed: int = 0,
              batch_size: int = 8, overwrite: bool = False) -> dict[str, Any]:
    """Score DATA with ``model``, calibrate, and write RUN/bundle and RUN/metrics.json."""
    out = check_output(out, "output folder", replace=overwrite, inputs=[data])
    samples = load_samples(data)
    if any(s.label is None for s in samples):
        raise DatasetError(f"{data}: every photo needs a label to calibrate the model's answers on")
    vlm = YesNoVlm(model, question, max_pixels=max_pixels, device=device)
    photos, good, failures = sample_photos(samples)
    started = time.perf_counter()
    margins = batched_margins(vlm, photos, batch_size) if photos else None
    seconds = time.perf_counter() - started
    if margins is None or len(good) < 10:
        raise DatasetError(f"{data}: only {len(good)} photos could be scored; calibration needs more")
    m = margins.numpy().astype(np.float64)
    labels = np.array([samples[i].label for i in good], dtype=np.int64)
    keys, _ = content_keys([samples[i] for i in good])
    groups = group_samples([samples[i] for i in good], keys, None).ids   # type: ignore[arg-type]
    calibration, cut = fit_calibration(m, labels, groups=groups)
    estimate = np.zeros(len(m))
    for fit, held in kfold_splits(labels, groups, min(folds, len(np.unique(groups))), seed):
        fold, _ = fit_calibration(m[fit], labels[fit], groups=groups[fit])
        estimate[held] = fold(torch.from_numpy(m[held])).numpy()
    metrics = {**with_intervals(estimate, labels, groups, seed=seed),
               "estimate": "out-of-fold over grouped folds: each fold cut by a calibration fitted on the others",
               "model": model, "question": question, "photos": len(good), "failures": failures,
               "seconds_per_photo": round(seconds / len(good), 4), "cut": cut.__dict__}

    def fill(staging: Path) -> None:
        save_vlm(staging / "bundle", model=model, question=question, max_pixels=max_pixels, calibration=calibration,
                 metrics={k: v for k, v in metrics.items() if k != "failures"})
        atomic_write_json(staging / "metrics.json", metrics)

    write_folder(out, fill)
    return metrics
