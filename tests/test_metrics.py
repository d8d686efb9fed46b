"""Tests for faceage_keras.metrics against values computed by hand."""

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from faceage_keras import labels, metrics
from faceage_keras.metrics import UndefinedMetricWarning


def test_mae_hand_computed():
    # |12-10| + |18-20| + |35-30| = 2 + 2 + 5 = 9, and 9 / 3 = 3.0
    assert metrics.mean_absolute_error([10, 20, 30], [12, 18, 35]) == pytest.approx(3.0)


def test_mae_returns_python_float():
    value = metrics.mean_absolute_error(np.array([1.0]), np.array([2.0]))
    assert type(value) is float


def test_mae_accepts_column_vector():
    # Keras returns shape (n, 1) for one output unit. Errors are 1 and 3, mean 2.
    value = metrics.mean_absolute_error([[1.0], [2.0]], np.array([[2.0], [5.0]]))
    assert value == pytest.approx(2.0)


def test_mae_empty_warns_nan():
    with pytest.warns(UndefinedMetricWarning, match="empty"):
        value = metrics.mean_absolute_error([], [])
    assert math.isnan(value)


def test_mae_length_mismatch_raises():
    with pytest.raises(ValueError, match="same length"):
        metrics.mean_absolute_error([1, 2, 3], [1, 2])


def test_mae_nan_input_raises():
    with pytest.raises(ValueError, match="nan or infinite"):
        metrics.mean_absolute_error([1.0, np.nan], [1.0, 2.0])


def test_mae_2d_input_raises():
    with pytest.raises(ValueError, match="1-D"):
        metrics.mean_absolute_error(np.zeros((2, 2)), np.zeros((2, 2)))


def test_mae_non_numeric_raises():
    with pytest.raises(ValueError, match="must contain numbers"):
        metrics.mean_absolute_error(["ten"], [10])


def test_groupwise_mae_all_groups():
    age_true = [5, 15, 20, 29, 30, 45, 60, 75]
    age_pred = [7, 15, 25, 27, 31, 40, 50, 75]
    # Groups by true age and absolute errors:
    #   <19:   5 -> 7 (2), 15 -> 15 (0)      mean 1.0
    #   19-29: 20 -> 25 (5), 29 -> 27 (2)    mean 3.5
    #   30-39: 30 -> 31 (1)                  mean 1.0
    #   40-59: 45 -> 40 (5)                  mean 5.0
    #   60+:   60 -> 50 (10), 75 -> 75 (0)   mean 5.0
    result = metrics.groupwise_mae(age_true, age_pred)
    assert list(result) == list(labels.AGE_GROUP_LABELS)
    assert result["<19"] == pytest.approx(1.0)
    assert result["19-29"] == pytest.approx(3.5)
    assert result["30-39"] == pytest.approx(1.0)
    assert result["40-59"] == pytest.approx(5.0)
    assert result["60+"] == pytest.approx(5.0)


def test_groupwise_mae_groups_by_true_age():
    # True age 18 is in <19 even though the prediction 40 is in 40-59.
    with pytest.warns(UndefinedMetricWarning):
        result = metrics.groupwise_mae([18], [40])
    assert result["<19"] == pytest.approx(22.0)
    assert math.isnan(result["40-59"])


def test_groupwise_mae_missing_group_warns_nan():
    # No true age in 30-39. <19: errors 1, 3 -> 2.0. 19-29: 0. 40-59: 4. 60+: 2.
    age_true = [10, 12, 25, 50, 70]
    age_pred = [11, 9, 25, 54, 68]
    with pytest.warns(UndefinedMetricWarning, match="30-39"):
        result = metrics.groupwise_mae(age_true, age_pred)
    assert math.isnan(result["30-39"])
    assert result["<19"] == pytest.approx(2.0)
    assert result["19-29"] == pytest.approx(0.0)
    assert result["40-59"] == pytest.approx(4.0)
    assert result["60+"] == pytest.approx(2.0)


