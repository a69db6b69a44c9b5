"""The served cut and calibration, against scikit-learn, hand-made cases and simulated validation sets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import matthews_corrcoef

from roadwork.evaluate.metrics import reliability
from roadwork.serve.calibration import Calibration, candidate_cuts, choose_cut, fit_calibration
from roadwork.stats import bootstrap_mcc_curves


def test_mcc_curves_match_scikit_learn_at_every_cut():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    margins = np.round(labels * 1.2 + rng.normal(size=300), 1)  # rounding makes ties
    cuts = candidate_cuts(margins)
    curves = bootstrap_mcc_curves(margins, labels, cuts, np.ones((1, 300)))
    expected = [matthews_corrcoef(labels, margins > c) for c in cuts]
    assert np.allclose(curves[0], expected, atol=1e-12)
    # A resample's multiplicities act like repeated rows.
    weights = rng.integers(0, 3, 300)
    repeated = bootstrap_mcc_curves(margins, labels, cuts, weights[None, :].astype(float))[0]
    assert np.allclose(repeated, [matthews_corrcoef(np.repeat(labels, weights), np.repeat(margins, weights) > c)
                                  for c in cuts], atol=1e-12)


def _raw_argmax_cut(margins: np.ndarray, labels: np.ndarray) -> float:
    """The old rule: the cut with the best MCC on the validation margins themselves."""
    cuts = candidate_cuts(margins)
    return float(cuts[np.argmax(bootstrap_mcc_curves(margins, labels, cuts, np.ones((1, len(margins))))[0])])


def test_a_noisy_validation_set_keeps_margin_zero_and_transfers_better_than_the_raw_argmax():
    """Defect 2: on continuous margins the old rule served the raw argmax of a noisy MCC curve."""
    rng = np.random.default_rng(3)
    test_labels = rng.integers(0, 2, 40_000)
    test_margins = np.where(test_labels == 1, 1.0, -1.0) + rng.normal(0, 1.6, 40_000)  # the best cut is 0
    held_out = {"raw argmax": [], "choose_cut": []}
    kept_zero = 0
    for _ in range(40):
        labels = rng.integers(0, 2, 120)
        margins = np.where(labels == 1, 1.0, -1.0) + rng.normal(0, 1.6, 120)
        choice = choose_cut(margins, labels, seed=1)
        kept_zero += choice.cut == 0.0
        for name, cut in (("raw argmax", _raw_argmax_cut(margins, labels)), ("choose_cut", choice.cut)):
            held_out[name].append(matthews_corrcoef(test_labels, test_margins > cut))
    assert kept_zero > 20  # the raw argmax almost never lands on 0 exactly
    assert np.mean(held_out["choose_cut"]) > np.mean(held_out["raw argmax"])
    assert np.std(held_out["choose_cut"]) < np.std(held_out["raw argmax"])


def test_by_default_the_cut_moves_only_when_every_resample_agrees():
    # Few roadwork photos with low margins: the move wins in about 95% of resamples, not all.
    rng = np.random.default_rng(11)
    labels = (rng.random(160) < 0.1).astype(int)
    margins = np.where(labels == 1, 0.6, -2.5) + rng.normal(0, 1.0, 160)
    loose = choose_cut(margins, labels, confidence=0.9)
    assert loose.cut < 0 and 0.9 <= loose.moved_confidence < 1.0
    assert choose_cut(margins, labels).cut == 0.0 and fit_calibration(margins, labels)[0].margin_threshold == 0.0


def test_a_margin_zero_that_calls_every_photo_one_class_is_left_without_a_vote():
    # Six validation photos of a barely trained head, all above margin 0: few resamples hold both
    # classes, so no move can win every one of them, yet margin 0 decides nothing.
    margins, labels = np.array([0.5, 0.7, 0.9, 2.1, 2.4, 2.6]), np.array([0, 0, 0, 1, 1, 1])
    choice = choose_cut(margins, labels)
    assert choice.moved_confidence < 1.0 and 0.9 <= choice.cut < 2.1
    assert matthews_corrcoef(labels, margins > choice.cut) == 1.0


def test_a_clearly_better_cut_is_taken():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    margins = 3.0 * labels + 2.0 + rng.normal(0, 0.7, 400)  # every margin positive: margin 0 calls all roadwork
    calibration, choice = fit_calibration(margins, labels)
    assert choice.cut > 2.5 and choice.moved_confidence >= 0.9 and choice.smoothed_mcc > 0.8
    probs = calibration(torch.from_numpy(margins)).numpy()
    assert matthews_corrcoef(labels, probs > 0.5) > 0.8
    shifted = margins - calibration.margin_threshold
    nll = lambda t: np.mean(np.logaddexp(0, shifted / t) - labels * shifted / t)  # noqa: E731
    assert nll(calibration.temperature) <= min(nll(t) for t in (0.25, 0.5, 1.0, 2.0, 4.0)) + 1e-6


@pytest.mark.parametrize(
    ("margins", "labels"),
    [(np.full(10, 3.0), np.array([0, 1] * 5)), (np.linspace(-1, 1, 10), np.ones(10, dtype=int)),
     (np.linspace(-2, 2, 40), (np.arange(40) < 20).astype(int))],
    ids=["identical-margins", "one-class", "anti-correlated"],
)
def test_degenerate_data_gives_the_neutral_calibration(margins, labels, caplog):
    """Defect 4: the old fallback kept the median as cut, which called every image roadwork on
    anti-correlated margins; neutral is the model's own cut, margin 0, at temperature 1."""
    calibration, choice = fit_calibration(margins, labels)
    assert calibration == Calibration(0.0, 1.0) and choice.degenerate
    assert "no cut" in caplog.text


