"""Tests of the report metrics (bootstrap, confusion, calibration, fairness) against values computed by hand."""

import math

import numpy as np
import pandas as pd
import pytest

from faceage_keras import calibration, comparison, fairness, metrics
from faceage_keras.metrics import UndefinedMetricWarning


def test_bootstrap_equal_errors_collapse():
    low, high = metrics.bootstrap_mean_interval([3.5] * 40)
    assert low == pytest.approx(3.5)
    assert high == pytest.approx(3.5)


def test_bootstrap_two_faces_bounds():
    # Resample means of errors {0, 2} are 0, 1 or 2 with chances 1/4, 1/2, 1/4.
    # The 2.5% and 97.5% quantiles of 1000 such means fall inside the masses at 0 and 2.
    low, high = metrics.bootstrap_mean_interval([0.0, 2.0])
    assert low == pytest.approx(0.0)
    assert high == pytest.approx(2.0)


def test_bootstrap_two_faces_narrow_confidence():
    # With confidence 0.4 the bounds are the 30% and 70% quantiles, both inside the mass of 1 (25% to 75%).
    low, high = metrics.bootstrap_mean_interval([0.0, 2.0], confidence=0.4)
    assert low == pytest.approx(1.0)
    assert high == pytest.approx(1.0)


def test_bootstrap_matches_normal_interval():
    # For 400 faces the bootstrap means are close to normal: mean +- 1.96 * std / sqrt(n).
    errors = np.random.default_rng(5).exponential(5.0, size=400)
    half_width = 1.96 * errors.std() / np.sqrt(errors.size)
    low, high = metrics.bootstrap_mean_interval(errors)
    assert low == pytest.approx(errors.mean() - half_width, abs=0.15 * half_width)
    assert high == pytest.approx(errors.mean() + half_width, abs=0.15 * half_width)


def test_bootstrap_contains_mean():
    errors = np.random.default_rng(1).exponential(5.0, size=300)
    low, high = metrics.bootstrap_mean_interval(errors)
    assert low < errors.mean() < high


def test_bootstrap_narrows_with_more_faces():
    rng = np.random.default_rng(2)
    small_low, small_high = metrics.bootstrap_mean_interval(rng.exponential(5.0, size=50))
    large_low, large_high = metrics.bootstrap_mean_interval(rng.exponential(5.0, size=5000))
    assert large_high - large_low < small_high - small_low


def test_bootstrap_same_seed_same_interval():
    errors = np.random.default_rng(3).exponential(5.0, size=100)
    assert metrics.bootstrap_mean_interval(errors, seed=7) == metrics.bootstrap_mean_interval(errors, seed=7)


def test_bootstrap_chunks_do_not_change_result(monkeypatch):
    errors = np.random.default_rng(4).exponential(5.0, size=100)
    whole = metrics.bootstrap_mean_interval(errors, num_resamples=50)
    monkeypatch.setattr(metrics, "_BOOTSTRAP_CHUNK_VALUES", 100)
    chunked = metrics.bootstrap_mean_interval(errors, num_resamples=50)
    assert chunked == whole


def test_bootstrap_empty_warns_nan():
    with pytest.warns(UndefinedMetricWarning):
        low, high = metrics.bootstrap_mean_interval([])
    assert math.isnan(low)
    assert math.isnan(high)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 95])
def test_bootstrap_invalid_confidence_raises(confidence):
    with pytest.raises(ValueError, match="confidence"):
        metrics.bootstrap_mean_interval([1.0, 2.0], confidence=confidence)


def test_confusion_matrix_counts():
    counts = metrics.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], num_classes=3)
    expected = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    np.testing.assert_array_equal(counts, expected)


def test_confusion_matrix_invalid_class_raises():
    with pytest.raises(ValueError, match="class indices"):
        metrics.confusion_matrix([0, 5], [0, 1], num_classes=5)


def test_reliability_bins_hand_computed():
    bins = calibration.reliability_bins([0.05, 0.15, 0.95, 0.85, 1.0], [0, 1, 1, 1, 0], num_bins=10)
    assert bins.counts.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 1, 2]
    assert bins.mean_confidence[9] == pytest.approx(0.975)
    assert bins.frequency[9] == pytest.approx(0.5)
    assert math.isnan(bins.frequency[2])


def test_reliability_bins_edge_goes_up():
    # A confidence of exactly 0.5 starts bin 5 of 10, it does not end bin 4.
    bins = calibration.reliability_bins([0.5], [1], num_bins=10)
    assert bins.counts[5] == 1


def test_reliability_bins_rejects_probability_above_one():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration.reliability_bins([1.2], [1])


def test_ece_hand_computed():
    # Bins 0, 1, 8, 9 hold one face each: |0 - 0.05| + |1 - 0.15| + |1 - 0.85| + |1 - 0.95| = 1.1, / 4 faces.
    ece = calibration.expected_calibration_error([0.05, 0.15, 0.95, 0.85], [0, 1, 1, 1], num_bins=10)
    assert ece == pytest.approx(0.275)


def test_ece_weights_bins_by_faces():
    # Bin 2 (3 faces, confidence 0.25, frequency 1/3) and bin 9 (1 face, 0.95 vs 0).
    # ECE = 3/4 * |1/3 - 0.25| + 1/4 * 0.95 = 0.0625 + 0.2375 = 0.3.
    ece = calibration.expected_calibration_error([0.25, 0.25, 0.25, 0.95], [1, 0, 0, 0], num_bins=10)
    assert ece == pytest.approx(0.3)


def test_ece_calibrated_is_zero():
    ece = calibration.expected_calibration_error([0.25] * 4 + [0.75] * 4, [1, 0, 0, 0, 1, 1, 1, 0])
    assert ece == pytest.approx(0.0)


