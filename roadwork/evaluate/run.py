"""``roadwork evaluate``: a bundle on a labelled dataset -> metrics.json, predictions.csv, report.html."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from roadwork.data.records import DatasetError
from roadwork.data.sources import load_samples
from roadwork.evaluate.metrics import binary_metrics
from roadwork.evaluate.report import write_predictions, write_report
from roadwork.features.extract import content_keys
from roadwork.serve.bundle import fingerprint
from roadwork.serve.predictor import Predictor
from roadwork.storage import atomic_write_json, writable_folder

log = logging.getLogger(__name__)


def training_overlap(predictor: Predictor, samples: list, keys: list[str | None]) -> list[str]:
    """File names of evaluation photos that the bundle was trained on (same bytes)."""
    seen = predictor.bundle.training_fingerprints()
    return [s.file_name for s, k in zip(samples, keys) if k is not None and fingerprint(k) in seen]


def evaluate(bundle: str | Path, data: str, out: str | Path, *, cache_dir: str | Path | None = None,
             device: str = "cpu") -> dict[str, Any]:
    out = writable_folder(out, "report folder")
    predictor = Predictor.load(bundle, device)
    samples = load_samples(data)
    hashed = content_keys(samples)
    overlap = training_overlap(predictor, samples, hashed[0])
    if overlap:
        log.warning("%d of %d evaluation photos were in the bundle's training data (e.g. %s): their scores "
                    "are not a test", len(overlap), len(samples), ", ".join(overlap[:3]))
    probs, failures = predictor.predict_samples(samples, cache_dir=cache_dir, progress=None, hashed=hashed)
    scored = [(s, p) for s, p in zip(samples, probs) if p is not None]
    if not scored:
        raise DatasetError(f"{data}: no image could be decoded")
    metrics = binary_metrics([p for _, p in scored], [s.label for s, _ in scored], threshold=0.5)
    metrics["undecodable"] = len(failures)
    metrics["seen_in_training"] = len(overlap)
    metrics["inputs"] = "the image alone" if predictor.bundle.served_metadata == "none" else "image and metadata"
    write_predictions(out / "predictions.csv", ((s.file_name, s.label, p) for s, p in zip(samples, probs)))
    atomic_write_json(out / "metrics.json", {**metrics, "failures": failures, "bundle": str(bundle), "data": str(data)})
    write_report(out / "report.html", metrics, str(bundle), str(data))
    return metrics
