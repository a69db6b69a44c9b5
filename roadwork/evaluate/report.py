"""predictions.csv and the self-contained report.html (figures and thumbnails embedded as data URIs,
so the file opens anywhere without a server or the dataset)."""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from roadwork.data.decode import decode_image
from roadwork.data.records import Sample
from roadwork.errors import RoadworkError
from roadwork.evaluate.metrics import METRICS
from roadwork.evaluate.segmentation import upsampled
from roadwork.storage import atomic_write_text

THUMBNAIL_SIDE = 224
LABELS = {"mcc": "MCC", "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "precision": "precision",
          "recall": "recall", "f1": "F1", "auroc": "AUROC", "auprc": "AUPRC", "brier": "Brier score (lower is better)"}
STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1300px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}.ci{color:#777;font-size:90%}
.headline{font-size:2.2em;margin:0.2em 0}.small{color:#a60}.warn{background:#fff3cd;padding:0.5em 1em}
.gallery{display:flex;flex-wrap:wrap;gap:12px}.card{width:230px;font-size:80%;word-wrap:break-word}
.card img{max-width:224px;max-height:224px;display:block}img.plot{max-width:100%}"""


def write_predictions(
    path: str | Path, rows: Iterable[Sequence[Any]], columns: Sequence[str] = ("probability",)
) -> None:
    """``file_name,label,probability[,...]`` per image; an empty probability marks an undecodable image.
    Floats are written with 6 decimals, other values (a group id) as they are."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file_name", "label", *columns])
    for name, label, *values in rows:
        writer.writerow([name, "" if label is None else label,
                         *("" if v is None else f"{v:.6f}" if isinstance(v, float) else v for v in values)])
    atomic_write_text(path, buffer.getvalue())


def _esc(value: object) -> str:
    return html.escape(str(value))


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(bounds: Sequence[float] | None) -> str:
    return "" if bounds is None else f' <span class="ci">[{bounds[0]:.3f}, {bounds[1]:.3f}]</span>'


