"""Ensembles: combiners, out-of-fold combination scoring, the ensemble bundle through predict,
evaluate and the request path, and tampering."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from roadwork.cli import app
from roadwork.serve.bundle import BundleError
from roadwork.serve.ensemble import Combiner, EnsemblePredictor, logit
from roadwork.serve.scorer import load_scorer
from roadwork.tune.ensemble import combination_out_of_fold, fit_combiner

SPEC = """combine: auto
members:
  - name: first
    set: {model.type: probe, seed: 0}
  - name: second
    set: {model.type: probe, seed: 1, validation.cut_confidence: 0.95}
"""


def test_combiners():
    probs = np.array([[0.9, 0.6], [0.2, 0.4], [0.7, 0.3], [0.1, 0.8]])
    labels = np.array([1, 0, 1, 0])
    mean = fit_combiner("mean", probs, labels)
    assert mean.margins(probs) == pytest.approx(logit(probs.mean(axis=1)))
    weighted = fit_combiner("mcc_weighted", probs, labels)
    assert weighted.weights == pytest.approx((1.0, 0.0))   # the second member's MCC is negative
    stacked = fit_combiner("stacking", probs, labels)
    assert stacked.weights[0] > 0 > stacked.weights[1]
    assert Combiner.from_dict(stacked.to_dict(), 2) == stacked
    with pytest.raises(ValueError, match="sum to 1"):
        Combiner.from_dict({"method": "mean", "weights": [0.7, 0.7]}, 2)
    with pytest.raises(ValueError, match="finite weights"):
        Combiner.from_dict({"method": "stacking", "weights": [1.0]}, 2)


@pytest.mark.parametrize("method", ["mean", "mcc_weighted", "stacking"])
def test_a_combination_never_scores_photos_that_fitted_it(method):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    probs = np.clip(np.stack([0.5 + 0.3 * (labels - 0.5) + rng.normal(0, 0.2, 200),
                              0.5 + 0.1 * (labels - 0.5) + rng.normal(0, 0.2, 200)], 1), 0.01, 0.99)
    groups = np.arange(200) // 4
    served = combination_out_of_fold(method, probs, labels, groups, seed=0)
    flipped = labels.copy()
    flipped[:4] = 1 - flipped[:4]   # relabel group 0: only the other folds' fits may change
    again = combination_out_of_fold(method, probs, flipped, groups, seed=0)
    assert again[:4] == pytest.approx(served[:4])
    assert not np.allclose(again[4:], served[4:]) or method == "mean"


@pytest.fixture(scope="module")
def ensemble_run(probe_bundle, tiny_vit_folder, tmp_path_factory):
    """Two members on different backbone families: the embedded EfficientNet and a tiny ViT."""
    base = tmp_path_factory.mktemp("ensemble")
    spec = base / "spec.yaml"
    spec.write_text(SPEC.replace("seed: 1,", f"seed: 1, data.backbone: 'hf:{tiny_vit_folder}', data.input_size: 32,"))
    result = CliRunner().invoke(app, ["ensemble", "--config", str(spec), "--data", str(probe_bundle["data"]),
                                      "--out", str(base / "run"), "--set", "validation.groups=rows",
                                      "--set", "validation.folds=2", "--set", "backbone_training.mode=frozen",
                                      "--cache-dir", str(probe_bundle["cache"]), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return {"run": base / "run", "output": result.output, **probe_bundle}


def test_ensemble_metrics_compare_every_combination_with_the_best_member(ensemble_run):
    metrics = json.loads((ensemble_run["run"] / "metrics.json").read_text())
    assert set(metrics["members"]) == {"first", "second"}
    assert set(metrics["combinations"]) == {"mean", "mcc_weighted", "stacking"}
    best = max(metrics["members"], key=lambda m: metrics["members"][m]["mcc"])
    assert metrics["best_member"] == best
    chosen = metrics["combine"]
    assert metrics["combinations"][chosen]["mcc"] == max(c["mcc"] for c in metrics["combinations"].values())
    interval = metrics["combinations"][chosen]["minus_best_member"]["ci95"]
    assert metrics["recommended"] == (interval[0] > 0)
    assert "served:" in ensemble_run["output"]


def test_the_ensemble_bundle_predicts_evaluates_and_answers_requests(ensemble_run, tmp_path):
    bundle = ensemble_run["run"] / "bundle"
    predictor = load_scorer(bundle)
    assert isinstance(predictor, EnsemblePredictor) and predictor.describe()["kind"] == "ensemble"
    assert len(predictor.describe()["backbone"]) == 2   # each member runs its own backbone family
    photos = sorted((ensemble_run["data"] / "img").glob("*.jpg"))[:6]
    from roadwork.data.sources import load_samples

    samples = [s for s in load_samples(str(ensemble_run["data"])) if s.path in photos]
    batch, _ = predictor.predict_samples(samples, cache_dir=ensemble_run["cache"])
    request = [r.probability for r in predictor.predict_images([s.path for s in samples])]
    assert np.allclose(batch, request, atol=1e-5)
    members = [m.predict_samples(samples, cache_dir=ensemble_run["cache"])[0] for m in predictor.members]
    combined = predictor.calibration(torch.from_numpy(predictor.combiner.margins(np.array(members).T))).numpy()
    assert np.allclose(batch, combined, atol=1e-6)
    result = CliRunner().invoke(app, ["evaluate", "--bundle", str(bundle), "--bundle",
                                      str(ensemble_run["run"] / "members" / "first" / "bundle"), "--data",
                                      str(ensemble_run["data"]), "--out", str(tmp_path / "r"), "--cache-dir",
                                      str(ensemble_run["cache"]), "--device", "cpu", "--resamples", "200"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert report["seen_in_training"] == 24   # the ensemble knows its members' training photos
    assert report["comparisons"][0]["b"] == "first"


def test_an_ensemble_scores_each_member_over_test_time_copies(ensemble_run):
    from roadwork.config import TtaConfig
    from roadwork.data.sources import load_samples

    predictor = load_scorer(ensemble_run["run"] / "bundle")
    config = TtaConfig(mode="foods", augmentations=4)
    predictor.use_tta(config)
    assert all(member.tta == config for member in predictor.members)
    assert predictor.describe()["tta"]["mode"] == "foods"
    samples = load_samples(str(ensemble_run["data"]))[:4]
    batch, _ = predictor.predict_samples(samples, cache_dir=ensemble_run["cache"])
    request = [r.probability for r in predictor.predict_images([s.path for s in samples])]
    members = [m.predict_samples(samples, cache_dir=ensemble_run["cache"])[0] for m in predictor.members]
    combined = predictor.calibration(torch.from_numpy(predictor.combiner.margins(np.array(members).T))).numpy()
    assert np.allclose(batch, combined, atol=1e-6) and np.allclose(batch, request, atol=1e-5)


def test_a_tampered_ensemble_is_refused(ensemble_run, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(ensemble_run["run"] / "bundle", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["kind"] == "ensemble" and manifest["format_version"] == 1
    manifest["combiner"]["weights"] = [1.0, 0.0]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="modified"):
        EnsemblePredictor(copy)
    shutil.rmtree(copy)
    shutil.copytree(ensemble_run["run"] / "bundle", copy)
    member = json.loads((copy / "members" / "first" / "manifest.json").read_text())
    member["calibration"]["temperature"] = 3.0
    (copy / "members" / "first" / "manifest.json").write_text(json.dumps(member))
    with pytest.raises(BundleError, match="does not match"):
        EnsemblePredictor(copy)


def test_a_member_may_not_take_a_combination_name(tmp_path, probe_bundle):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("name: second", "name: stacking"))
    result = CliRunner().invoke(app, ["ensemble", "--config", str(spec), "--data", str(probe_bundle["data"]),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "must differ from the combinations" in result.output


def test_a_bad_member_setting_fails_before_any_training(tmp_path, probe_bundle):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("seed: 1", "seed: 1, model.dropout: 2.0"))
    result = CliRunner().invoke(app, ["ensemble", "--config", str(spec), "--data", str(probe_bundle["data"]),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "member second" in result.output and "model.dropout" in result.output
    assert not (tmp_path / "run" / "members").exists()
