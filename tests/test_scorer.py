"""Bundle kinds: one registry loads every kind by the ``kind`` its manifest names, every kind serves the
``Scorer`` contract, and folders written by the release before the registry still load and score alike."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from roadwork.data.sources import load_samples
from roadwork.serve.bundle import BundleError
from roadwork.serve.calibration import Calibration
from roadwork.serve.ensemble import Combiner, EnsemblePredictor, save_ensemble
from roadwork.serve.predictor import Predictor
from roadwork.serve.scorer import KINDS, Scorer, load_scorer, read_kind
from roadwork.tune.active import rank_pool

from conftest import write_folder

RELEASE = Path(__file__).parent / "fixtures" / "release-0.1.0"   # written by roadwork 0.1.0 (ensemble.json era)


@pytest.fixture(scope="module")
def noise_photos(tmp_path_factory):
    """The photos the release fixture's expected scores were computed on (see its expected.json)."""
    folder = write_folder(
        tmp_path_factory.mktemp("noise"), [{"file_name": f"{i}.jpg", "label": i % 2} for i in range(6)]
    )
    return load_samples(str(folder))


def test_folders_written_by_the_previous_release_load_and_score_as_they_did(noise_photos):
    expected = json.loads((RELEASE / "expected.json").read_text())["scores"]
    assert not (RELEASE / "ensemble" / "manifest.json").exists()   # the old layout: ensemble.json
    for name, folder, kind in (("head", RELEASE / "ensemble" / "members" / "probe", Predictor),
                               ("ensemble", RELEASE / "ensemble", EnsemblePredictor)):
        scorer = load_scorer(folder)
        assert type(scorer) is kind and isinstance(scorer, Scorer)
        margins, good, failures = scorer.sample_margins(noise_photos, use_cache=False)
        assert good == list(range(6)) and not failures
        np.testing.assert_allclose(margins.numpy(), expected[name]["margins"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(scorer.calibration(margins).numpy(), expected[name]["probabilities"], atol=1e-6)
    assert read_kind(RELEASE / "ensemble")[0] == "ensemble"


def test_every_kind_is_a_registered_scorer_and_new_ensembles_name_their_kind(probe_bundle, tmp_path):
    for kind, target in KINDS.items():
        module, _, name = target.partition(":")
        cls = getattr(__import__(module, fromlist=[name]), name)
        assert issubclass(cls, Scorer), kind
    ensemble = save_ensemble(tmp_path / "e", {"a": probe_bundle["bundle"]}, Combiner("mean", (1.0,)),
                             Calibration(0.0, 1.0), {})
    manifest = json.loads((ensemble / "manifest.json").read_text())
    assert (manifest["kind"], manifest["format_version"]) == ("ensemble", 1)
    assert not (ensemble / "ensemble.json").exists()
    assert read_kind(probe_bundle["bundle"])[0] in ("head", "fold_ensemble")


def test_unknown_kinds_and_folders_that_are_no_bundle_get_one_clear_error(probe_bundle, tmp_path):
    with pytest.raises(BundleError, match="not a bundle"):
        load_scorer(tmp_path)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "manifest.json").write_text(json.dumps({"kind": "cascade-from-the-future", "format_version": 9}))
    with pytest.raises(BundleError, match="unknown bundle kind 'cascade-from-the-future'.*head"):
        load_scorer(odd)
    (odd / "manifest.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="JSON object"):
        load_scorer(odd)
    ensemble = save_ensemble(tmp_path / "new", {"a": probe_bundle["bundle"]}, Combiner("mean", (1.0,)),
                             Calibration(0.0, 1.0), {})
    with pytest.raises(BundleError, match="kind 'ensemble', not a trained head.*load_scorer"):
        Predictor.load(ensemble)
    shutil.copytree(RELEASE / "ensemble", tmp_path / "ensemble")
    newer = json.loads((tmp_path / "ensemble" / "ensemble.json").read_text())
    newer["format_version"] = 2
    (tmp_path / "ensemble" / "ensemble.json").write_text(json.dumps(newer))
    with pytest.raises(BundleError, match="format 2 is not supported"):
        load_scorer(tmp_path / "ensemble")


def test_active_learning_reads_an_ensemble_through_the_scorer_contract(probe_bundle, tmp_path):
    """An ensemble's members (here the two folds of each of two copies of one bundle) disagree like a
    fold bundle's, so active learning ranks the pool by the same criteria, without a refusal."""
    ensemble = save_ensemble(tmp_path / "e", {"a": probe_bundle["bundle"], "b": probe_bundle["bundle"]},
                             Combiner("mean", (0.5, 0.5)), Calibration(0.0, 1.0), {})
    pool = load_samples(str(probe_bundle["data"]), require_labels=False)[:10]
    single = load_scorer(probe_bundle["bundle"]).member_scores(pool, cache_dir=probe_bundle["cache"])
    scores = load_scorer(ensemble).member_scores(pool, cache_dir=probe_bundle["cache"])
    assert scores.good == single.good == list(range(10))
    folds = single.probabilities.shape[1]
    assert scores.probabilities.shape == (10, 2 * folds)
    assert torch.allclose(scores.probabilities, single.probabilities.repeat(1, 2))
    assert torch.equal(scores.embeddings, single.embeddings)
    picks, failures = rank_pool(load_scorer(ensemble), pool, 4, cache_dir=probe_bundle["cache"])
    alone, _ = rank_pool(load_scorer(probe_bundle["bundle"]), pool, 4, cache_dir=probe_bundle["cache"])
    assert [p.index for p in picks] == [p.index for p in alone] and not failures