def test_group_average_mae_unweighted():
    # (1 + 3.5 + 1 + 5 + 5) / 5 = 15.5 / 5 = 3.1, whatever the group sizes.
    mae_by_group = {"<19": 1.0, "19-29": 3.5, "30-39": 1.0, "40-59": 5.0, "60+": 5.0}
    assert metrics.group_average_mae(mae_by_group) == pytest.approx(3.1)


def test_group_average_mae_skips_nan_group():
    # (2 + 0 + 4 + 2) / 4 = 2.0, with 30-39 skipped.
    mae_by_group = {"<19": 2.0, "19-29": 0.0, "30-39": math.nan, "40-59": 4.0, "60+": 2.0}
    with pytest.warns(UndefinedMetricWarning, match="30-39"):
        value = metrics.group_average_mae(mae_by_group)
    assert value == pytest.approx(2.0)


def test_group_average_mae_all_nan():
    mae_by_group = {label: math.nan for label in labels.AGE_GROUP_LABELS}
    with pytest.warns(UndefinedMetricWarning):
        value = metrics.group_average_mae(mae_by_group)
    assert math.isnan(value)


def test_cumulative_score_boundary_inclusive():
    # Errors 0, 5 (exactly the threshold, a hit), 6 (a miss), 4.5 -> 3 of 4 = 0.75.
    value = metrics.cumulative_score([20, 30, 40, 50], [20, 35, 34, 54.5])
    assert value == pytest.approx(0.75)


def test_cumulative_score_custom_threshold():
    # Errors 1, 2, 3, 4 with threshold 2 -> errors 1 and 2 are hits -> 2 / 4 = 0.5.
    value = metrics.cumulative_score([0, 0, 0, 0], [1, -2, 3, 4], threshold=2)
    assert value == pytest.approx(0.5)


def test_cumulative_score_threshold_keyword_only():
    with pytest.raises(TypeError):
        metrics.cumulative_score([0], [0], 5.0)


def test_cumulative_score_negative_threshold_raises():
    with pytest.raises(ValueError, match="threshold"):
        metrics.cumulative_score([0], [0], threshold=-1)


def test_cumulative_score_empty_warns_nan():
    with pytest.warns(UndefinedMetricWarning):
        value = metrics.cumulative_score([], [])
    assert math.isnan(value)


def test_age_group_accuracy_hand_computed():
    # Matches at positions 0, 1 and 4 -> 3 / 5 = 0.6.
    value = metrics.age_group_accuracy([0, 1, 2, 3, 4], [0, 1, 3, 2, 4])
    assert value == pytest.approx(0.6)


def test_age_group_accuracy_accepts_integral_floats():
    value = metrics.age_group_accuracy(np.array([0.0, 4.0]), np.array([0.0, 3.0]))
    assert value == pytest.approx(0.5)


def test_age_group_accuracy_out_of_range_raises():
    with pytest.raises(ValueError, match="class indices 0 to 4"):
        metrics.age_group_accuracy([0, 5], [0, 1])


def test_age_group_accuracy_fraction_raises():
    with pytest.raises(ValueError, match="class indices"):
        metrics.age_group_accuracy([0, 1], [0.5, 1])


def test_gender_scores_small_confusion():
    # Positive class is female (1).
    # true: 1 1 1 0 0 0 0 1
    # pred: 1 1 0 0 1 0 0 1
    # TP = 3 (positions 0, 1, 7), FN = 1 (position 2), FP = 1 (position 4), TN = 3.
    # accuracy = (3 + 3) / 8 = 0.75
    # precision = 3 / (3 + 1) = 0.75, recall = 3 / (3 + 1) = 0.75
    # F1 = 2 * 3 / (2 * 3 + 1 + 1) = 6 / 8 = 0.75
    scores = metrics.gender_scores([1, 1, 1, 0, 0, 0, 0, 1], [1, 1, 0, 0, 1, 0, 0, 1])
    assert set(scores) == {"accuracy", "precision", "recall", "f1"}
    assert scores["accuracy"] == pytest.approx(0.75)
    assert scores["precision"] == pytest.approx(0.75)
    assert scores["recall"] == pytest.approx(0.75)
    assert scores["f1"] == pytest.approx(0.75)


