"""The cascade kind: the band fitted on labelled photos, the slow tier asked only inside it, the same
answers on every path, a late slow tier replaced by the fast answer, and tiers reported."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from roadwork.config import load_config
from roadwork.data.sources import load_samples
from roadwork.errors import RoadworkError
from roadwork.serve.bundle import BundleError
from roadwork.serve.cascade import Band
from roadwork.serve.scorer import load_scorer
from roadwork.train.run import train
from roadwork.tune.cascade import build_cascade, fit_band

from conftest import orange_block_folder


def test_the_band_sends_on_only_what_the_share_allows_and_only_where_it_pays():
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    fast = np.array([0.1, 0.2, 0.55, 0.45, 0.9, 0.8, 0.52, 0.48])   # four unsure photos, all four wrong
    slow = np.array([0.1, 0.2, 0.1, 0.9, 0.9, 0.8, 0.2, 0.9])       # the slow tier gets them right
    band = fit_band(fast, slow, labels, share=0.5)
    assert band.routes(fast).tolist() == [False, False, True, True, False, False, True, True]
    narrow = fit_band(fast, slow, labels, share=0.25)   # two photos at most: the two nearest 0.5
    assert narrow.routes(fast).sum() == 2 and narrow.routes(fast)[[6, 7]].all()
    assert fit_band(fast, slow, labels, share=0.0) == Band(0.0)
    assert fit_band(fast, fast, labels, share=1.0) == Band(0.0)   # a slow tier that agrees is not worth asking


@pytest.fixture(scope="module")
def tiers(tmp_path_factory):
    base = tmp_path_factory.mktemp("cascade")
    data = orange_block_folder(base / "train", 24, seed=7)
    held = orange_block_folder(base / "held", 40, seed=8)
    common = ["validation.groups=rows", "validation.folds=2", "validation.serve=folds", "model.type=probe",
              "backbone_training.mode=frozen"]
    for name, views in (("fast", "global"), ("slow", "auto")):
        train(str(data), base / name, load_config(None, [*common, f"data.views={views}"]), cache_dir=base / "cache",
              progress=False)
    return {"base": base, "held": held, "fast": base / "fast" / "bundle", "slow": base / "slow" / "bundle"}


def test_a_cascade_asks_the_slow_tier_inside_its_band_only_and_answers_alike_everywhere(tiers, tmp_path):
    from roadwork.evaluate.run import evaluate
    from roadwork.serve.server import create_app

    metrics = build_cascade(tiers["fast"], tiers["slow"], str(tiers["held"]), tmp_path / "c", share=0.4,
                            cache_dir=tiers["base"] / "cache")
    assert metrics["routed_share_all"] <= 0.4 and metrics["photos"] == 40
    assert {"mcc", "ci95"} <= set(metrics["cascade"]) and "mcc" in metrics["fast"] and "mcc" in metrics["slow"]
    cascade = load_scorer(tmp_path / "c")
    samples = load_samples(str(tiers["held"]))
    margins, good, _ = cascade.sample_margins(samples, tiers["base"] / "cache")
    fast_margins, _, _ = cascade.fast.sample_margins(samples, tiers["base"] / "cache")
    routed = cascade.band.routes(cascade.fast.calibration(fast_margins).numpy())
    assert cascade.last_tiers() == ["slow" if r else "fast" for r in routed]
    served = [p.probability for p in cascade.predict_images([s.path for s in samples])]
    np.testing.assert_allclose(cascade.calibration(margins).numpy(), served, atol=2e-3)   # cache holds float16
    assert cascade.answers()["fast"] + cascade.answers().get("slow", 0) == 40

    report = evaluate(tmp_path / "c", str(tiers["held"]), tmp_path / "report", cache_dir=tiers["base"] / "cache",
                      resamples=50)
    assert sum(t["n"] for t in report["tiers"].values()) == 40 and set(report["tiers"]) <= {"fast", "slow"}
    with TestClient(create_app(cascade)) as client:
        answer = client.post("/predict", content=samples[0].read_bytes(), headers={"content-type": "image/jpeg"})
        assert answer.status_code == 200 and answer.json()["probability"] == pytest.approx(served[0], abs=1e-6)
        assert "roadwork_tier_answers" in client.get("/metrics").text


def test_a_late_slow_tier_leaves_the_fast_answer_and_is_counted(tiers, tmp_path):
    build_cascade(tiers["fast"], tiers["slow"], str(tiers["held"]), tmp_path / "c", share=1.0,
                  cache_dir=tiers["base"] / "cache")
    cascade = load_scorer(tmp_path / "c")
    cascade.band, cascade.slow_budget_ms = Band(0.51), 50.0   # every photo asked, 50 ms allowed
    slow_answer = cascade.slow.predict_images

    def sleepy(images, names=None):
        time.sleep(0.5)
        return slow_answer(images, names)

    cascade.slow.predict_images = sleepy
    image = load_samples(str(tiers["held"]))[0].read_bytes()
    (late,) = cascade.predict_images([image])
    (fast,) = cascade.fast.predict_images([image])
    logit = np.log(fast.probability) - np.log1p(-fast.probability)
    assert late.probability == pytest.approx(float(cascade.calibration(torch.tensor([logit]))), abs=1e-6)
    assert cascade.answers() == {"slow_late": 1}


def test_cascade_inputs_and_a_tampered_manifest_are_refused(tiers, tmp_path):
    with pytest.raises(RoadworkError, match="--share .* or --budget-ms"):
        build_cascade(tiers["fast"], tiers["slow"], str(tiers["held"]), tmp_path / "x")
    build_cascade(tiers["fast"], tiers["slow"], str(tiers["held"]), tmp_path / "c", share=0.2,
                  cache_dir=tiers["base"] / "cache")
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    manifest["band"]["half_width"] = 0.5
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="modified"):
        load_scorer(tmp_path / "c")


def test_a_probe_student_distils_a_cascade(tiers, tmp_path):
    from roadwork.tune.distill import distill

    build_cascade(tiers["fast"], tiers["slow"], str(tiers["held"]), tmp_path / "c", share=0.5,
                  cache_dir=tiers["base"] / "cache")
    config = load_config(None, ["validation.groups=rows", "validation.folds=2", "validation.serve=folds",
                                "model.type=probe", "backbone_training.mode=frozen"])
    metrics = distill(tmp_path / "c", str(tiers["held"]), tmp_path / "student", config,
                      cache_dir=tiers["base"] / "cache")
    assert metrics["distillation"]["teacher"] == str(tmp_path / "c")
    assert metrics["distillation"]["teacher_trained_on_share"] == 0.0   # neither tier saw these photos
    assert load_scorer(tmp_path / "student" / "bundle").bundle.manifest["kind"] == "fold_ensemble"