def test_round_trip_and_validation_of_the_stored_form():
    calibration = Calibration(0.25, 1.7)
    assert Calibration.from_dict(calibration.to_dict()) == calibration
    for bad in ({"margin_threshold": float("nan"), "temperature": 1.0}, {"margin_threshold": 0.0, "temperature": 0.0},
                [1, 2], {"margin_threshold": 0.0}):
        with pytest.raises((ValueError, KeyError)):
            Calibration.from_dict(bad)


def test_an_ensemble_is_served_the_mean_of_its_calibrated_members():
    calibration = Calibration(2.0, 0.5)
    members = torch.tensor([[2.8, 2.8, -3.0], [-1.0, 0.0, 1.0]])
    expected = torch.sigmoid((members - 2.0) / 0.5).mean(dim=1)
    assert torch.allclose(calibration(members), expected)
    # Two of three members call the first photo roadwork; its mean margin alone would fall below the cut.
    assert calibration(members.mean(dim=1))[0] < 0.5 < calibration(members)[0]


def test_non_finite_margins_are_refused():
    with pytest.raises(ValueError, match="1 margin"):
        fit_calibration(np.array([0.1, float("nan"), -0.3, 0.5]), np.array([1, 0, 0, 1]))


def test_isotonic_calibration_keeps_the_served_decision_and_fixes_a_miscalibrated_shape():
    rng = np.random.default_rng(7)
    margins = rng.normal(0, 2, 4000)
    truth = 1 / (1 + np.exp(-np.sign(margins) * np.abs(margins) ** 2))   # no temperature fits this shape
    labels = (rng.uniform(size=4000) < truth).astype(int)
    temperature, cut = fit_calibration(margins, labels)
    isotonic, same_cut = fit_calibration(margins, labels, method="isotonic")
    assert isotonic.method == "isotonic" and isotonic.margin_threshold == same_cut.cut == cut.cut
    fresh = rng.normal(0, 2, 4000)
    fresh_labels = (rng.uniform(size=4000) < 1 / (1 + np.exp(-np.sign(fresh) * fresh ** 2))).astype(int)
    served = {c.method: c(torch.from_numpy(fresh)).numpy() for c in (temperature, isotonic)}
    assert np.array_equal(served["isotonic"] > 0.5, fresh > isotonic.margin_threshold)   # decision unchanged
    assert np.array_equal(served["temperature"] > 0.5, served["isotonic"] > 0.5)
    errors = {m: reliability(p, fresh_labels)[0] for m, p in served.items()}
    assert errors["isotonic"] < 0.6 * errors["temperature"]
    reloaded = Calibration.from_dict(json.loads(json.dumps(isotonic.to_dict())))
    assert reloaded == isotonic
    assert torch.equal(reloaded(torch.from_numpy(fresh)), isotonic(torch.from_numpy(fresh)))


def test_isotonic_knots_from_a_manifest_are_checked():
    with pytest.raises(ValueError, match="isotonic knots"):
        Calibration.from_dict({"margin_threshold": 0.0, "temperature": 1.0, "isotonic": [[0.0, 0.8], [1.0, 0.2]]})
    with pytest.raises(ValueError, match="isotonic knots"):
        Calibration.from_dict({"margin_threshold": 0.0, "temperature": 1.0, "isotonic": [[0.0, 0.1], [0.0, 0.2]]})
    old = Calibration.from_dict({"margin_threshold": 0.5, "temperature": 2.0})   # bundles from before isotonic
    assert old.method == "temperature" and old(torch.tensor([0.5])).item() == 0.5
