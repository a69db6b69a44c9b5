"""The in-memory request path of the predictor: every input kind, bad inputs, concurrency, and the same
answer as `predict` and `evaluate`."""

from __future__ import annotations

import base64
import io
import os
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from roadwork.data.decode import decode_base64
from roadwork.data.sources import load_samples
from roadwork.serve.predictor import Predictor


@pytest.fixture(scope="module")
def served(probe_bundle):
    return probe_bundle


def test_every_input_kind_gives_the_probability_of_predict_and_evaluate(served):
    predictor = Predictor.load(served["bundle"])
    samples = load_samples(str(served["data"]))[:6]
    paths = [str(s.path) for s in samples]
    files = [s.read_bytes() for s in samples]
    uncached, _ = predictor.predict_samples(samples, use_cache=False)
    cached, _ = predictor.predict_samples(samples, cache_dir=served["cache"])
    pil = [Image.open(io.BytesIO(b)) for b in files]
    arrays = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in files]
    from_base64 = [decode_base64(base64.b64encode(b).decode()) for b in files]
    data_uris = ["data:image/jpeg;base64," + base64.b64encode(b).decode() for b in files]
    for inputs in (files, paths, pil, arrays, from_base64, data_uris):
        answers = predictor.predict_images(inputs)
        assert all(a.error is None for a in answers)
        np.testing.assert_allclose([a.probability for a in answers], uncached, atol=1e-6)
    # The cache stores float16 features: the same answer within their rounding.
    np.testing.assert_allclose(cached, uncached, atol=2e-3)
    assert np.std(uncached) > 0


def test_bad_inputs_fail_alone_with_a_clear_reason(served, tmp_path):
    predictor = Predictor.load(served["bundle"])
    good = load_samples(str(served["data"]))[1].read_bytes()
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    bad = {"empty": (b"", "empty image"), "text": (b"not an image at all", "not an image"),
           "truncated": (good[: len(good) // 3], "cannot decode"), "pipe": (str(pipe), "not a regular file"),
           "missing": (str(tmp_path / "nope.jpg"), "cannot read image"),
           "wrong array": (np.zeros((4, 4), dtype=np.float32), "uint8 [height, width, 3]"),
           "number": (42, "unsupported image input")}
    names = [*bad, "good"]
    answers = predictor.predict_images([value for value, _ in bad.values()] + [good], names=names)
    for answer, (name, (_, reason)) in zip(answers, bad.items()):
        assert answer.probability is None and reason in answer.error and answer.name == name
        assert not re.search("0x[0-9a-f]{6}", answer.error)   # no Python object addresses
    (alone,) = predictor.predict_images([good])
    assert answers[-1].error is None and answers[-1].probability == pytest.approx(alone.probability, abs=1e-6)


def test_concurrent_callers_get_the_answers_of_a_single_caller(served):
    predictor = Predictor.load(served["bundle"])
    files = [s.read_bytes() for s in load_samples(str(served["data"]))[:8]]
    alone = [a.probability for a in predictor.predict_images(files)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda b: predictor.predict_images([b])[0].probability, files * 3))
    np.testing.assert_allclose(together, alone * 3, atol=1e-6)
    assert len(predictor._backbones) == 1
