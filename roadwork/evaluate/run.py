"""``roadwork evaluate``: a bundle on a labelled dataset -> metrics.json, predictions.csv, report.html."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from roadwork.data.sources import load_samples
from roadwork.evaluate.metrics import binary_metrics
from roadwork.evaluate.report import write_report
from roadwork.serve.predictor import Predictor
from roadwork.storage import atomic_write_json, atomic_write_text


def evaluate(bundle: str | Path, data: str, out: str | Path, *, cache_dir: str | Path | None = None,
             device: str = "cpu") -> dict[str, Any]:
    out = Path(out)
    predictor = Predictor.from_bundle(bundle, device)
    samples = load_samples(data)
    probs, failures = predictor.predict_samples(samples, cache_dir=cache_dir, progress=None)
    scored = [(s, p) for s, p in zip(samples, probs) if p is not None]
    if not scored:
        raise ValueError(f"{data}: no image could be decoded")
    metrics = binary_metrics([p for _, p in scored], [s.label for s, _ in scored], threshold=0.5)
    metrics["undecodable"] = len(failures)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file_name", "label", "probability"])
    for sample, prob in zip(samples, probs):
        writer.writerow([sample.file_name, sample.label, "" if prob is None else f"{prob:.6f}"])
    atomic_write_text(out / "predictions.csv", buffer.getvalue())
    atomic_write_json(out / "metrics.json", {**metrics, "failures": failures, "bundle": str(bundle), "data": str(data)})
    write_report(out / "report.html", metrics, str(bundle), str(data))
    return metrics
