"""``roadwork evaluate``: a bundle on a labelled dataset -> metrics.json, predictions.csv, report.html."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from roadwork.data.records import DatasetError
from roadwork.data.sources import load_samples
from roadwork.evaluate.metrics import binary_metrics
from roadwork.evaluate.report import write_predictions, write_report
from roadwork.serve.predictor import Predictor
from roadwork.storage import atomic_write_json


def evaluate(bundle: str | Path, data: str, out: str | Path, *, cache_dir: str | Path | None = None,
             device: str = "cpu") -> dict[str, Any]:
    out = Path(out)
    predictor = Predictor.from_bundle(bundle, device)
    samples = load_samples(data)
    probs, failures = predictor.predict_samples(samples, cache_dir=cache_dir, progress=None)
    scored = [(s, p) for s, p in zip(samples, probs) if p is not None]
    if not scored:
        raise DatasetError(f"{data}: no image could be decoded")
    metrics = binary_metrics([p for _, p in scored], [s.label for s, _ in scored], threshold=0.5)
    metrics["undecodable"] = len(failures)
    write_predictions(out / "predictions.csv", ((s.file_name, s.label, p) for s, p in zip(samples, probs)))
    atomic_write_json(out / "metrics.json", {**metrics, "failures": failures, "bundle": str(bundle), "data": str(data)})
    write_report(out / "report.html", metrics, str(bundle), str(data))
    return metrics
