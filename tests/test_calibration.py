"""Threshold choice and calibration, against scikit-learn and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import matthews_corrcoef

from roadwork.evaluate.calibration import Calibration, best_mcc_threshold, fit_calibration, mcc_at_every_cut


def test_mcc_at_every_cut_matches_scikit_learn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    margins = np.round(labels * 1.2 + rng.normal(size=300), 1)  # rounding makes ties
    cuts, mccs = mcc_at_every_cut(margins, labels)
    assert len(cuts) == len(np.unique(margins)) + 1
    expected = [matthews_corrcoef(labels, margins > c) for c in cuts]
    assert np.allclose(mccs, expected, atol=1e-12)


def test_threshold_is_the_middle_of_the_widest_best_plateau():
    margins = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0])
    labels = np.array([0, 0, 0, 1, 1, 1])
    threshold, mcc = best_mcc_threshold(margins, labels)
    assert threshold == pytest.approx(0.0) and mcc == pytest.approx(1.0)
    shifted, _ = best_mcc_threshold(margins + 5.0, labels)
    assert shifted == pytest.approx(5.0)


def test_calibrated_probability_puts_the_best_cut_at_one_half():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    margins = 2.0 * labels - 0.5 + rng.normal(size=400)  # the best cut sits near 0.5, not 0
    calibration = fit_calibration(margins, labels)
    probs = calibration(torch.from_numpy(margins)).numpy()
    threshold, best = best_mcc_threshold(margins, labels)
    assert matthews_corrcoef(labels, probs > 0.5) == pytest.approx(best)
    assert calibration.margin_threshold == threshold and 0.05 < calibration.temperature < 20
    nll = lambda t: np.mean(np.logaddexp(0, (margins - threshold) / t) - labels * (margins - threshold) / t)  # noqa: E731
    assert nll(calibration.temperature) <= min(nll(t) for t in (0.5, 1.0, 2.0, 4.0)) + 1e-6


@pytest.mark.parametrize(
    ("margins", "labels"),
    [(np.full(10, 3.0), np.array([0, 1] * 5)), (np.linspace(-1, 1, 10), np.ones(10, dtype=int))],
    ids=["identical-margins", "one-class"],
)
def test_degenerate_validation_data_gives_a_neutral_calibration(margins, labels, caplog):
    calibration = fit_calibration(margins, labels)
    assert calibration.temperature == 1.0
    assert calibration.margin_threshold == pytest.approx(float(np.median(margins)))
    assert "no cut" in caplog.text


def test_round_trip_through_a_dict():
    calibration = Calibration(0.25, 1.7)
    assert Calibration.from_dict(calibration.to_dict()) == calibration
