"""The night specialist: dark photos (by measured brightness) get an enhanced view's features as
evidence, bright ones NULL; a run reads the stream and serves it alike on every path."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from roadwork.backbones.base import BackboneSpec
from roadwork.config import load_config
from roadwork.data.sources import load_samples
from roadwork.experts.night import NightSource, enhance, luminance
from roadwork.features.source import BackboneSource
from roadwork.serve.scorer import load_scorer
from roadwork.train.run import train

from conftest import orange_block_folder, write_folder


def test_dark_views_are_enhanced_into_evidence_and_bright_ones_are_null():
    dark = torch.full((1, 3, 64, 64), 20, dtype=torch.uint8)
    dark[:, :, 20:40, 20:40] = 60   # a dim object
    bright = torch.full((1, 3, 64, 64), 180, dtype=torch.uint8)
    assert luminance(dark) < 0.25 < luminance(bright)
    lifted = enhance(dark.float() / 255, "clahe")
    assert lifted.mean() > dark.float().mean() / 255 and lifted.std() > (dark.float() / 255).std()
    assert enhance(dark.float() / 255, "gamma").mean() > dark.float().mean() / 255
    source = NightSource(BackboneSource(BackboneSpec.resolve("efficientnet-lite0", input_size=64, views="global")))
    evidence = source.load("cpu").features(torch.cat([dark, bright]))
    assert evidence.shape == (2, len(source.fields)) and torch.isfinite(evidence[0]).all() and evidence[1].isnan().all()


def test_a_run_with_the_night_stream_serves_it_alike_everywhere(tmp_path):
    day = orange_block_folder(tmp_path / "day", 12, seed=11)
    rows, images = [], {}
    for i, sample in enumerate(load_samples(str(day))):   # the same scenes, half of them at night
        pixels = np.asarray(Image.open(sample.path).convert("RGB"), dtype=np.float32)
        photo = Image.fromarray((pixels * (0.15 if i % 2 else 1.0)).astype(np.uint8))
        buffer = __import__("io").BytesIO()
        photo.save(buffer, format="JPEG", quality=90)
        rows.append({"file_name": sample.file_name, "label": sample.label})
        images[sample.file_name] = buffer.getvalue()
    data = write_folder(tmp_path / "mixed", rows, images)
    config = load_config(None, ["validation.groups=rows", "validation.folds=2", "model.type=probe",
                                "backbone_training.mode=frozen", "data.input_size=64", "experts.night=true"])
    metrics = train(str(data), tmp_path / "run", config, cache_dir=tmp_path / "cache", progress=False)
    assert metrics["extraction"]["night"]["extracted"] == 12
    scorer = load_scorer(tmp_path / "run" / "bundle")
    assert [e.kind for e in scorer.bundle.evidence_sources] == ["night"]
    samples = load_samples(str(data))
    features, _, _ = scorer.sample_features(samples, tmp_path / "cache")
    dark = [bool(torch.isfinite(e).all()) for e in features[1]]
    assert dark == [i % 2 == 1 for i in range(12)]   # routed by brightness: the dimmed half only
    cached, _ = scorer.predict_samples(samples, cache_dir=tmp_path / "cache")
    uncached, _ = scorer.predict_samples(samples, use_cache=False)
    served = [p.probability for p in scorer.predict_images([s.path for s in samples])]
    np.testing.assert_allclose(served, uncached, atol=1e-6)
    np.testing.assert_allclose(cached, uncached, atol=2e-3)
