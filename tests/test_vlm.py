"""The VLM tier's zero-shot scorer: yes/no next-token margins of a tiny random Qwen3-VL (saved with
save_pretrained), calibrated into a `vlm` bundle that every path serves alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from roadwork.data.sources import load_samples
from roadwork.errors import RoadworkError
from roadwork.experts.vlm import YesNoVlm, within_budget
from roadwork.serve.scorer import load_scorer
from roadwork.tune.vlm import zero_shot

from conftest import orange_block_folder


def test_the_margin_is_the_next_tokens_yes_against_no(tiny_qwen3vl_folder):
    vlm = YesNoVlm(str(tiny_qwen3vl_folder), max_pixels=64 * 64)
    photos = [Image.new("RGB", (80, 60), (200, 90, 10)), Image.new("RGB", (64, 64), (30, 30, 30))]
    margins = vlm.margins(photos)
    # The same number straight from the model, one photo at a time (no padding involved).
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": vlm.question}]}]
    prompt = vlm.processor.apply_chat_template(message, add_generation_prompt=True, tokenize=False)
    for photo, margin in zip(photos, margins):
        inputs = vlm.processor(text=[prompt], images=[within_budget(photo, 64 * 64)], return_tensors="pt")
        with torch.no_grad():
            logits = vlm.model(**inputs).logits[0, -1]
        expected = torch.logsumexp(logits[vlm.yes], 0) - torch.logsumexp(logits[vlm.no], 0)
        assert float(margin) == pytest.approx(float(expected), abs=1e-4)
    assert within_budget(Image.new("RGB", (400, 300)), 100 * 100).size == (115, 86)


def test_zero_shot_writes_a_calibrated_vlm_bundle_that_serves_alike(tiny_qwen3vl_folder, tmp_path):
    photos = orange_block_folder(tmp_path / "data", 12, seed=9)
    metrics = zero_shot(str(tiny_qwen3vl_folder), str(photos), tmp_path / "run", max_pixels=64 * 64, folds=2)
    assert metrics["photos"] == 12 and 0.0 <= metrics["auroc"] <= 1.0
    scorer = load_scorer(tmp_path / "run" / "bundle")
    samples = load_samples(str(photos))
    batch, _ = scorer.predict_samples(samples)
    single = [p.probability for p in scorer.predict_images([s.path for s in samples])]
    assert all(0.0 <= p <= 1.0 for p in batch) and np.std(batch) > 0
    np.testing.assert_allclose(batch, single, atol=1e-5)
    with pytest.raises(RoadworkError, match="not a vision-language model folder"):
        YesNoVlm(str(tmp_path))
