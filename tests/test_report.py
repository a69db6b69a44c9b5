"""`roadwork evaluate`: two bundles side by side, slices, metrics.json against predictions.csv, and
the HTML report rendered by headless Chromium."""

from __future__ import annotations

import csv
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, matthews_corrcoef
from typer.testing import CliRunner

from roadwork.cli import app
from roadwork.data.records import Sample
from roadwork.evaluate.slices import find_slices

from conftest import orange_block_folder

HOSTILE = '<script>alert("x")</script> & cones'
CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const out = document.createElement("pre");
  out.id = "roadwork-check";
  out.textContent = JSON.stringify({
    images: images.length,
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
    scripts: document.scripts.length,
    text: document.body.innerText,
  });
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str:
    """The browser the test setup installs (`make test` adds Debian's chromium when absent)."""
    for name in (os.environ.get("ROADWORK_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)   # type: ignore[return-value]
    pytest.fail("no Chromium found: `make test` installs Debian's chromium package, or set ROADWORK_CHROMIUM")


def render(page: Path, tmp_path: Path) -> dict:
    """Open the report in headless Chromium and read back what the browser saw."""
    probe = tmp_path / "rendered.html"
    probe.write_text(page.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    result = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
                             probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="roadwork-check">(.*?)</pre>', result.stdout, re.S)
    assert found, f"the page did not finish loading in Chromium: {result.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.fixture(scope="module")
def compared(probe_bundle, tmp_path_factory) -> dict:
    """Two bundles (the shared probe and a weaker one) evaluated on unseen photos with metadata."""
    from roadwork.config import load_config
    from roadwork.train.run import train

    base = tmp_path_factory.mktemp("report")
    weak = orange_block_folder(base / "weak-data", 12, seed=9)
    train(str(weak), base / "weak", load_config(None, ["validation.groups=rows", "validation.folds=2",
                                                       "model.type=probe", "backbone_training.mode=frozen"]),
          cache_dir=probe_bundle["cache"], progress=False)
    test = orange_block_folder(base / "test", 40, seed=11)
    with open(test / "metadata.csv") as handle:
        rows = list(csv.DictReader(handle))
    for i, row in enumerate(rows):
        row["source"] = HOSTILE if i % 2 else "phone"   # slice values are always on the page
        row["group"] = f"drive-{i // 4}"
    rows[3]["description"] = HOSTILE
    rows.append({**rows[0], "file_name": "img/broken.jpg", "description": ""})
    (test / "img" / "broken.jpg").write_bytes(b"not a jpeg")
    with open(test / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = base / "out"
    result = CliRunner().invoke(app, ["evaluate", "--bundle", str(probe_bundle["bundle"]), "--bundle",
                                      str(base / "weak" / "bundle"), "--data", str(test), "--out", str(out),
                                      "--cache-dir", str(probe_bundle["cache"]), "--device", "cpu",
                                      "--resamples", "400"])
    assert result.exit_code == 0, result.output
    return {"out": out, "output": result.output, "metrics": json.loads((out / "metrics.json").read_text())}


def test_metrics_json_matches_predictions_and_compares_the_bundles(compared):
    metrics = compared["metrics"]
    with open(compared["out"] / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["file_name", "label", "probability", "probability_weak"]
    broken = next(r for r in rows if r["file_name"] == "img/broken.jpg")
    assert broken["probability"] == "" and metrics["undecodable"] == 1 and "img/broken.jpg" in metrics["failures"]
    rows = [r for r in rows if r["probability"]]
    labels = np.array([int(r["label"]) for r in rows])
    for model, column in ((metrics, "probability"), (metrics["compared"][0], "probability_weak")):
        probs = np.array([float(r[column]) for r in rows])
        assert model["n"] == len(rows) == 40
        assert model["mcc"] == pytest.approx(matthews_corrcoef(labels, probs > 0.5), abs=1e-5)
        assert model["auprc"] == pytest.approx(average_precision_score(labels, probs), abs=1e-5)
        assert model["brier"] == pytest.approx(brier_score_loss(labels, probs), abs=1e-5)
        low, high = model["ci95"]["mcc"]
        assert low <= model["mcc"] <= high
    comparison = metrics["comparisons"][0]
    assert (comparison["a"], comparison["b"]) == (metrics["name"], "weak")
    assert comparison["mcc_difference"] == pytest.approx(metrics["compared"][0]["mcc"] - metrics["mcc"], abs=1e-3)
    low, high = comparison["ci95"]
    assert low <= comparison["mcc_difference"] <= high
    assert "(paired bootstrap)" in compared["output"]
    assert metrics["bootstrap"]["grouped_by"] == "column 'group'" and metrics["bootstrap"]["groups"] == 10
    assert metrics["reward"]["p05"] <= metrics["reward"]["mean"] <= metrics["reward"]["p95"]
    assert metrics["calibration"]["method"] == "temperature" and 0 <= metrics["calibration"]["ece"] <= 1
    slices = {(s["column"], s["value"]): s for s in metrics["slices"]}
    assert (
        slices[("weather", "rain")]["n"] + slices[("weather", "fog")]["n"] + slices[("weather", "(missing)")]["n"] == 40
    )
    assert slices[("source", "phone")]["n"] == 20 and slices[("source", "phone")]["small"]
    assert ("group", "drive-0") not in slices   # an id column, not a category
    fp = metrics["worst"]["false_positives"]
    assert all(p["probability"] > 0.5 for p in fp) and fp == sorted(fp, key=lambda p: -p["probability"])


def test_report_renders_in_headless_chromium(compared, tmp_path):
    metrics = compared["metrics"]
    seen = render(compared["out"] / "report.html", tmp_path)
    thumbnails = sum(len(m["worst"]["false_positives"]) + len(m["worst"]["false_negatives"])
                     for m in (metrics, *metrics["compared"]))
    assert seen["images"] == 2 + 1 + 1 + thumbnails   # two confusion matrices, the curves, reliability, gallery
    assert seen["broken"] == []
    assert f"MCC {metrics['mcc']:.3f}" in seen["text"]
    assert seen["scripts"] == 1   # only the check itself: the hostile column values stayed text
    assert HOSTILE in seen["text"]


def test_slices_find_categories_regions_and_missing_metadata():
    samples = [Sample(f"{i}.jpg", i % 2, latitude=(48.85 if i < 20 else -33.87) + i * 1e-3,
                      longitude=(2.35 if i < 20 else 151.2) + i * 1e-3, weather="rain" if i % 3 else None,
                      extra={"id": str(i), "source": "a" if i < 30 else "b"}) for i in range(40)]
    samples += [Sample(f"{i}.jpg", i % 2, weather="fog") for i in range(40, 44)]
    samples += [Sample(f"{i}.jpg", i % 2) for i in range(44, 48)]
    slices = {(s.column, s.value): s.rows for s in find_slices(samples)}
    regions = [rows for (column, _), rows in slices.items() if column == "gps region"]
    assert len(regions) == 5 and sum(map(len, regions)) == 40
    assert all(max(rows) < 20 or min(rows) >= 20 for rows in regions)   # no region spans Paris and Sydney
    assert len(slices[("gps metadata", "missing")]) == 8
    assert set(slices[("weather", "(missing)")]) == {i for i in range(40) if i % 3 == 0} | {44, 45, 46, 47}
    assert len(slices[("source", "a")]) == 30 and not any(column == "id" for column, _ in slices)
    assert ("weather metadata", "missing") not in slices   # the same rows as ("weather", "(missing)")
    assert list(slices[("metadata present", "none")]) == [44, 45, 46, 47]
    assert len(slices[("metadata present", "some fields")]) == 44 and ("metadata present", "all fields") not in slices
