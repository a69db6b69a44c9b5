"""A plain HTML summary of an evaluation (the full error-analysis report comes later)."""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from roadwork.storage import atomic_write_text


def write_predictions(path: str | Path, rows: Iterable[tuple[str, int | None, float | None]]) -> None:
    """``file_name,label,probability`` per image; an empty probability marks an undecodable image."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file_name", "label", "probability"])
    writer.writerows((name, "" if label is None else label, "" if p is None else f"{p:.6f}") for name, label, p in rows)
    atomic_write_text(path, buffer.getvalue())


def write_report(path: str | Path, metrics: dict[str, Any], bundle: str, data: str) -> None:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{v:.4f}</td></tr>" if isinstance(v, float)
        else f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in metrics.items()
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>roadwork evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}th{{text-align:left;padding-right:2em}}</style></head>
<body><h1>roadwork evaluation</h1>
<p>Bundle: <code>{html.escape(bundle)}</code><br>Data: <code>{html.escape(data)}</code></p>
<table>{rows}</table>
<p>Per-image probabilities are in <code>predictions.csv</code>.</p></body></html>
"""
    atomic_write_text(path, page)