def _image(png: bytes, alt: str) -> str:
    return f'<img class="plot" alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def thumbnail(sample: Sample, roadwork: Tensor | None = None) -> str | None:
    """A JPEG data URI of the photo, at most THUMBNAIL_SIDE a side, tinted red where a segmentation
    branch's ``roadwork`` map says roadwork (its probability as the tint's strength); None if the photo
    cannot be decoded."""
    try:
        image = decode_image(sample.read_bytes(), min_scale=0.125, source=sample.file_name)
    except RoadworkError:
        return None
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    if roadwork is not None:
        strength = upsampled(roadwork, image.height, image.width).clamp(0, 1).numpy()[..., None] * 0.6
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        tinted = pixels * (1 - strength) + np.array([255.0, 0.0, 0.0]) * strength
        image = Image.fromarray(tinted.round().astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _metadata(sample: Sample) -> dict[str, object]:
    fields = {"gps": f"{sample.latitude:.4f}, {sample.longitude:.4f}" if sample.has_gps else None,
              "weather": sample.weather, "daytime": sample.daytime, "scene": sample.scene,
              "description": sample.description, **sample.extra}
    return {k: v for k, v in fields.items() if v is not None}


def _headline(models: Sequence[dict[str, Any]]) -> str:
    header = "".join(f"<th>{_esc(m['name'])}</th>" for m in models)
    rows = "".join(f"<tr><th>{LABELS[name]}</th>" + "".join(
        f'<td class="num">{_num(m[name])}{_ci(m["ci95"][name])}</td>' for m in models) + "</tr>" for name in METRICS)
    rows += "<tr><th>n (positives)</th>" + "".join(
        f'<td class="num">{m["n"]} ({m["positives"]})</td>' for m in models) + "</tr>"
    return f"<table><tr><th>metric [95% bootstrap interval]</th>{header}</tr>{rows}</table>"


def _comparisons(comparisons: Sequence[dict[str, Any]]) -> str:
    if not comparisons:
        return ""
    rows = "".join(
        f"<tr><td>{_esc(c['b'])} &minus; {_esc(c['a'])}</td><td class=num>{c['mcc_difference']:+.3f}"
        f"{_ci(c['ci95'])}</td><td class=num>{_num(c['b_better_share'], 2)}</td></tr>" for c in comparisons)
    return ("<h2>Paired comparison</h2><p>The same bootstrap resamples score every model, so the interval is "
            "of the difference itself; it excludes 0 only when one model is better on these photos "
            "beyond resampling noise.</p><table><tr><th>MCC difference</th><th>value [95% interval]</th>"
            f"<th>share of resamples above 0</th></tr>{rows}</table>")


def _reward(models: Sequence[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{_esc(m['name'])}</td>" + (
            "<td colspan=5>n/a: one class only</td>" if m["reward"] is None else "".join(
                f"<td class=num>{m['reward'][k]:.3f}</td>" for k in ("mean", "std", "p05", "median", "p95")))
        + "</tr>" for m in models)
    sequences = next((m["reward"]["sequences"] for m in models if m["reward"]), 0)
    return ("<h2>Reward simulation</h2><p>(0.5 &times; max(MCC of the last 100, 0) + 0.5 &times; accuracy of the "
            f"last 10)<sup>3</sup> over {sequences} random 50/50 challenge sequences drawn from these photos.</p>"
            "<table><tr><th>model</th><th>mean</th><th>std</th><th>5%</th><th>median</th><th>95%</th></tr>"
            f"{rows}</table>")


def _calibration(models: Sequence[dict[str, Any]], figure: bytes) -> str:
    rows = "".join(f"<tr><td>{_esc(m['name'])}</td><td>{_esc(m['calibration']['method'])}</td>"
                   f"<td class=num>{m['calibration']['ece_uncalibrated']:.3f}</td>"
                   f"<td class=num>{m['calibration']['ece']:.3f}</td></tr>" for m in models)
    return ("<h2>Calibration</h2><p>Expected calibration error over 10 equal-width bins of P(roadwork): "
            "before calibration (the head's own sigmoid) and as served.</p><table><tr><th>model</th>"
            f"<th>method</th><th>ECE before</th><th>ECE served</th></tr>{rows}</table>"
            + _image(figure, "reliability diagram"))


def _slices(models: Sequence[dict[str, Any]]) -> str:
    first = models[0]["slices"]
    if not first:
        return "<h2>Slices</h2><p>The dataset has no metadata or categorical column to slice by.</p>"
    names = "".join(f"<th>{_esc(m['name'])}: MCC [95%]</th>" for m in models)
    rows = []
    for i, piece in enumerate(first):
        cells = "".join(f"<td class=num>{_num(m['slices'][i]['mcc'])}{_ci(m['slices'][i]['mcc_ci95'])}</td>"
                        for m in models)
        flag = ' class="small" title="few photos or few of one class: do not read closely"' if piece["small"] else ""
        rows.append(
            f"<tr{flag}><td>{_esc(piece['column'])}</td><td>{_esc(piece['value'])}</td>"
            f"<td class=num>{piece['n']}</td><td class=num>{piece['positives']}</td>{cells}"
            f"<td class=num>{_num(piece['missed_roadwork'], 2)}</td>"
            f"<td class=num>{_num(piece['false_alarms'], 2)}</td><td>{'small' if piece['small'] else ''}</td></tr>"
        )
    return ("<h2>Slices</h2><p>Orange rows are small (under 30 photos or under 5 of a class): their intervals are "
            f"wide. Missed roadwork and false alarms are for {_esc(models[0]['name'])}.</p>"
            f"<table><tr><th>column</th><th>value</th><th>n</th><th>roadwork</th>{names}<th>missed roadwork</th>"
            f"<th>false alarms</th><th></th></tr>{''.join(rows)}</table>")


def _gallery(title: str, entries: Sequence[dict[str, Any]], samples: dict[str, Sample],
             maps: Mapping[str, Tensor]) -> str:
    if not entries:
        return f"<h3>{_esc(title)}</h3><p>None.</p>"
    cards = []
    for entry in entries:
        sample = samples[entry["file_name"]]
        uri = thumbnail(sample, maps.get(sample.file_name))
        picture = f'<img alt="{_esc(entry["file_name"])}" src="{uri}">' if uri else "<p>(cannot be decoded)</p>"
        facts = "".join(f"<br><b>{_esc(k)}</b>: {_esc(v)}" for k, v in _metadata(sample).items())
        cards.append(f'<div class="card">{picture}<b>{_esc(entry["file_name"])}</b><br>'
                     f'P(roadwork) = {entry["probability"]:.3f}{facts}</div>')
    return f'<h3>{_esc(title)}</h3><div class="gallery">{"".join(cards)}</div>'


def _segmentation(models: Sequence[dict[str, Any]]) -> str:
    rows = "".join(f"<tr><td>{_esc(m['name'])}</td><td class=num>{s['photos']}</td><td class=num>{s['iou']:.3f}</td>"
                   f"<td class=num>{_num(s['mean_iou_roadwork_photos'])}</td></tr>"
                   for m in models if (s := m.get("segmentation")))
    if not rows:
        return ""
    return ("<h2>Where the model saw roadwork</h2><p>Its segmentation branch against the annotated work-zone masks "
            "(probability &gt; 0.5; the galleries below tint it red).</p><table><tr><th>model</th><th>photos</th>"
            f"<th>IoU, all pixels</th><th>mean IoU, roadwork photos</th></tr>{rows}</table>")


def write_report(path: str | Path, report: dict[str, Any], figures: dict[str, Any], samples: Sequence[Sample],
                 maps: Mapping[str, Mapping[str, Tensor]] | None = None) -> None:
    """``maps``: per model name, per file name, its segmentation branch's map (tinted over the gallery)."""
    models = [report, *report.get("compared", [])]
    maps = maps or {}
    by_name = {s.file_name: s for s in samples}
    warnings = "".join(f'<p class="warn">{_esc(w)}</p>' for w in report["warnings"])
    headline = "".join(f'<div class="headline">{_esc(m["name"])}: MCC {m["mcc"]:.3f}{_ci(m["ci95"]["mcc"])}</div>'
                       for m in models)
    confusions = "".join(
        _image(png, f"confusion matrix of {m['name']}") for m, png in zip(models, figures["confusion"])
    )
    galleries = "".join(
        f"<h2>Worst mistakes of {_esc(m['name'])}</h2>"
        + _gallery("False positives (no roadwork, highest P(roadwork))", m["worst"]["false_positives"], by_name,
                   maps.get(m["name"], {}))
        + _gallery("False negatives (roadwork, lowest P(roadwork))", m["worst"]["false_negatives"], by_name,
                   maps.get(m["name"], {}))
        for m in models)
    bootstrap, tta = report["bootstrap"], report["tta"]
    bundles = ", ".join(f"<code>{_esc(m['bundle'])}</code>" for m in models)
    augmentation = (
        "none" if tta["mode"] == "none" else f"{_esc(tta['mode'])} over {tta['augmentations']} copies per photo"
    )
    if tta["mode"] == "foods":
        augmentation += f" (closest {tta['keep']:.0%} kept, temperature {tta['temperature']:g})"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>roadwork evaluation</title><style>{STYLE}</style></head>
<body><h1>roadwork evaluation</h1>
<p>Data: <code>{_esc(report['data'])}</code>, {report['n']} photos scored ({report['undecodable']} could not be
decoded); inputs: {_esc(report['inputs'])}; test-time augmentation: {augmentation}.<br>Bundles: {bundles}</p>
{warnings}{headline}
<p>Intervals: {bootstrap['resamples']} bootstrap resamples (seed {bootstrap['seed']}) of {bootstrap['groups']}
groups ({_esc(bootstrap['grouped_by'])}); decisions at p &gt; 0.5, as the validator rounds.</p>
<h2>Metrics</h2>{_headline(models)}{_comparisons(report.get('comparisons', []))}{_reward(models)}
<h2>Confusion and curves</h2>{confusions}{_image(figures['curves'], 'ROC, PR and threshold-MCC curves')}
{_calibration(models, figures['reliability'])}{_slices(models)}{_segmentation(models)}{galleries}
<p>Every number here is in <code>metrics.json</code>; per-photo probabilities are in <code>predictions.csv</code>.</p>
</body></html>
"""
    atomic_write_text(path, page)
