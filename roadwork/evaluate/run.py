"""``roadwork evaluate``: one or more bundles on a labelled dataset -> metrics.json, predictions.csv,
report.html.

Several bundles are scored on the same photos (those every bundle could decode) under the same
bootstrap resamples, so their differences come with paired intervals. The first bundle is the
reference: its numbers are metrics.json's top-level keys, the others are under ``compared``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from roadwork.config import TtaConfig
from roadwork.data.annotations import ANNOTATIONS, ImageAnnotations, read_annotations
from roadwork.data.groups import group_samples
from roadwork.data.records import DatasetError, Sample
from roadwork.data.sources import load_samples
from roadwork.evaluate import plots
from roadwork.evaluate.metrics import (
    METRICS,
    ReliabilityBin,
    binary_metrics,
    bootstrap_metrics,
    interval,
    paired_difference,
    reliability,
)
from roadwork.evaluate.report import write_predictions, write_report
from roadwork.evaluate.reward import simulate_reward
from roadwork.evaluate.segmentation import mask_agreement
from roadwork.evaluate.slices import find_slices, slice_table
from roadwork.features.extract import content_keys
from roadwork.serve.bundle import fingerprint
from roadwork.serve.scorer import Scorer, load_scorer
from roadwork.storage import atomic_write_json, check_output, write_folder

log = logging.getLogger(__name__)
GALLERY = 8   # worst false positives and false negatives shown per model


@dataclass
class Scored:
    """One bundle's probabilities on every sample (NaN where the image failed)."""

    name: str
    bundle: str
    served: np.ndarray
    uncalibrated: np.ndarray   # the head's own sigmoid, before the cut and calibration
    calibration_method: str
    inputs: str
    failures: dict[str, str]
    seen_in_training: list[str]
    seconds: float   # scoring time, feature extraction (or cache reads) included
    maps: list[Tensor | None]   # per sample, where its segmentation branch sees roadwork (None: no branch)
    tiers: list[str | None] | None   # per sample, which tier of a cascade answered (None: one tier)


def training_overlap(predictor: Scorer, samples: Sequence[Sample],
                     keys: Sequence[str | None]) -> list[str]:
    """File names of evaluation photos that the bundle was trained on (same bytes)."""
    seen = predictor.training_fingerprints()
    return [s.file_name for s, k in zip(samples, keys) if k is not None and fingerprint(k) in seen]


def model_names(bundles: Sequence[str | Path]) -> list[str]:
    """Short, distinct names: a run folder's name for ``RUN/bundle``, else the folder's own name."""
    names = []
    for bundle in bundles:
        path = Path(bundle).resolve()
        name = path.parent.name if path.name == "bundle" else path.name
        names.append(name if name not in names else f"{name} ({len(names) + 1})")
    return names


def score_bundle(bundle: str | Path, name: str, samples: Sequence[Sample],
                 hashed: tuple[list[str | None], dict[str, str]], *, cache_dir: str | Path | None,
                 device: str, tta: TtaConfig | None = None) -> Scored:
    started = time.perf_counter()
    predictor = load_scorer(bundle, device)
    if tta is not None:
        predictor.use_tta(tta)
    overlap = training_overlap(predictor, samples, hashed[0])
    if overlap:
        log.warning("%s: %d of %d evaluation photos were in its training data (e.g. %s): their scores are not "
                    "a test", name, len(overlap), len(samples), ", ".join(overlap[:3]))
    margins, good, failures = predictor.sample_margins(samples, cache_dir=cache_dir, progress=None, hashed=hashed)
    served, uncalibrated = np.full(len(samples), np.nan), np.full(len(samples), np.nan)
    answered_by, tiers = predictor.last_tiers(), None
    if answered_by is not None:
        tiers = [None] * len(samples)
        for i, tier in zip(good, answered_by):
            tiers[i] = tier
    if margins is not None:
        raw = torch.sigmoid(margins)
        served[good] = predictor.calibration(margins).numpy()
        uncalibrated[good] = (raw.mean(dim=-1) if raw.ndim == 2 else raw).numpy()
    return Scored(
        name,
        str(bundle),
        served,
        uncalibrated,
        predictor.calibration.method,
        predictor.served.describe(),
        failures,
        overlap,
        time.perf_counter() - started,
        predictor.roadwork_maps(samples),
        tiers,
    )