def test_gender_scores_unequal_precision_recall():
    # true: 1 1 1 1 0 0
    # pred: 1 0 0 0 1 0
    # TP = 1, FN = 3, FP = 1, TN = 1.
    # accuracy = (1 + 1) / 6 = 1/3
    # precision = 1 / 2 = 0.5, recall = 1 / 4 = 0.25
    # F1 = 2 * 1 / (2 + 1 + 3) = 2 / 6 = 1/3, equal to 2PR / (P + R) = 0.25 / 0.75
    scores = metrics.gender_scores([1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 1, 0])
    assert scores["accuracy"] == pytest.approx(1 / 3)
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(0.25)
    assert scores["f1"] == pytest.approx(1 / 3)


def test_gender_scores_match_sklearn():
    from sklearn import metrics as sk_metrics

    rng = np.random.default_rng(0)
    gender_true = rng.integers(0, 2, size=50)
    gender_pred = rng.integers(0, 2, size=50)
    scores = metrics.gender_scores(gender_true, gender_pred)
    assert scores["accuracy"] == pytest.approx(sk_metrics.accuracy_score(gender_true, gender_pred))
    assert scores["precision"] == pytest.approx(sk_metrics.precision_score(gender_true, gender_pred))
    assert scores["recall"] == pytest.approx(sk_metrics.recall_score(gender_true, gender_pred))
    assert scores["f1"] == pytest.approx(sk_metrics.f1_score(gender_true, gender_pred))


def test_gender_scores_no_predicted_female():
    # true: 1 0, pred: 0 0 -> TP = 0, FP = 0, FN = 1.
    # precision 0 / 0 is undefined, recall = 0 / 1 = 0, F1 = 0 / (0 + 0 + 1) = 0.
    with pytest.warns(UndefinedMetricWarning, match="precision"):
        scores = metrics.gender_scores([1, 0], [0, 0])
    assert math.isnan(scores["precision"])
    assert scores["recall"] == pytest.approx(0.0)
    assert scores["f1"] == pytest.approx(0.0)
    assert scores["accuracy"] == pytest.approx(0.5)


def test_gender_scores_all_male():
    # No female anywhere -> precision, recall and F1 all have a zero denominator.
    with pytest.warns(UndefinedMetricWarning):
        scores = metrics.gender_scores([0, 0, 0], [0, 0, 0])
    assert scores["accuracy"] == pytest.approx(1.0)
    assert math.isnan(scores["precision"])
    assert math.isnan(scores["recall"])
    assert math.isnan(scores["f1"])


def test_gender_scores_invalid_code_raises():
    with pytest.raises(ValueError, match="class indices 0 to 1"):
        metrics.gender_scores([0, 2], [0, 1])


def test_group_metric_suffixes():
    assert metrics.group_metric_suffix("<19") == "lt19"
    assert metrics.group_metric_suffix("19-29") == "19_29"
    assert metrics.group_metric_suffix("30-39") == "30_39"
    assert metrics.group_metric_suffix("40-59") == "40_59"
    assert metrics.group_metric_suffix("60+") == "60plus"
    assert metrics.GROUP_METRIC_SUFFIXES == ("lt19", "19_29", "30_39", "40_59", "60plus")


def test_group_metric_suffix_invalid_raises():
    with pytest.raises(ValueError, match="suffix"):
        metrics.group_metric_suffix("60 and over")


def _regression_gender_table():
    """Six test faces of a model with an age regression head and a gender head."""
    return pd.DataFrame(
        {
            "image_name": [f"face_{index}.jpg" for index in range(6)],
            "age_true": [10.0, 25.0, 35.0, 45.0, 65.0, 75.0],
            "age_pred": [14.0, 25.0, 29.0, 50.0, 55.0, 72.0],
            "group_true": [0, 1, 2, 3, 4, 4],
            "group_pred": [0, 1, 1, 3, 3, 4],
            "gender_true": [1.0, 0.0, 1.0, np.nan, 0.0, 1.0],
            "gender_pred": [1.0, 0.0, 0.0, 1.0, 1.0, 1.0],
            "prob_female": [0.9, 0.2, 0.4, 0.8, 0.7, 0.6],
        }
    )


