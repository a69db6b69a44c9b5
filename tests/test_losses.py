import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from roadwork.config import LossConfig
from roadwork.features.metadata import NULL_INDEX
from roadwork.losses import RoadworkLoss, consistency_loss, focal_loss, weather_loss
from roadwork.model.head import HeadOutput


def test_focal_reduces_to_cross_entropy_without_focusing():
    logits, labels = torch.randn(8, 2), torch.randint(0, 2, (8,))
    assert torch.allclose(focal_loss(logits, labels, 0.0, None, 0.0), F.cross_entropy(logits, labels))
    smoothed = F.cross_entropy(logits, labels, label_smoothing=0.1)
    assert torch.allclose(focal_loss(logits, labels, 0.0, None, 0.1), smoothed)


def test_focal_matches_formula_and_down_weights_easy_examples():
    logits, labels = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([1])  # p = (0.25, 0.75)
    # smoothing 0.5 -> q = (0.25, 0.75); loss = -sum_c q_c (1 - p_c)^2 log p_c
    expected = -(0.25 * 0.75**2 * math.log(0.25) + 0.75 * 0.25**2 * math.log(0.75))
    assert focal_loss(logits, labels, 2.0, None, 0.5).item() == pytest.approx(expected, rel=1e-5)
    easy, hard = torch.tensor([[0.0, 4.0]]), torch.tensor([[4.0, 0.0]])
    one = torch.tensor([1])
    ratio_easy = focal_loss(easy, one, 2.0, None, 0.0) / F.cross_entropy(easy, one)
    ratio_hard = focal_loss(hard, one, 2.0, None, 0.0) / F.cross_entropy(hard, one)
    assert ratio_easy < 0.01 < 0.9 < ratio_hard


def test_focal_label_smoothing_still_penalises_over_confidence():
    one = torch.tensor([1])
    confident = focal_loss(torch.tensor([[0.0, 20.0]]), one, 2.0, None, 0.1)
    moderate = focal_loss(torch.tensor([[0.0, 3.0]]), one, 2.0, None, 0.1)
    assert confident > moderate


def test_focal_alpha_weights_classes():
    logits = torch.randn(2, 2)
    labels = torch.tensor([1, 0])
    plain = [focal_loss(logits[i : i + 1], labels[i : i + 1], 2.0, None, 0.1) for i in range(2)]
    weighted = [focal_loss(logits[i : i + 1], labels[i : i + 1], 2.0, 0.8, 0.1) for i in range(2)]
    assert weighted[0].item() == pytest.approx(0.8 * plain[0].item(), rel=1e-5)
    assert weighted[1].item() == pytest.approx(0.2 * plain[1].item(), rel=1e-5)


def test_consistency_is_jensen_shannon_over_valid_views():
    agree = torch.tensor([[[1.0, 2.0], [1.0, 2.0], [5.0, -3.0]]])
    mask = torch.tensor([[True, True, False]])
    assert consistency_loss(agree, mask).item() == pytest.approx(0.0, abs=1e-7)
    views = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)], [float("nan"), float("inf")]]], requires_grad=True)
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
    m = (p + q) / 2
    js = ((p * (p / m).log()).sum() + (q * (q / m).log()).sum()) / 2
    loss = consistency_loss(views, mask)
    assert loss.item() == pytest.approx(js.item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(views.grad).all() and (views.grad[0, 2] == 0).all()
    assert views.grad[0, 0].abs().sum() > 0 and views.grad[0, 1].abs().sum() > 0
    single = consistency_loss(torch.randn(2, 3, 2), torch.tensor([[True, False, False]] * 2))
    assert single.item() == pytest.approx(0.0, abs=1e-7)


def test_weather_loss_uses_only_known_rows():
    logits = torch.randn(4, 3, requires_grad=True)
    weather = torch.tensor([NULL_INDEX, 1, 3, NULL_INDEX])  # vocabulary index -> class index - 1
    expected = F.cross_entropy(logits[1:3], torch.tensor([0, 2]))
    assert torch.allclose(weather_loss(logits, weather), expected)
    changed = logits.detach().clone()
    changed[[0, 3]] = 100.0
    assert torch.allclose(weather_loss(changed, weather), expected)
    none_known = weather_loss(logits, torch.full((4,), NULL_INDEX))
    none_known.backward()
    assert none_known.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_total_is_weighted_sum_and_missing_parts_are_zero():
    config = LossConfig(focal_weight=0.5, consistency_weight=0.3, weather_weight=0.2)
    loss = RoadworkLoss(config)
    labels, weather = torch.tensor([1, 0, 1]), torch.tensor([1, NULL_INDEX, 2])
    out = HeadOutput(
        logits=torch.randn(3, 2),
        view_logits=torch.randn(3, 4, 2),
        view_mask=torch.tensor([[True] * 4, [True, True, False, False], [True, False, False, False]]),
        weather_logits=torch.randn(3, 2),
    )
    parts = loss(out, labels, weather)
    assert set(parts) == {"loss", "focal", "consistency", "weather"}
    assert all(parts[k] > 0 for k in ("focal", "consistency", "weather"))
    total = 0.5 * parts["focal"] + 0.3 * parts["consistency"] + 0.2 * parts["weather"]
    assert torch.allclose(parts["loss"], total)

    linear = loss(HeadOutput(logits=out.logits), labels, weather)
    assert linear["consistency"].item() == 0.0 and linear["weather"].item() == 0.0
    assert torch.allclose(linear["loss"], 0.5 * linear["focal"])
    # The segmentation term is backbone fine-tuning's: a run that sets it trains its heads as before.
    with_dice = RoadworkLoss(config.model_copy(update={"dice_weight": 0.5}))(out, labels, weather)
    assert torch.equal(with_dice["loss"], parts["loss"])


def test_loss_config_is_strict():
    with pytest.raises(ValidationError):
        LossConfig(focal_alpha=1.5)
    with pytest.raises(ValidationError):
        LossConfig(focal_wieght=1.0)


def test_consistency_averages_over_the_batch_and_follows_its_mean_target():
    torch.manual_seed(0)
    views = torch.randn(3, 4, 2)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False], [True, False, False, False]])
    whole = consistency_loss(views, mask)
    rows = [consistency_loss(views[i:i + 1], mask[i:i + 1]) for i in range(3)]
    assert whole.item() == pytest.approx(sum(r.item() for r in rows) / 3, rel=1e-6)  # a mean, not a sum

    # The gradient is exactly that of the Jensen-Shannon divergence of the views. (Detaching the
    # mean target would change the probability gradient only by a constant per class, which the
    # softmax removes: for this loss, detached or not gives the same logit gradients.)
    logits = views[:1, :3].clone().requires_grad_(True)
    consistency_loss(logits, mask[:1, :3]).backward()
    reference_logits = logits.detach().clone().requires_grad_(True)
    p = torch.softmax(reference_logits, dim=-1)[0]
    m = p.mean(dim=0)
    js = (p * (p.log() - m.log())).sum(dim=-1).mean()
    js.backward()
    assert torch.allclose(logits.grad, reference_logits.grad, atol=1e-7)
    assert logits.grad.abs().sum() > 0
