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


def test_lora_takes_steps_changes_the_answer_and_writes_a_bundle_holding_the_model(tiny_qwen3vl_folder, tmp_path):
    import csv

    from roadwork.config import VlmTrainingConfig
    from roadwork.train.vlm import train_vlm

    photos = orange_block_folder(tmp_path / "data", 16, seed=10)
    samples = load_samples(str(photos))
    before = YesNoVlm(str(tiny_qwen3vl_folder), max_pixels=64 * 64).margins([Image.open(s.path) for s in samples[:4]])
    settings = VlmTrainingConfig(epochs=3, batch_size=4, lr=5e-3, max_pixels=64 * 64, held_out=0.25)
    metrics = train_vlm(str(tiny_qwen3vl_folder), str(photos), tmp_path / "run", settings, progress=False)
    assert metrics["trainable_parameters"] > 0 and metrics["trained_photos"] + metrics["held_out"] == 16
    with open(tmp_path / "run" / "logs" / "version_0" / "metrics.csv") as handle:
        losses = [float(r["train_loss"]) for r in csv.DictReader(handle) if r.get("train_loss")]
    assert len(losses) == 3 and losses[-1] < losses[0]
    scorer = load_scorer(tmp_path / "run" / "bundle")
    assert (tmp_path / "run" / "bundle" / "model" / "config.json").is_file()   # the merged model travels with it
    after = scorer.vlm.margins([Image.open(s.path) for s in samples[:4]])
    assert not torch.allclose(before, after, atol=1e-4)   # the adapters changed the answer
    assert not any("lora_" in name for name, _ in scorer.vlm.model.named_parameters())   # merged
    with pytest.raises(RoadworkError, match="CUDA GPU"):
        train_vlm(str(tiny_qwen3vl_folder), str(photos), tmp_path / "q", VlmTrainingConfig(method="qlora"),
                  progress=False)