def test_summarize_regression_gender_model():
    table = _regression_gender_table()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedMetricWarning)
        summary = metrics.summarize_predictions(table, model_name="M1")

    # Absolute errors: 4, 0, 6, 5, 10, 3 -> sum 28, MAE 28 / 6 = 4.6667.
    # Groups by true age: <19 {4}, 19-29 {0}, 30-39 {6}, 40-59 {5}, 60+ {10, 3} -> 6.5.
    # Group average: (4 + 0 + 6 + 5 + 6.5) / 5 = 21.5 / 5 = 4.3.
    # CS@5: errors <= 5 are 4, 0, 5, 3 -> 4 / 6.
    # Group accuracy: matches at rows 0, 1, 3, 5 -> 4 / 6.
    assert summary["model"] == "M1"
    assert summary["num_faces"] == 6
    assert summary["mae"] == pytest.approx(28 / 6)
    assert summary["mae_by_group"] == pytest.approx(
        {"<19": 4.0, "19-29": 0.0, "30-39": 6.0, "40-59": 5.0, "60+": 6.5}
    )
    assert summary["mae_group_average"] == pytest.approx(4.3)
    assert summary["cs5"] == pytest.approx(4 / 6)
    assert summary["age_group_accuracy"] == pytest.approx(4 / 6)

    # Gender over the 5 rows with a known true gender (row 3 dropped):
    # true: 1 0 1 0 1, pred: 1 0 0 1 1 -> TP = 2, FN = 1, FP = 1, TN = 1.
    # accuracy 3 / 5, precision 2 / 3, recall 2 / 3, F1 = 4 / (4 + 1 + 1) = 2 / 3.
    gender = summary["gender"]
    assert gender["accuracy"] == pytest.approx(0.6)
    assert gender["precision"] == pytest.approx(2 / 3)
    assert gender["recall"] == pytest.approx(2 / 3)
    assert gender["f1"] == pytest.approx(2 / 3)

    assert "mae_expected" not in summary
    assert "mae_by_group_expected" not in summary
    assert "cs5_expected" not in summary


def test_summarize_output_is_json_serialisable():
    summary = metrics.summarize_predictions(_regression_gender_table(), model_name="M1")
    decoded = json.loads(json.dumps(summary, allow_nan=False))
    assert decoded["num_faces"] == 6
    assert isinstance(decoded["mae"], float)


def _group_model_table():
    """Six test faces of an age-group model without a gender head (as M4)."""
    probabilities = np.array(
        [
            [0.7, 0.3, 0.0, 0.0, 0.0],
            [0.2, 0.6, 0.2, 0.0, 0.0],
            [0.0, 0.5, 0.5, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 0.4, 0.6],
            [0.0, 0.0, 0.0, 0.0, 1.0],
        ]
    )
    group_pred = probabilities.argmax(axis=1)
    table = pd.DataFrame(
        {
            "image_name": [f"face_{index}.jpg" for index in range(6)],
            "age_true": [12.0, 22.0, 31.0, 49.0, 58.0, 70.0],
            "age_pred": np.asarray(labels.AGE_GROUP_CENTRES)[group_pred],
            "group_true": [0, 1, 2, 3, 3, 4],
            "group_pred": group_pred,
            "gender_true": [0.0, 1.0, 0.0, 1.0, 0.0, 1.0],
            "gender_pred": np.nan,
            "prob_female": np.nan,
            "age_pred_expected": labels.expected_ages(probabilities),
        }
    )
    for index in range(labels.NUM_AGE_GROUPS):
        table[f"prob_group_{index}"] = probabilities[:, index]
    return table