def _worst(samples: Sequence[Sample], probabilities: np.ndarray, labels: np.ndarray) -> dict[str, list[dict]]:
    def pick(mask: np.ndarray, highest: bool) -> list[dict[str, Any]]:
        rows = np.flatnonzero(mask)
        rows = rows[np.argsort(-probabilities[rows] if highest else probabilities[rows], kind="stable")][:GALLERY]
        return [{"file_name": samples[i].file_name, "probability": round(float(probabilities[i]), 4)} for i in rows]

    called = probabilities > 0.5
    return {"false_positives": pick(called & (labels == 0), True),
            "false_negatives": pick(~called & (labels == 1), False)}


def _model_report(model: Scored, draws: dict[str, np.ndarray], samples: Sequence[Sample], labels: np.ndarray,
                  slices: list, groups: np.ndarray, seed: int, resamples: int,
                  annotations: dict[str, ImageAnnotations]) -> dict[str, Any]:
    probabilities, raw = model.served, model.uncalibrated
    ece, bins = reliability(probabilities, labels)
    ece_before, bins_before = reliability(raw, labels)
    curve = plots.threshold_curve(probabilities, labels)
    return {
        "name": model.name,
        "bundle": model.bundle,
        **binary_metrics(probabilities, labels, 0.5),
        "ci95": {name: interval(draws[name]) for name in METRICS},
        "inputs": model.inputs,
        "seen_in_training": len(model.seen_in_training),
        "scoring_seconds": round(model.seconds, 2),
        "calibration": {
            "method": model.calibration_method,
            "ece": round(ece, 4),
            "ece_uncalibrated": round(ece_before, 4),
            "bins": [b.__dict__ for b in bins],
            "bins_uncalibrated": [b.__dict__ for b in bins_before],
        },
        "reward": simulate_reward(probabilities, labels, seed=seed),
        "threshold_curve": {
            "thresholds": plots.THRESHOLDS.tolist(),
            "mcc": np.round(curve, 4).tolist(),
            "best_threshold": float(plots.THRESHOLDS[int(np.argmax(curve))]),
        },
        "slices": slice_table(slices, probabilities, labels, groups, seed=seed, resamples=resamples),
        "worst": _worst(samples, probabilities, labels),
        "segmentation": mask_agreement(samples, model.maps, annotations),
        "tiers": None if model.tiers is None else _tiers(model.tiers, probabilities, labels),
    }


