"""``roadwork cascade``: fit the band of a fast/slow cascade on labelled photos neither tier learnt from.

Both tiers score every photo (cached features where their kind allows). The band is the widest one
around 0.5 that sends at most ``share`` of the photos on (``--budget-ms``: the share the slow tier's
measured latency leaves room for) and, among those, the one with the best combined MCC (narrower on a
tie: cheaper); the combined margins are calibrated again. Both the band and the calibration are then
refitted fold by fold over grouped folds, each fold scored by a cascade fitted on the others: the
out-of-fold estimate, beside each tier's own score on the same photos.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import matthews_corrcoef

from roadwork.data.groups import group_samples
from roadwork.data.records import DatasetError
from roadwork.data.sources import load_samples
from roadwork.data.splits import kfold_splits
from roadwork.errors import RoadworkError
from roadwork.evaluate.metrics import with_intervals
from roadwork.features.extract import content_keys
from roadwork.serve.calibration import Calibration, fit_calibration
from roadwork.serve.cascade import Band, combined_margins, save_cascade
from roadwork.serve.scorer import Scorer, load_scorer
from roadwork.storage import check_output

LATENCY_PHOTOS = 16   # request-path calls per tier that measure its latency for --budget-ms


def fit_band(fast: np.ndarray, slow: np.ndarray, labels: np.ndarray, share: float) -> Band:
    """The band sending at most ``share`` of the photos on with the best combined MCC (0: none sent)."""
    distance = np.abs(fast - 0.5)
    order = np.argsort(distance, kind="stable")
    most = int(np.floor(share * len(fast) + 1e-9))
    best, chosen = matthews_corrcoef(labels, fast > 0.5), 0.0
    decided = (fast > 0.5).copy()
    for k in range(1, most + 1):
        row = order[k - 1]
        decided[row] = slow[row] > 0.5
        if k < len(fast) and distance[order[k]] == distance[row]:
            continue   # a band edge between equal distances would split them
        score = matthews_corrcoef(labels, decided)
        if score > best + 1e-12:
            best, chosen = score, float(distance[row]) + 1e-9
    return Band(chosen)


def _fit(fast: np.ndarray, slow: np.ndarray, labels: np.ndarray, groups: np.ndarray,
         share: float) -> tuple[Band, Calibration]:
    band = fit_band(fast, slow, labels, share)
    calibration, _ = fit_calibration(combined_margins(fast, slow, band.routes(fast)), labels, groups=groups)
    return band, calibration


def request_ms(scorer: Scorer, images: list[bytes]) -> float:
    """Median milliseconds of one photo on the request path (after one warm-up call)."""
    scorer.predict_images(images[:1])
    times = []
    for image in images:
        started = time.perf_counter()
        scorer.predict_images([image])
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def build_cascade(fast_path: str | Path, slow_path: str | Path, data: str, out: str | Path, *,
                  share: float | None = None, budget_ms: float | None = None, cache_dir: str | Path | None = None,
                  device: str = "cpu", folds: int = 5, seed: int = 0, overwrite: bool = False) -> dict[str, Any]:
    """Fit the cascade on DATA and write it to OUT; return its metrics."""
    if (share is None) == (budget_ms is None):
        raise RoadworkError("give --share (the most photos the slow tier may see) or --budget-ms (a mean time per "
                            "photo), not both")
    if share is not None and not 0.0 <= share <= 1.0:
        raise RoadworkError(f"--share must be between 0 and 1, got {share}")
    out = check_output(out, "cascade folder", replace=overwrite, inputs=[fast_path, slow_path, data])
    fast, slow = load_scorer(fast_path, device), load_scorer(slow_path, device)
    samples = load_samples(data)
    if any(s.label is None for s in samples):
        raise DatasetError(f"{data}: every photo needs a label to fit the band on")
    hashed = content_keys(samples)
    probabilities = []
    for tier in (fast, slow):
        margins, good, _ = tier.sample_margins(samples, cache_dir, hashed=hashed)
        column = np.full(len(samples), np.nan)
        if margins is not None:
            column[good] = tier.calibration(margins).numpy()
        probabilities.append(column)
    kept = np.flatnonzero(np.isfinite(probabilities[0]) & np.isfinite(probabilities[1]))
    if len(kept) < 10:
        raise DatasetError(f"{data}: only {len(kept)} photos both tiers could score; a band needs more")
    p_fast, p_slow = probabilities[0][kept], probabilities[1][kept]
    labels = np.array([samples[i].label for i in kept], dtype=np.int64)
    groups = group_samples([samples[i] for i in kept], [hashed[0][i] for i in kept], None).ids   # type: ignore[misc]
    latency = None
    if budget_ms is not None:
        images = [samples[i].read_bytes() for i in kept[:LATENCY_PHOTOS]]
        latency = {"fast": request_ms(fast, images), "slow": request_ms(slow, images)}
    share = share if latency is None else float(np.clip((budget_ms - latency["fast"]) / latency["slow"], 0.0, 1.0))  # type: ignore[operator]
    band, calibration = _fit(p_fast, p_slow, labels, groups, share)
    estimate = np.zeros(len(kept))
    routed = np.zeros(len(kept), dtype=bool)
    for fit, held in kfold_splits(labels, groups, min(folds, len(np.unique(groups))), seed):
        fold_band, fold_calibration = _fit(p_fast[fit], p_slow[fit], labels[fit], groups[fit], share)
        routed[held] = fold_band.routes(p_fast[held])
        margins = combined_margins(p_fast[held], p_slow[held], routed[held])
        estimate[held] = fold_calibration(torch.from_numpy(margins)).numpy()
    metrics = {
        "photos": int(len(kept)), "share_allowed": round(share, 4), "latency_ms": latency,
        "band_half_width": round(band.half_width, 6), "routed_share_all": round(float(band.routes(p_fast).mean()), 4),
        "cascade": with_intervals(estimate, labels, groups, seed=seed),
        "routed_share_out_of_fold": round(float(routed.mean()), 4),
        "fast": with_intervals(p_fast, labels, groups, seed=seed),
        "slow": with_intervals(p_slow, labels, groups, seed=seed),
        "estimate": "out-of-fold over grouped folds: each fold answered by a band and calibration fitted on the others",
    }
    save_cascade(out, Path(fast_path), Path(slow_path), band, calibration, budget_ms, metrics)
    return metrics