def test_ece_empty_warns_nan():
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(calibration.expected_calibration_error([], []))


def test_top_label_confidence():
    probabilities = [[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]]
    confidence, correct = calibration.top_label_confidence(probabilities, [1, 2])
    np.testing.assert_allclose(confidence, [0.7, 0.5])
    assert correct.tolist() == [1, 0]


def test_age_calibration_bins_hand_computed():
    bins = calibration.age_calibration_bins([1, 3, 12, 14], [5, 9, 10, 10], bin_width=5)
    assert bins.lower.tolist() == [0.0, 10.0]
    assert bins.counts.tolist() == [2, 2]
    assert bins.mean_true.tolist() == pytest.approx([2.0, 13.0])
    assert bins.mean_pred.tolist() == pytest.approx([7.0, 10.0])
    assert bins.std_pred.tolist() == pytest.approx([2.0, 0.0])


def test_age_calibration_bins_min_faces():
    bins = calibration.age_calibration_bins([1, 3, 12], [5, 9, 10], bin_width=5, min_faces=2)
    assert bins.lower.tolist() == [0.0]


def test_mae_by_gender_hand_computed():
    # Male errors 2 and 4 (mean 3), female errors 1, 5, 6 (mean 4); gap female - male = 1.
    result = fairness.mae_by_gender([10, 20, 30, 40, 50], [12, 16, 31, 45, 44], [0, 0, 1, 1, 1])
    assert result["male"] == pytest.approx(3.0)
    assert result["female"] == pytest.approx(4.0)
    assert result["gap"] == pytest.approx(1.0)
    assert result["num_female"] == 3


def test_mae_by_gender_skips_unknown_gender():
    result = fairness.mae_by_gender([10, 20, 30], [12, 30, 33], [0, np.nan, 1])
    assert result["male"] == pytest.approx(2.0)
    assert result["num_male"] == 1
    assert result["num_female"] == 1


def test_mae_by_gender_without_women_is_nan():
    with pytest.warns(UndefinedMetricWarning):
        result = fairness.mae_by_gender([10], [12], [0])
    assert math.isnan(result["gap"])


def test_gender_accuracy_by_group_hand_computed():
    with pytest.warns(UndefinedMetricWarning):
        result = fairness.gender_accuracy_by_group([0, 0, 0, 4], [0, 1, 1, 0], [0, 1, 0, 1])
    assert result["<19"] == pytest.approx(2 / 3)
    assert result["60+"] == pytest.approx(0.0)
    assert math.isnan(result["19-29"])


def test_largest_gap_hand_computed():
    with pytest.warns(UndefinedMetricWarning):
        gap = fairness.largest_gap({"<19": 4.0, "19-29": 2.5, "30-39": math.nan, "60+": 9.0})
    assert gap["lowest"] == "19-29"
    assert gap["highest"] == "60+"
    assert gap["gap"] == pytest.approx(6.5)


def _hand_table():
    # Absolute errors 2, 0, 5, 5, 10, 6 by true group <19, 19-29, 30-39, 40-59, 60+, <19.
    return pd.DataFrame(
        {
            "image_name": [f"{index}.jpg" for index in range(6)],
            "age_true": [5.0, 20.0, 35.0, 45.0, 65.0, 10.0],
            "age_pred": [7.0, 20.0, 30.0, 50.0, 55.0, 16.0],
            "group_true": [0, 1, 2, 3, 4, 0],
            "group_pred": [0, 1, 1, 3, 3, 0],
            "gender_true": [0, 1, 1, 0, 1, 0],
            "gender_pred": [0, 1, 0, 0, 1, 1],
            "prob_female": [0.1, 0.9, 0.4, 0.2, 0.8, 0.6],
        }
    )


def test_summary_age_metrics_hand_computed():
    age = comparison.summarize_predictions_table(_hand_table(), num_resamples=200).ages[0]
    assert age.mae == pytest.approx(28 / 6)
    assert age.cs5 == pytest.approx(4 / 6)
    assert age.mae_by_group["<19"] == pytest.approx(4.0)
    assert age.mae_by_group["60+"] == pytest.approx(10.0)
    assert age.group_average == pytest.approx(4.8)
    assert age.group_gap["gap"] == pytest.approx(10.0)
    assert age.mae_low < age.mae < age.mae_high


def test_summary_gender_metrics_hand_computed():
    # TP 2 (faces 1, 4), FP 1 (face 5), FN 1 (face 2): F1 = 4 / (4 + 1 + 1).
    summary = comparison.summarize_predictions_table(_hand_table(), num_resamples=10)
    assert summary.gender["f1"] == pytest.approx(2 / 3)
    assert summary.gender["accuracy"] == pytest.approx(4 / 6)
    assert summary.ages[0].by_gender["gap"] == pytest.approx(5.0 - 13 / 3)
    assert summary.gender_confusion.tolist() == [[2, 1], [1, 2]]
    assert summary.group_accuracy == pytest.approx(4 / 6)


def test_summary_gender_ece_hand_computed():
    # P(female) bins: 0.1 (male), 0.2 (male), 0.4 (female), 0.6 (male), 0.8 (female), 0.9 (female).
    # Gaps per face: 0.1, 0.2, 0.6, 0.6, 0.2, 0.1, so ECE = 1.8 / 6.
    summary = comparison.summarize_predictions_table(_hand_table(), num_resamples=10)
    assert summary.gender_ece == pytest.approx(0.3)


def test_summary_without_gender_head():
    table = _hand_table().assign(gender_pred=np.nan, prob_female=np.nan)
    summary = comparison.summarize_predictions_table(table, num_resamples=10)
    assert summary.has_gender_head is False
    assert summary.gender is None
    assert math.isnan(summary.gender_ece)
