"""Evaluation metrics against scikit-learn, bootstrap intervals, calibration quality, reward simulation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    f1_score,
    matthews_corrcoef,
    precision_score,
    recall_score,
    roc_auc_score,
)

from roadwork.evaluate.metrics import (
    between_fold_interval,
    binary_metrics,
    bootstrap_metrics,
    group_evidence,
    paired_difference,
    reliability,
    weighted_metrics,
    with_intervals,
)
from roadwork.evaluate.reward import simulate_reward

SKLEARN = {
    "mcc": lambda y, p, w: matthews_corrcoef(y, p > 0.5, sample_weight=w),
    "accuracy": lambda y, p, w: accuracy_score(y, p > 0.5, sample_weight=w),
    "balanced_accuracy": lambda y, p, w: balanced_accuracy_score(y, p > 0.5, sample_weight=w),
    "precision": lambda y, p, w: precision_score(y, p > 0.5, sample_weight=w, zero_division=0),
    "recall": lambda y, p, w: recall_score(y, p > 0.5, sample_weight=w),
    "f1": lambda y, p, w: f1_score(y, p > 0.5, sample_weight=w),
    "auroc": lambda y, p, w: roc_auc_score(y, p, sample_weight=w),
    "auprc": lambda y, p, w: average_precision_score(y, p, sample_weight=w),
    "brier": lambda y, p, w: brier_score_loss(y, p, sample_weight=w),
}


def overlapping(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of a mediocre classifier, rounded so that scores tie."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    return labels, np.round(np.clip(0.35 + 0.3 * labels + rng.normal(0, 0.2, n), 0, 1), 2)


def test_every_metric_matches_scikit_learn():
    labels, probs = overlapping(500, 2)
    metrics = binary_metrics(probs, labels)
    for name, reference in SKLEARN.items():
        assert metrics[name] == pytest.approx(reference(labels, probs, None), abs=1e-9), name
    assert (metrics["tp"], metrics["fp"]) == (int(((probs > 0.5) & (labels == 1)).sum()),
                                              int(((probs > 0.5) & (labels == 0)).sum()))


def test_resample_weights_match_scikit_learn_sample_weights():
    labels, probs = overlapping(200, 3)
    weights = np.random.default_rng(0).integers(0, 4, size=(3, 200)).astype(float)
    values = weighted_metrics(probs, labels, weights)
    for r in range(3):
        for name, reference in SKLEARN.items():
            assert values[name][r] == pytest.approx(reference(labels, probs, weights[r]), abs=1e-9), (name, r)


def test_the_threshold_moves_the_count_metrics_only():
    labels, probs = overlapping(500, 2)
    at_half, at_third = binary_metrics(probs, labels, 0.5), binary_metrics(probs, labels, 0.35)
    assert at_third["mcc"] == pytest.approx(matthews_corrcoef(labels, probs > 0.35), abs=1e-9)
    assert abs(at_half["mcc"] - at_third["mcc"]) > 0.05
    assert at_half["auroc"] == at_third["auroc"]


def test_undefined_metrics_are_none_not_numbers():
    metrics = binary_metrics([0.2, 0.7, 0.9], [1, 1, 1])
    assert metrics["auroc"] is None and metrics["balanced_accuracy"] is None
    assert metrics["recall"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="not finite"):
        binary_metrics([0.2, float("nan")], [0, 1])


def test_group_bootstrap_interval_is_wider_when_rows_are_copies():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 60)
    probs = np.clip(0.5 + 0.25 * (2 * labels - 1) + rng.normal(0, 0.25, 60), 0, 1)
    single = with_intervals(probs, labels)
    low, high = single["ci95"]["mcc"]
    assert low < single["mcc"] < high
    for name in ("accuracy", "auroc", "auprc", "brier", "f1"):
        assert single["ci95"][name][0] <= single[name] <= single["ci95"][name][1], name
    # Ten copies of each photo: as rows they look like 600 independent photos, as groups they are 60.
    copies, groups = np.repeat(probs, 10), np.repeat(np.arange(60), 10)
    as_rows = with_intervals(copies, np.repeat(labels, 10))["ci95"]["mcc"]
    as_groups = with_intervals(copies, np.repeat(labels, 10), groups)["ci95"]["mcc"]
    assert (as_groups[1] - as_groups[0]) > 2 * (as_rows[1] - as_rows[0])
    assert as_groups[1] - as_groups[0] == pytest.approx(high - low, rel=0.35)
    assert with_intervals(probs, labels, seed=0) == single   # seeded: the same interval every time


def test_paired_difference_sees_a_small_consistent_gain_that_separate_intervals_hide():
    labels, probs = overlapping(300, 5)
    better = probs.copy()
    wrong = np.flatnonzero((probs > 0.5) != labels)[:12]
    better[wrong] = labels[wrong] * 0.8 + 0.1   # fixes 12 mistakes, changes nothing else
    a, b = bootstrap_metrics([probs, better], labels, resamples=500)
    difference = paired_difference(a, b)
    assert difference["ci95"][0] > 0 and difference["b_better_share"] > 0.97
    low_b = np.percentile(b["mcc"], 2.5)
    assert low_b < np.percentile(a["mcc"], 97.5)   # the two intervals overlap


def test_reliability_and_ece():
    rng = np.random.default_rng(1)
    probs = rng.uniform(size=20000)
    honest = (rng.uniform(size=20000) < probs).astype(int)
    error, bins = reliability(probs, honest)
    assert error < 0.02 and len(bins) == 10
    assert all(abs(b.positive_rate - b.mean_probability) < 0.05 for b in bins)
    overconfident = np.where(probs > 0.5, 0.99, 0.01)
    worse, _ = reliability(overconfident, honest)
    assert worse == pytest.approx(0.24, abs=0.02)   # |0.99 - 0.75| = |0.01 - 0.25| = 0.24 on each half
    _, sparse = reliability([0.05, 0.07], [0, 1])
    assert sparse[0].count == 2 and sparse[0].positive_rate == 0.5 and sparse[5].count == 0


def test_reward_simulation_follows_the_network_formula():
    labels = np.array([0] * 50 + [1] * 50)
    perfect = simulate_reward(labels.astype(float), labels, sequences=200)
    assert perfect["mean"] == pytest.approx(1.0) and perfect["std"] == pytest.approx(0.0)
    constant = simulate_reward(np.full(100, 0.9), labels, sequences=2000)
    # MCC 0 (floored) and accuracy ~ 0.5 on 50/50 challenges: reward ~ E[(0.5 x acc10)^3]
    assert 0.01 < constant["mean"] < 0.03 and constant["mcc_mean"] == 0.0
    inverted = simulate_reward(1.0 - labels, labels, sequences=200)
    assert inverted["mean"] == 0.0   # MCC -1 floors at 0, accuracy 0
    rng = np.random.default_rng(0)
    noisy = np.clip(labels + rng.normal(0, 0.4, 100), 0, 1)
    first, second = simulate_reward(noisy, labels, seed=3), simulate_reward(noisy, labels, seed=3)
    assert first == second and 0 < first["p05"] < first["mean"] < first["p95"] < 1
    assert simulate_reward(np.full(3, 0.9), [1, 1, 1]) is None   # one class: no 50/50 challenge stream


def test_group_evidence_counts_a_giant_drive_about_once():
    # Three drives of 80, 15 and 5 photos: 100 rows, but close to one and a half independent pieces.
    groups = np.repeat([7, 3, 9], [80, 15, 5])
    labels = np.concatenate([np.zeros(80), np.r_[np.ones(5), np.zeros(10)], np.ones(5)]).astype(int)
    evidence = group_evidence(labels, groups)
    assert evidence["groups"] == 3 and evidence["effective_groups"] == pytest.approx(
        100**2 / (80**2 + 15**2 + 5**2), abs=0.05
    )
    assert evidence["groups_with_roadwork"] == 2 and evidence["groups_without"] == 2
    single_photos = group_evidence(labels, np.arange(100))
    assert single_photos["effective_groups"] == 100 and single_photos["groups_with_roadwork"] == 10


def test_between_fold_interval_is_the_student_t_interval_of_the_fold_mean():
    from scipy import stats

    folds = [0.85, 0.89, 0.60, 0.82, 0.63]
    low, high = stats.t.interval(0.95, 4, loc=np.mean(folds), scale=stats.sem(folds))
    assert between_fold_interval(folds) == pytest.approx([low, high], abs=1e-4)
    assert between_fold_interval([0.8]) is None and between_fold_interval([0.8, float("nan"), None]) is None
    # Folds that disagree widen it; folds that agree narrow it.
    assert np.diff(between_fold_interval([0.7, 0.71, 0.69]))[0] < np.diff(between_fold_interval(folds))[0]
