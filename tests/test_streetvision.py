"""The StreetVision miner adapter: the network's detector shape, always a float in [0, 1]."""

from __future__ import annotations

import base64
import io
import math
from types import SimpleNamespace

import pytest
from PIL import Image

from roadwork.config import ConfigError
from roadwork.data.sources import load_samples
from roadwork.serve.predictor import Prediction, Predictor
from roadwork.serve.streetvision import RoadworkBundleDetector, answer_challenge


@pytest.fixture(scope="module")
def detector(probe_bundle, tmp_path_factory):
    config = tmp_path_factory.mktemp("miner") / "roadwork_bundle.yaml"
    config.write_text(f"bundle: {probe_bundle['bundle']}\nfallback: 0.25\n")
    return RoadworkBundleDetector(config_name=str(config))


def test_detector_answers_like_the_predictor(detector, probe_bundle):
    sample = load_samples(str(probe_bundle["data"]))[1]
    image = Image.open(io.BytesIO(sample.read_bytes()))
    (expected,) = Predictor.load(probe_bundle["bundle"]).predict_images([sample.read_bytes()])
    assert detector(image) == pytest.approx(expected.probability, abs=1e-6)
    synapse = answer_challenge(detector, SimpleNamespace(image=base64.b64encode(sample.read_bytes()).decode()))
    assert synapse.prediction == pytest.approx(expected.probability, abs=1e-6)


def test_unscorable_requests_get_the_fallback_never_nan(detector, monkeypatch):
    assert detector(Image.new("RGB", (1, 1))) == 0.25   # too small to classify
    assert answer_challenge(detector, SimpleNamespace(image="***")).prediction == 0.25
    monkeypatch.setattr(detector.predictor, "predict_images", lambda *a, **k: [Prediction("x", math.nan)])
    assert detector(Image.new("RGB", (64, 64))) == 0.25
    monkeypatch.setattr(detector.predictor, "predict_images", lambda *a, **k: [Prediction("x", 1.5)])
    assert detector(Image.new("RGB", (64, 64))) == 1.0

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert")

    monkeypatch.setattr(detector.predictor, "predict_images", broken)
    assert detector(Image.new("RGB", (64, 64))) == 0.25


def test_detector_configuration_is_validated(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("fallback: 2\n")
    with pytest.raises(ConfigError, match="bundle") as error:
        RoadworkBundleDetector(config_name=str(config))
    assert "fallback" in str(error.value)


def test_detector_yaml_turns_on_tta(probe_bundle, tmp_path):
    from roadwork.config import TtaConfig

    config = tmp_path / "foods.yaml"
    config.write_text(f"bundle: {probe_bundle['bundle']}\ntta: {{mode: foods, augmentations: 4}}\n")
    detector = RoadworkBundleDetector(config_name=str(config))
    assert detector.predictor.tta == TtaConfig(mode="foods", augmentations=4)
    sample = load_samples(str(probe_bundle["data"]))[2]
    expected = Predictor.load(probe_bundle["bundle"])
    expected.use_tta(detector.predictor.tta)
    (answer,) = expected.predict_images([sample.read_bytes()])
    assert detector(Image.open(io.BytesIO(sample.read_bytes()))) == pytest.approx(answer.probability, abs=1e-6)
    config.write_text(f"bundle: {probe_bundle['bundle']}\ntta: {{mode: foods, keep: 0}}\n")
    with pytest.raises(ConfigError, match="tta.keep"):
        RoadworkBundleDetector(config_name=str(config))
