"""Adapter for the NATIX StreetVision miner: a bundle behind the network's detector interface.

The network's miner builds a detector from its registry as ``Detector(model_name=, config_name=,
device=)``, calls ``load_model()``, then answers each challenge (a base64 image in ``synapse.image``)
with ``synapse.prediction = detector(PIL image)``, a float in [0, 1]. ``RoadworkBundleDetector`` has
that shape, configured by a YAML naming the bundle; it never raises, never returns NaN or a value
outside [0, 1]: a request it cannot score is logged and answered with the configured fallback, because
a late or missing answer costs more than a neutral one. See the README for plugging it into a miner.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from PIL import Image

from roadwork.config import detector_config
from roadwork.data.decode import decode_base64
from roadwork.serve.scorer import Scorer, load_scorer

log = logging.getLogger(__name__)


class RoadworkBundleDetector:
    def __init__(self, model_name: str = "ROADWORK_BUNDLE", config_name: str = "roadwork_bundle.yaml",
                 device: str | None = None) -> None:
        self.model_name = model_name
        self.config = detector_config(config_name)
        self.device = device or self.config.device
        self.predictor: Scorer | None = None
        self.load_model()

    def load_model(self) -> None:
        self.predictor = load_scorer(self.config.bundle, self.device)
        self.predictor.use_tta(self.config.tta)
        self.predictor.warm_up()

    def __call__(self, image: Image.Image | bytes) -> float:
        try:
            if self.predictor is None:
                self.load_model()
            (result,) = self.predictor.predict_images([image], names=["challenge"])  # type: ignore[union-attr]
            if result.probability is None:
                log.warning("%s: answering %.2f: %s", self.model_name, self.config.fallback, result.error)
                return self.config.fallback
            probability = float(result.probability)
        except Exception:   # a miner must answer: a bug here becomes the fallback, logged
            log.exception("%s: answering %.2f after an internal error", self.model_name, self.config.fallback)
            return self.config.fallback
        if not math.isfinite(probability):
            log.warning("%s: non-finite probability; answering %.2f", self.model_name, self.config.fallback)
            return self.config.fallback
        return min(1.0, max(0.0, probability))


def answer_challenge(detector: RoadworkBundleDetector, synapse: Any) -> Any:
    """Fill ``synapse.prediction`` for a challenge whose ``synapse.image`` is a base64 image, as the
    network's miner does in its forward function; an undecodable payload gets the fallback."""
    try:
        image: Image.Image | bytes = decode_base64(synapse.image)
    except Exception as error:
        log.warning("%s: challenge image unreadable (%s); answering %.2f", detector.model_name, error,
                    detector.config.fallback)
        synapse.prediction = detector.config.fallback
        return synapse
    synapse.prediction = detector(image)
    return synapse
