"""Test-time augmentation: the fixed transforms, the training-feature density, the FOODS combination,
and TTA through the bundle on the cached, uncached and request paths and the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.covariance import LedoitWolf
from typer.testing import CliRunner

from roadwork.cli import app
from roadwork.config import ConfigError, TtaConfig, from_options
from roadwork.data.augment import TTA_TRANSFORMS, tta_transforms
from roadwork.data.sources import load_samples
from roadwork.serve.bundle import BundleError, load_bundle, save_bundle
from roadwork.serve.calibration import Calibration
from roadwork.serve.predictor import Predictor
from roadwork.serve.tta import FeatureDensity, combine

FOODS = TtaConfig(mode="foods", augmentations=6)


def _exact_distances(train: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Mahalanobis distances under scikit-learn's own Ledoit-Wolf covariance (full matrix)."""
    model = LedoitWolf().fit(train)
    centred = points - model.location_
    return np.sqrt(np.einsum("ij,jk,ik->i", centred, np.linalg.inv(model.covariance_), centred))


@pytest.mark.parametrize(("n", "dim"), [(400, 12), (30, 80)], ids=["more-rows-than-dims", "fewer-rows-than-dims"])
def test_density_matches_the_full_ledoit_wolf_mahalanobis_distance(n, dim):
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(dim, dim)) * np.linspace(3.0, 0.1, dim)
    train = rng.normal(size=(n, dim)) @ mixing.T + 5.0
    points = rng.normal(size=(20, dim)) @ mixing.T * 1.5 + 5.0
    density = FeatureDensity.fit(train)
    np.testing.assert_allclose(density.distances(torch.from_numpy(points)).numpy(), _exact_distances(train, points),
                               rtol=2e-3)


def test_truncated_density_still_orders_points_by_distance():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(300, 64)) * np.linspace(4.0, 0.2, 64)
    near, far = train[:10] * 0.5, train[:10] * 4.0
    density = FeatureDensity.fit(train, max_rank=8)
    assert density.basis.shape == (8, 64)
    assert (density.distances(torch.from_numpy(far)) > density.distances(torch.from_numpy(near))).all()


def test_density_round_trips_and_rejects_bad_input():
    density = FeatureDensity.fit(np.random.default_rng(2).normal(size=(50, 6)))
    again = FeatureDensity.from_tensors(density.tensors("member0"), "member0")
    x = torch.randn(5, 6)
    assert torch.equal(again.distances(x), density.distances(x))
    broken = density.tensors("member0") | {"member0.variances": torch.ones(2)}
    with pytest.raises(ValueError, match="inconsistent"):
        FeatureDensity.from_tensors(broken, "member0")
    with pytest.raises(ValueError, match="finite"):
        FeatureDensity.fit(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="n >= 2"):
        FeatureDensity.fit(np.ones((1, 3)))


def test_plain_is_the_mean_and_foods_drops_the_farthest_copies():
    margins = torch.tensor([[1.0, -2.0], [3.0, 0.0], [-9.0, 4.0], [2.0, 2.0]])   # [copies, photos]
    distances = torch.tensor([[1.0, 5.0], [2.0, 1.0], [30.0, 2.0], [3.0, 3.0]])
    assert torch.allclose(combine(margins, None, TtaConfig(mode="plain")), margins.mean(0))
    # keep 3 of 4: the far copy (-9.0 for photo 0, -2.0 for photo 1) has no say at all.
    broad = TtaConfig(mode="foods", keep=0.75, temperature=1000.0)
    assert torch.allclose(combine(margins, distances, broad), torch.tensor([2.0, 2.0]), atol=1e-2)
    changed = margins.clone()
    changed[2, 0], changed[0, 1] = 100.0, -100.0
    assert torch.allclose(combine(changed, distances, broad), combine(margins, distances, broad))
    # a cold softmax follows the closest copy; a warm one sits between the kept margins.
    cold = combine(margins, distances, TtaConfig(mode="foods", keep=0.75, temperature=1e-3))
    assert torch.allclose(cold, torch.tensor([1.0, 0.0]))
    warm = combine(margins, distances, TtaConfig(mode="foods", keep=0.75))
    assert (warm > torch.tensor([1.0, 0.0])).all() and (warm < torch.tensor([3.0, 4.0])).all()
    with pytest.raises(ValueError, match="one distance per"):
        combine(margins, distances[:2], broad)


def test_transforms_are_fixed_distinct_and_keep_the_views_shape():
    views = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    transforms = tta_transforms(len(TTA_TRANSFORMS))
    assert transforms[0].identity and transforms[0](views) is views and transforms[0].variant is None
    outputs = [t(views) for t in transforms[1:]]
    for transform, out in zip(transforms[1:], outputs):
        assert out.shape == views.shape and out.dtype == torch.uint8, transform.name
        assert not torch.equal(out, views), transform.name
        assert torch.equal(transform(views), out), f"{transform.name} is not deterministic"
    assert torch.equal(transforms[1](outputs[0]), views)   # a flip of the flip
    assert len({t.variant for t in transforms}) == len(transforms)
    with pytest.raises(ValueError, match="choose 1 to 16"):
        tta_transforms(17)


def test_tta_options_are_validated_with_the_key_named():
    with pytest.raises(ConfigError, match="tta.keep"):
        from_options(TtaConfig, "tta", mode="foods", augmentations=16, keep=0.0, temperature=1.0)
    with pytest.raises(ConfigError, match="tta.augmentations"):
        from_options(TtaConfig, "tta", mode="plain", augmentations=1, keep=0.8, temperature=1.0)


