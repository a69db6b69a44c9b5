"""GPS-weighted sampling and the epoch sampler: distances, regions, brackets, draws, the report."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from roadwork.config import ConfigError, SamplingConfig, load_config
from roadwork.data.geo import EARTH_RADIUS_KM, TargetRegions, haversine_km, read_target_coordinates
from roadwork.data.records import DatasetError, Sample
from roadwork.train.sampling import EpochSampler, GpsSampling, bracket_weights, check_report


def law_of_cosines_km(lat1, lon1, lat2, lon2):
    """An independent reference: the spherical law of cosines (fine away from tiny distances)."""
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    c = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return EARTH_RADIUS_KM * math.acos(max(-1.0, min(1.0, c)))


def test_haversine_matches_an_independent_formula_and_known_distances():
    rng = np.random.default_rng(0)
    points = np.column_stack([rng.uniform(-89, 89, 200), rng.uniform(-180, 180, 200),
                              rng.uniform(-89, 89, 200), rng.uniform(-180, 180, 200)])
    ours = haversine_km(points[:, 0], points[:, 1], points[:, 2], points[:, 3])
    reference = [law_of_cosines_km(*row) for row in points]
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-3)
    assert haversine_km(0, 0, 0, 90) == pytest.approx(math.pi / 2 * EARTH_RADIUS_KM)
    assert haversine_km(0, 179.9, 0, -179.9) == pytest.approx(22.24, abs=0.01)  # across the date line
    assert haversine_km(52.52, 13.405, 48.8566, 2.3522) == pytest.approx(878, abs=3)  # Berlin - Paris


def around(lat, lon, n, km, rng):
    """n points scattered within about ``km`` of (lat, lon)."""
    dlat = rng.normal(0, km / 111.0, n)
    dlon = rng.normal(0, km / (111.0 * math.cos(math.radians(lat))), n)
    return np.column_stack([lat + dlat, (lon + dlon + 180) % 360 - 180])


def test_regions_are_found_on_the_sphere_including_across_the_date_line():
    rng = np.random.default_rng(1)
    truth = [(52.52, 13.40), (-33.87, 151.21), (-17.0, 179.95)]   # the last one straddles +-180
    targets = np.concatenate([around(lat, lon, 60, 5, rng) for lat, lon in truth])
    regions = TargetRegions.fit(targets, 3, seed=0)
    for lat, lon in truth:
        assert haversine_km(regions.centres[:, 0], regions.centres[:, 1], lat, lon).min() < 5
    assert sorted(regions.sizes) == [60, 60, 60]
    # More regions than distinct positions: as many as there are.
    assert len(TargetRegions.fit(np.array([[10.0, 10.0], [10.0, 10.0], [20.0, 20.0]]), 5).centres) == 2


def test_brackets_follow_the_plan_with_edges_and_null_gps():
    config = SamplingConfig(target="t.csv")
    distances = np.array([0.0, 49.9, 50.0, 199.9, 200.0, 499.0, 500.0, 5000.0, np.nan])
    assert bracket_weights(distances, config).tolist() == [5.0, 5.0, 2.5, 2.5, 1.0, 1.0, 0.3, 0.3, 1.0]
    custom = SamplingConfig(target="t.csv", brackets_km=[10], weights=[9, 0], null_gps_weight=0.5)
    assert bracket_weights(np.array([5.0, 10.0, np.nan]), custom).tolist() == [9.0, 0.0, 0.5]


@pytest.mark.parametrize("override, message", [
    ("sampling.weights=[1, 2]", "weights needs 4 values"),
    ("sampling.brackets_km=[100, 50]", "positive and increasing"),
    ("sampling.weights=[0, 0, 0, 0]", "not all zero"),
    ("trainer.devices=2", "needs strategy ddp"),
])
def test_bad_sampling_and_trainer_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_epoch_sampler_draws_by_weight_reproducibly_and_shards_the_epoch():
    weights = np.array([0.0, 1.0, 2.0, 7.0])
    epoch = [0]
    sampler = EpochSampler(4, weights=weights, samples_per_epoch=20_000, seed=3, epoch=lambda: epoch[0],
                           rank=0, world=1)
    counts = np.bincount(list(sampler), minlength=4) / 20_000
    np.testing.assert_allclose(counts, weights / weights.sum(), atol=0.015)
    first = list(sampler)
    assert first == list(sampler)                         # a function of (seed, epoch) only
    epoch[0] = 1
    assert first != list(sampler)                         # a new order every epoch
    shards = [list(EpochSampler(4, weights=weights, samples_per_epoch=11, seed=3, rank=r, world=2)) for r in (0, 1)]
    whole = EpochSampler(4, weights=weights, samples_per_epoch=11, seed=3).epoch_order().tolist()
    assert len(shards[0]) == len(shards[1]) == 6
    assert sorted(shards[0][:6] + shards[1][:5]) == sorted(whole)   # two processes cover the epoch once
    plain = EpochSampler(5, seed=0, samples_per_epoch=12)
    drawn = list(plain)
    assert sorted(drawn[:5]) == list(range(5)) and len(drawn) == 12   # permutations, not draws
    with pytest.raises(ValueError, match="weights"):
        EpochSampler(3, weights=np.array([1.0, np.nan, 1.0]))


def test_the_trainers_loader_draws_by_the_gps_weights():
    """The weights must reach the loader the head trains from, not only be computed."""
    from roadwork.features.metadata import MetadataVocab
    from roadwork.features.table import FeatureTable
    from roadwork.train.data import FeatureDataModule

    samples = [Sample(f"{i}.jpg", i % 2) for i in range(40)]
    table = FeatureTable.build(samples, [torch.full((1, 2), float(i)) for i in range(40)],
                               MetadataVocab.from_samples(samples), None)
    weights = np.zeros(40)
    weights[:4] = 1.0
    module = FeatureDataModule(table, table, batch_size=8, seed=0, weights=weights, samples_per_epoch=64)
    rows = torch.cat([batch.features[:, 0, 0] for batch in module.train_dataloader()])
    assert len(rows) == 64 and set(rows.long().tolist()) <= {0, 1, 2, 3}
    uniform = FeatureDataModule(table, table, batch_size=8, seed=0)
    assert sorted(torch.cat([b.features[:, 0, 0] for b in uniform.train_dataloader()]).long().tolist()) == list(
        range(40)
    )


def test_the_probe_weights_rows_like_the_sampler_would():
    """Zero weight on a row must equal leaving it out; a probe that ignored the weights would differ."""
    from roadwork.features.metadata import MetadataVocab
    from roadwork.features.table import FeatureTable
    from roadwork.train.probe import fit_probe

    rng = np.random.default_rng(0)
    samples = [Sample(f"{i}.jpg", int(i % 2)) for i in range(80)]
    features = [torch.tensor(rng.normal(s.label, 1.0, (1, 3)), dtype=torch.float32) for s in samples]
    flipped = [Sample(s.file_name, 1 - s.label) for s in samples[:20]] + samples[20:]
    vocab = MetadataVocab.from_samples(samples)
    groups = np.arange(80)
    weights = np.r_[np.zeros(20), np.ones(60)]
    weighted = fit_probe(FeatureTable.build(flipped, features, vocab, None), groups, 0, weights)
    without = fit_probe(FeatureTable.build(samples[20:], features[20:], vocab, None), groups[20:], 0)
    ignored = fit_probe(FeatureTable.build(flipped, features, vocab, None), groups, 0)
    # Not equal: the standardisation and the inner folds still see the zero-weight rows.
    near = (weighted.classifier.weight - without.classifier.weight).norm()
    far = (ignored.classifier.weight - without.classifier.weight).norm()
    assert near < 0.2 * far


def gps_samples(rng, near, far, none):
    """Training photos: ``near`` within ~10 km of Berlin, ``far`` around Madrid, ``none`` without GPS."""
    points = np.concatenate([around(52.52, 13.40, near, 10, rng), around(40.42, -3.70, far, 30, rng)])
    samples = [Sample(f"{i}.jpg", i % 2, latitude=float(a), longitude=float(b)) for i, (a, b) in enumerate(points)]
    return samples + [Sample(f"n{i}.jpg", i % 2) for i in range(none)]


def targets_file(path, rows):
    path.write_text("lat,lon\n" + "".join(f"{a},{b}\n" for a, b in rows) + "not,a number\n")
    return path


def test_report_meets_the_targets_when_enough_photos_are_near(tmp_path):
    rng = np.random.default_rng(2)
    config = SamplingConfig(target=str(targets_file(tmp_path / "t.csv", around(52.52, 13.40, 30, 3, rng))),
                            regions=1)
    gps = GpsSampling.build(gps_samples(rng, 40, 20, 20), config, seed=0)
    report = gps.report(config, batches=200, batch_size=32)
    assert report["targets_met"] and report["suggested_weights"] is None, report["missed"]
    assert report["with_gps"] == 60 and report["photos_within_50km"] == 40
    # Expected share within 50 km: 40 x 5.0 against 20 x 0.3 (Madrid is ~1870 km away).
    assert report["expected"]["within_50km"] == pytest.approx(200 / 206, abs=1e-9)
    assert report["sampled"]["within_50km"] == pytest.approx(200 / 206, abs=0.02)
    assert report["unweighted"]["within_50km"] == pytest.approx(40 / 60)
    assert report["draws_without_gps"] == pytest.approx(20 / 226, abs=0.02)
    check_report(report, config.model_copy(update={"strict": True}))   # nothing to complain about


def test_report_misses_the_targets_and_says_which_weights_would_meet_them(tmp_path, caplog):
    rng = np.random.default_rng(3)
    config = SamplingConfig(target=str(targets_file(tmp_path / "t.csv", around(52.52, 13.40, 30, 3, rng))),
                            regions=1)
    gps = GpsSampling.build(gps_samples(rng, 5, 95, 0), config, seed=0)
    report = gps.report(config, batches=100)
    assert not report["targets_met"] and any("within 50 km" in m for m in report["missed"])
    better = report["suggested_weights"]
    assert better is not None and better[0] > 5.0
    fixed = config.model_copy(update={"weights": better})
    assert GpsSampling(gps.regions, gps.distances_km, bracket_weights(gps.distances_km, fixed)).report(
        fixed, batches=300)["targets_met"]
    check_report(report, config)
    assert "would meet them" in caplog.text
    with pytest.raises(ConfigError, match="sampling.strict"):
        check_report(report, config.model_copy(update={"strict": True}))
    # No photo near the targets: no weights can help, and the report says so.
    hopeless = GpsSampling.build(gps_samples(rng, 0, 50, 0), config, seed=0).report(config, batches=10)
    assert hopeless["suggested_weights"] is None
    with pytest.raises(ConfigError, match="no bracket weights can: only 0 of 50"):
        check_report(hopeless, config.model_copy(update={"strict": True}))


def test_target_coordinates_from_csv_or_dataset(tmp_path, caplog):
    path = targets_file(tmp_path / "t.csv", [(1.0, 2.0), (91.0, 0.0)])
    assert read_target_coordinates(path).tolist() == [[1.0, 2.0]]
    assert "2 of 3 rows have no valid position" in caplog.text
    (tmp_path / "cols.csv").write_text("x,y\n1,2\n")
    with pytest.raises(DatasetError, match="needs a latitude and a longitude column"):
        read_target_coordinates(tmp_path / "cols.csv")
    (tmp_path / "empty.csv").write_text("latitude,longitude\nNaN,nan\n")
    with pytest.raises(DatasetError, match="no row has a valid latitude"):
        read_target_coordinates(tmp_path / "empty.csv")
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "metadata.csv").write_text("file_name,latitude,longitude\na.jpg,10.5,20.5\nb.jpg,,\n")
    for name in ("a.jpg", "b.jpg"):   # only the metadata is read
        (folder / name).write_bytes(b"")
    assert read_target_coordinates(folder).tolist() == [[10.5, 20.5]]


def test_gps_report_command_prints_writes_and_fails_when_strict(tmp_path):
    import json

    from typer.testing import CliRunner

    from roadwork.cli import app

    folder = tmp_path / "data"
    folder.mkdir()
    rows = "".join(f"{i}.jpg,{i % 2},{52.5 + i * 1e-3},13.4\n" for i in range(10)) + "far.jpg,0,40.4,-3.7\n"
    (folder / "metadata.csv").write_text("file_name,label,latitude,longitude\n" + rows)
    for i in [*range(10), "far"]:
        (folder / f"{i}.jpg").write_bytes(b"")
    targets = targets_file(tmp_path / "t.csv", [(52.5, 13.4)])
    runner = CliRunner()
    met = runner.invoke(app, ["gps-report", "--data", str(folder), "--target-gps", str(targets), "--set",
                              "sampling.regions=1", "--out", str(tmp_path / "r.json"), "--batches", "50"])
    assert met.exit_code == 0 and "targets met" in met.output
    assert json.loads((tmp_path / "r.json").read_text())["photos_within_50km"] == 10
    paris = targets_file(tmp_path / "p.csv", [(48.86, 2.35)])
    missed = runner.invoke(app, ["gps-report", "--data", str(folder), "--target-gps", str(paris), "--strict"])
    assert missed.exit_code == 2 and "no bracket weights can" in missed.output
    both = runner.invoke(app, ["gps-report", "--data", str(folder), "--target-gps", str(paris), "--target-data",
                               str(folder)])
    assert both.exit_code == 2 and "not both" in both.output
