"""The VLM tier: yes/no next-token margins of tiny random VLMs of two families (Qwen3-VL, LLaVA; saved with
save_pretrained), calibrated into a `vlm` bundle that every path serves alike; LoRA and DPO fine-tuning."""

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


@pytest.fixture(params=["qwen3vl", "llava"])
def tiny_vlm_folder(request):
    return request.getfixturevalue(f"tiny_{request.param}_folder")


def test_the_margin_is_the_next_tokens_yes_against_no(tiny_vlm_folder):
    vlm = YesNoVlm(str(tiny_vlm_folder), max_pixels=64 * 64)
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


def test_zero_shot_writes_a_calibrated_vlm_bundle_that_serves_alike(tiny_vlm_folder, tmp_path):
    photos = orange_block_folder(tmp_path / "data", 12, seed=9)
    metrics = zero_shot(str(tiny_vlm_folder), str(photos), tmp_path / "run", max_pixels=64 * 64, folds=2)
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


def test_dpo_prefers_the_right_answer_against_the_start_model_and_weighs_confident_mistakes():
    from roadwork.train.vlm import dpo_loss, mistake_weights

    margins = torch.tensor([0.5, 0.5], requires_grad=True)
    loss = dpo_loss(margins, torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0]), torch.ones(2), beta=0.1)
    assert float(loss.detach()) == pytest.approx(np.log(2))   # at the start model: neither answer preferred yet
    loss.backward()
    assert margins.grad[0] < 0 < margins.grad[1]   # descending raises "yes" where it is right, lowers it elsewhere
    weights = mistake_weights(np.array([0.9, 0.1, 0.6, 0.99]), np.array([1, 0, 0, 0]), boost=4.0)
    raw = np.array([1, 1, 1 + 4 * 0.2, 1 + 4 * 0.98])   # right answers weigh 1, a sure mistake 1 + boost
    np.testing.assert_allclose(weights.numpy(), raw / raw.mean(), rtol=1e-6)


def test_dpo_trains_a_second_family_weighted_by_a_classifier_and_resumes_against_the_same_start(
        tiny_llava_folder, probe_bundle, tmp_path, monkeypatch):
    import csv

    from safetensors.torch import load_file

    import roadwork.train.vlm as vlm_training
    from roadwork.config import VlmTrainingConfig

    photos = orange_block_folder(tmp_path / "data", 16, seed=10)
    samples = load_samples(str(photos))
    before = YesNoVlm(str(tiny_llava_folder), max_pixels=64 * 64).margins([Image.open(s.path) for s in samples[:4]])
    settings = VlmTrainingConfig(epochs=3, batch_size=4, lr=5e-3, max_pixels=64 * 64, held_out=0.25, vision=True,
                                 objective="dpo", dpo_beta=1.0, classifier=str(probe_bundle["bundle"]))
    metrics = vlm_training.train_vlm(str(tiny_llava_folder), str(photos), tmp_path / "run", settings, progress=False)
    assert metrics["objective"] == "dpo" and metrics["mistake_weighted"]
    stored = load_file(str(tmp_path / "run" / "dpo_reference.safetensors"))
    assert stored["reference"].shape == (12,) and float(stored["weights"].mean()) == pytest.approx(1.0)
    with open(tmp_path / "run" / "logs" / "version_0" / "metrics.csv") as handle:
        losses = [float(r["train_loss"]) for r in csv.DictReader(handle) if r.get("train_loss")]
    assert losses[0] < np.log(2) + 0.05 and losses[-1] < losses[0]   # from log 2 at the start model, down
    after = load_scorer(tmp_path / "run" / "bundle").vlm.margins([Image.open(s.path) for s in samples[:4]])
    assert not torch.allclose(before, after, atol=1e-4)

    def recomputed(*args, **kwargs):
        raise AssertionError("a resumed run must compare against the stored start, not its adapted self")

    monkeypatch.setattr(vlm_training, "batched_margins", recomputed)
    with pytest.raises(AssertionError, match="stored start"):   # the held-out margins do call it, after training
        vlm_training.train_vlm(str(tiny_llava_folder), str(photos), tmp_path / "run", settings.model_copy(
            update={"epochs": 4}), resume=True, progress=False)
    with open(tmp_path / "run" / "logs" / "version_1" / "metrics.csv") as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle) if r.get("train_loss")] == [3]   # one more epoch