def test_training_stores_each_heads_feature_density(probe_bundle):
    bundle = load_bundle(probe_bundle["bundle"])
    densities = bundle.densities()
    assert len(densities) == len(bundle.head.members) == 2
    stored = load_file(str(probe_bundle["bundle"] / "feature-density.safetensors"))
    assert set(stored) == {f"member{i}.{k}" for i in range(2) for k in ("mean", "basis", "variances", "residual")}
    for density in densities:
        # A probe's fusion features are its inputs standardised on the rows it learnt from: mean 0.
        assert density.mean.shape == (2 * bundle.backbone.feature_dim,)
        assert density.mean.abs().max() < 1e-4


@pytest.mark.parametrize("mode", ["plain", "foods"])
def test_tta_gives_one_answer_on_every_path_and_caches_its_copies(probe_bundle, tmp_path, mode):
    config = TtaConfig(mode=mode, augmentations=6)
    samples = load_samples(str(probe_bundle["data"]))[:6]
    plain = Predictor.load(probe_bundle["bundle"])
    predictor = Predictor.load(probe_bundle["bundle"])
    predictor.use_tta(config)
    # This easy data saturates the fitted calibration at 0 and 1; a broad one lets the margins show.
    predictor.bundle.calibration = Calibration(temperature=20.0)
    cache = tmp_path / "cache"
    cached, _ = predictor.predict_samples(samples, cache_dir=cache)
    assert len(list(cache.iterdir())) == 6   # the photo itself and 5 copies, each in its own namespace
    again, _ = predictor.predict_samples(samples, cache_dir=cache)
    uncached, _ = predictor.predict_samples(samples, use_cache=False)
    requested = [a.probability for a in predictor.predict_images([s.read_bytes() for s in samples])]
    np.testing.assert_allclose(again, cached, atol=1e-6)
    np.testing.assert_allclose(uncached, cached, atol=1e-5)
    np.testing.assert_allclose(requested, cached, atol=1e-5)
    without = plain.sample_margins(samples, cache_dir=cache)[0]
    assert not torch.allclose(predictor.sample_margins(samples, cache_dir=cache)[0], without, atol=1e-4)
    predictor.use_tta(TtaConfig())
    assert torch.allclose(predictor.sample_margins(samples, cache_dir=cache)[0], without, atol=1e-6)


def test_foods_margin_is_a_weighted_mean_of_the_kept_copies(probe_bundle, tmp_path):
    samples = load_samples(str(probe_bundle["data"]))[:4]
    predictor = Predictor.load(probe_bundle["bundle"])
    copies = []
    for transform in tta_transforms(FOODS.augmentations):
        features, _, _ = predictor.sample_features(samples, tmp_path, transform=transform)
        copies.append(predictor.margins_from_features(features, samples))
    copies = torch.stack(copies)   # [copies, photos, fold heads]
    predictor.use_tta(FOODS)
    assert predictor.describe()["tta"] == FOODS.model_dump()   # what /healthz reports
    margins, good, _ = predictor.sample_margins(samples, tmp_path)
    assert good == list(range(4)) and margins.shape == copies.shape[1:]
    assert (margins >= copies.min(0).values - 1e-5).all() and (margins <= copies.max(0).values + 1e-5).all()
    assert not torch.allclose(margins, copies.mean(0), atol=1e-4)   # not the plain mean


def test_foods_needs_a_bundle_with_feature_statistics(probe_bundle, tmp_path):
    from roadwork.config import TrainConfig

    bundle = load_bundle(probe_bundle["bundle"])
    old = save_bundle(tmp_path / "old", head=bundle.head, head_config=bundle.head_config, config=TrainConfig(),
                      vocab=bundle.vocab, backbone=bundle.backbone, calibration=bundle.calibration,
                      served=bundle.served, metrics={}, data_summary={}, fingerprints=[])
    assert json.loads((old / "manifest.json").read_text())["feature_density"] is None
    predictor = Predictor.load(old)
    with pytest.raises(BundleError, match="no training-feature statistics"):
        predictor.use_tta(FOODS)
    predictor.use_tta(TtaConfig(mode="plain"))   # plain needs none
    copy = tmp_path / "tampered"
    shutil.copytree(probe_bundle["bundle"], copy)
    (copy / "feature-density.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(BundleError, match="feature-density.safetensors does not match"):
        load_bundle(copy)


def test_cli_predict_and_evaluate_take_tta(probe_bundle, tmp_path):
    samples = load_samples(str(probe_bundle["data"]))[:3]
    runner = CliRunner()
    result = runner.invoke(app, ["predict", "--bundle", str(probe_bundle["bundle"]), "--cache-dir", str(tmp_path),
                                 "--tta", "foods", "--tta-augmentations", "6", *(str(s.path) for s in samples)])
    assert result.exit_code == 0, result.output
    printed = [json.loads(line)["probability"] for line in result.output.strip().splitlines()]
    predictor = Predictor.load(probe_bundle["bundle"])
    predictor.use_tta(FOODS)
    np.testing.assert_allclose(printed, predictor.predict_samples(samples, cache_dir=tmp_path)[0], atol=1e-5)
    bad = runner.invoke(app, ["predict", "--bundle", str(probe_bundle["bundle"]), "--tta", "foods",
                              "--tta-keep", "1.5", str(samples[0].path)])
    assert bad.exit_code == 2 and "tta.keep" in bad.output
    out = tmp_path / "report"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--bundle",
            str(probe_bundle["bundle"]),
            "--data",
            str(probe_bundle["data"]),
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path),
            "--resamples",
            "100",
            "--tta",
            "plain",
            "--tta-augmentations",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tta"]["mode"] == "plain" and metrics["tta"]["augmentations"] == 4
    assert metrics["scoring_seconds"] > 0
    assert "test-time augmentation: plain over 4 copies" in (out / "report.html").read_text()