def test_summarize_group_model():
    table = _group_model_table()
    # group_pred from argmax: 0, 1, 1 (tie 0.5/0.5 -> first), 3, 4, 4.
    # age_pred (centres): 9, 24, 24, 49, 70, 70.
    # age_pred_expected:
    #   0.7*9 + 0.3*24 = 6.3 + 7.2 = 13.5
    #   0.2*9 + 0.6*24 + 0.2*34 = 1.8 + 14.4 + 6.8 = 23.0
    #   0.5*24 + 0.5*34 = 29.0
    #   49.0
    #   0.4*49 + 0.6*70 = 19.6 + 42 = 61.6
    #   70.0
    assert list(table["group_pred"]) == [0, 1, 1, 3, 4, 4]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedMetricWarning)
        summary = metrics.summarize_predictions(table, model_name="M4")

    # Centre errors: |9-12| 3, |24-22| 2, |24-31| 7, |49-49| 0, |70-58| 12, |70-70| 0 -> sum 24, MAE 4.0.
    # Groups: <19 {3} 3.0, 19-29 {2} 2.0, 30-39 {7} 7.0, 40-59 {0, 12} 6.0, 60+ {0} 0.0.
    # Group average (3 + 2 + 7 + 6 + 0) / 5 = 3.6. CS@5: 3, 2, 0, 0 -> 4 / 6.
    # Group accuracy: true 0 1 2 3 3 4 vs pred 0 1 1 3 4 4 -> 4 / 6.
    assert summary["model"] == "M4"
    assert summary["num_faces"] == 6
    assert summary["mae"] == pytest.approx(4.0)
    assert summary["mae_by_group"] == pytest.approx(
        {"<19": 3.0, "19-29": 2.0, "30-39": 7.0, "40-59": 6.0, "60+": 0.0}
    )
    assert summary["mae_group_average"] == pytest.approx(3.6)
    assert summary["cs5"] == pytest.approx(4 / 6)
    assert summary["age_group_accuracy"] == pytest.approx(4 / 6)
    assert summary["gender"] is None

    # Expected-age errors: |13.5-12| 1.5, |23-22| 1, |29-31| 2, 0, |61.6-58| 3.6, 0 -> sum 8.1.
    # MAE 8.1 / 6 = 1.35. Groups: 1.5, 1.0, 2.0, (0 + 3.6) / 2 = 1.8, 0.0. CS@5: all 6 -> 1.0.
    assert summary["mae_expected"] == pytest.approx(1.35, abs=1e-5)
    assert summary["mae_by_group_expected"] == pytest.approx(
        {"<19": 1.5, "19-29": 1.0, "30-39": 2.0, "40-59": 1.8, "60+": 0.0}, abs=1e-5
    )
    assert summary["cs5_expected"] == pytest.approx(1.0)


def test_summarize_group_model_json_serialisable():
    summary = metrics.summarize_predictions(_group_model_table(), model_name="M4")
    decoded = json.loads(json.dumps(summary, allow_nan=False))
    assert decoded["gender"] is None
    assert isinstance(decoded["mae_expected"], float)


def test_summarize_without_gender_labels():
    # A data set without gender: the model still has a gender head, but no score is defined.
    table = _regression_gender_table()
    table["gender_true"] = np.nan
    with pytest.warns(UndefinedMetricWarning):
        summary = metrics.summarize_predictions(table, model_name="M1")
    assert summary["gender"] is not None
    assert math.isnan(summary["gender"]["accuracy"])
    assert math.isnan(summary["gender"]["f1"])


def test_summarize_missing_column_raises():
    table = _regression_gender_table().drop(columns=["group_pred"])
    with pytest.raises(ValueError, match="group_pred"):
        metrics.summarize_predictions(table, model_name="M1")


def test_summarize_partial_gender_pred_raises():
    table = _regression_gender_table()
    table.loc[2, "gender_pred"] = np.nan
    with pytest.raises(ValueError, match="gender_pred"):
        metrics.summarize_predictions(table, model_name="M1")


def test_summarize_model_name_keyword_only():
    with pytest.raises(TypeError):
        metrics.summarize_predictions(_regression_gender_table(), "M1")