def _tiers(tiers: list[str | None], probabilities: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per tier of a cascade, how many photos it answered and its MCC on them."""
    found = np.array(tiers, dtype=object)
    return {str(tier): binary_metrics(probabilities[found == tier], labels[found == tier], 0.5)
            for tier in sorted(set(tiers) - {None})}


def _warnings(models: Sequence[Scored], labels: np.ndarray) -> list[str]:
    warnings = [f"{m.name}: {len(m.seen_in_training)} of these photos were in its training data; their scores are "
                "not a test" for m in models if m.seen_in_training]
    positives = int(labels.sum())
    if min(positives, len(labels) - positives) < 30:
        warnings.append(f"only {positives} roadwork and {len(labels) - positives} other photos: read the intervals, "
                        "not the second decimal")
    return warnings


def _figures(reports: Sequence[dict[str, Any]], probabilities: Sequence[np.ndarray], labels: np.ndarray
             ) -> dict[str, Any]:
    def bins(report: dict[str, Any], key: str) -> list[ReliabilityBin]:
        return [ReliabilityBin(**b) for b in report["calibration"][key]]

    return {"confusion": [plots.confusion_png(r, r["name"]) for r in reports],
            "curves": plots.curves_png([(r["name"], p) for r, p in zip(reports, probabilities)], labels),
            "reliability": plots.reliability_png([(r["name"], bins(r, "bins_uncalibrated"), bins(r, "bins"))
                                                  for r in reports])}


def evaluate(bundles: str | Path | Sequence[str | Path], data: str, out: str | Path, *,
             cache_dir: str | Path | None = None, device: str = "cpu", resamples: int = 1000,
             seed: int = 0, tta: TtaConfig | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Score each bundle on DATA and write OUT/metrics.json, OUT/predictions.csv and OUT/report.html
    (all three, or none: the folder is swapped in whole; an OUT with content only with ``overwrite``);
    ``tta`` scores every bundle over test-time copies (roadwork.serve.tta)."""
    bundles = [bundles] if isinstance(bundles, str | Path) else list(bundles)
    if not bundles:
        raise ValueError("evaluate needs at least one bundle")
    out = check_output(out, "report folder", replace=overwrite, inputs=[*bundles, data])
    all_samples = load_samples(data)
    hashed = content_keys(all_samples)
    models = [score_bundle(b, name, all_samples, hashed, cache_dir=cache_dir, device=device, tta=tta)
              for b, name in zip(bundles, model_names(bundles))]
    kept = np.flatnonzero(np.all([np.isfinite(m.served) for m in models], axis=0))
    if not len(kept):
        raise DatasetError(f"{data}: no image could be decoded")
    rows = [(s.file_name, s.label, *(None if np.isnan(m.served[i]) else float(m.served[i]) for m in models))
            for i, s in enumerate(all_samples)]
    samples = [all_samples[i] for i in kept]
    labels = np.array([s.label for s in samples], dtype=np.int64)
    for model in models:
        model.served, model.uncalibrated = model.served[kept], model.uncalibrated[kept]
        model.maps = [model.maps[i] for i in kept]
        model.tiers = None if model.tiers is None else [model.tiers[i] for i in kept]
    annotations = read_annotations(data) if (Path(data) / ANNOTATIONS).is_file() else {}
    keys = [hashed[0][i] or all_samples[i].file_name for i in kept]
    grouping = group_samples(samples, keys, None)   # the group column, else rows (identical files together)
    draws = bootstrap_metrics([m.served for m in models], labels, grouping.ids, resamples=resamples, seed=seed)
    slices = find_slices(samples, seed)
    reports = [_model_report(m, d, samples, labels, slices, grouping.ids, seed, resamples, annotations)
               for m, d in zip(models, draws)]
    failures = {name: error for m in models for name, error in m.failures.items()}
    report: dict[str, Any] = {
        **reports[0],
        "data": str(data), "undecodable": len(failures), "failures": failures, "warnings": _warnings(models, labels),
        "bootstrap": {"resamples": resamples, "seed": seed, "grouped_by": grouping.source, "groups": grouping.count},
        "tta": (tta or TtaConfig()).model_dump(),
    }
    if len(reports) > 1:
        report["compared"] = reports[1:]
        report["comparisons"] = [{"a": reports[0]["name"], "b": r["name"], **paired_difference(draws[0], d),
                                  "mcc_difference": round(r["mcc"] - reports[0]["mcc"], 4)}
                                 for d, r in zip(draws[1:], reports[1:])]
    figures = _figures(reports, [m.served for m in models], labels)

    def fill(staging: Path) -> None:
        write_predictions(staging / "predictions.csv", rows,
                          ["probability", *(f"probability_{m.name}" for m in models[1:])])
        atomic_write_json(staging / "metrics.json", report)
        write_report(staging / "report.html", report, figures, samples,
                     {m.name: {s.file_name: found for s, found in zip(samples, m.maps) if found is not None}
                      for m in models})

    write_folder(out, fill)
    return report
