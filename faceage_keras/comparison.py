"""The numbers of a comparison report, computed from test predictions tables.

`summarize_predictions_table` turns one `test_predictions.csv` into every
number the report shows: MAE with a bootstrap interval, CS@5, group-wise and
gender-wise MAE, gender scores, age-group accuracy, confusion matrices and
calibration. `balance_deltas` compares runs trained with a balancing method
to the unbalanced runs of the same model.
"""

import dataclasses
import math
import warnings

import numpy as np

from faceage_keras import calibration, fairness, labels, metrics, run_folders

# Columns of the two age estimates. Group models (M3, M4) have both: the
# centre of the most probable group and the expectation over the groups.
CENTRE_ESTIMATE = "age_pred"
EXPECTED_ESTIMATE = "age_pred_expected"
GROUP_PROBABILITY_COLUMNS = tuple(f"prob_group_{index}" for index in range(labels.NUM_AGE_GROUPS))
# Columns of a ΔMAE table after the five age groups.
AVERAGE_COLUMN = "Average of groups"
ALL_FACES_COLUMN = "All faces"
# Config keys that must agree for a balanced run to be compared with an unbalanced one.
MATCH_KEYS = ("model", "backbone", "weights", "image_size")


@dataclasses.dataclass
class AgeSummary:
    """Age metrics of one age estimate, in years.

    Attributes:
        estimate: str. `age_pred`, or `age_pred_expected` for the expectation
            over the groups of a group model.
        name: str or None. `group centre` or `expectation` for group models,
            None for an age regression.
        mae, mae_low, mae_high: float. MAE and its 95% bootstrap interval.
        cs5: float. Fraction of faces within 5 years.
        mae_by_group: dict. Group label to MAE, nan for an empty group.
        group_average: float. Unweighted mean of the group MAEs.
        group_gap: dict. `fairness.largest_gap` of the group MAEs.
        by_gender: dict. `fairness.mae_by_gender`.
        calibration: `calibration.AgeCalibrationBins`.
        residuals: float array. Predicted minus true age per face.
    """

    estimate: str
    name: str | None
    mae: float
    mae_low: float
    mae_high: float
    cs5: float
    mae_by_group: dict
    group_average: float
    group_gap: dict
    by_gender: dict
    calibration: calibration.AgeCalibrationBins
    residuals: np.ndarray


@dataclasses.dataclass
class PredictionSummary:
    """Every number of one predictions table.

    Attributes:
        num_faces: int.
        age_true: float array. Clipped true ages in years.
        ages: list of `AgeSummary`, the group centre first for group models.
        predictions: dict. Estimate column to predicted ages.
        has_gender_head, has_group_head: bool.
        num_known_gender: int. Faces whose true gender is known.
        gender: dict or None. `metrics.gender_scores` over faces of known
            gender; None without a gender head or without known genders.
        gender_accuracy_by_group: dict or None.
        gender_confusion: int array (2, 2) or None. Rows are true, columns
            predicted genders (0 = male).
        gender_reliability: `ReliabilityBins` or None. P(female) against
            the fraction of female faces.
        gender_ece: float.
        group_accuracy: float. Age-group accuracy (the group head's, or the
            group of the predicted age for regression models).
        group_confusion: int array (5, 5). Rows true, columns predicted groups.
        group_reliability: `ReliabilityBins` or None. Top-label confidence of
            the group head against its accuracy.
        group_ece: float.
    """

    num_faces: int
    age_true: np.ndarray
    ages: list
    predictions: dict
    has_gender_head: bool
    has_group_head: bool
    num_known_gender: int
    gender: dict | None = None
    gender_accuracy_by_group: dict | None = None
    gender_confusion: np.ndarray | None = None
    gender_reliability: calibration.ReliabilityBins | None = None
    gender_ece: float = math.nan
    group_accuracy: float = math.nan
    group_confusion: np.ndarray | None = None
    group_reliability: calibration.ReliabilityBins | None = None
    group_ece: float = math.nan

    def age(self, estimate):
        """Return the `AgeSummary` of an estimate column, or None when the table lacks it."""
        return next((age for age in self.ages if age.estimate == estimate), None)


def _has_values(predictions, column):
    return column in predictions.columns and bool(predictions[column].notna().any())


def has_group_head(predictions):
    """Return whether a predictions table comes from a group model (M3, M4)."""
    return all(_has_values(predictions, column) for column in GROUP_PROBABILITY_COLUMNS)


def has_gender_head(predictions):
    """Return whether a predictions table comes from a model with a gender head (M1, M3, M5)."""
    return _has_values(predictions, "gender_pred")


def _summarize_age(age_true, age_pred, gender_true, *, estimate, name, num_resamples, seed):
    absolute_errors = np.abs(age_pred - age_true)
    mae_low, mae_high = metrics.bootstrap_mean_interval(absolute_errors, num_resamples=num_resamples, seed=seed)
    mae_by_group = metrics.groupwise_mae(age_true, age_pred)
    return AgeSummary(
        estimate=estimate,
        name=name,
        mae=metrics.mean_absolute_error(age_true, age_pred),
        mae_low=mae_low,
        mae_high=mae_high,
        cs5=metrics.cumulative_score(age_true, age_pred),
        mae_by_group=mae_by_group,
        group_average=metrics.group_average_mae(mae_by_group),
        group_gap=fairness.largest_gap(mae_by_group),
        by_gender=fairness.mae_by_gender(age_true, age_pred, gender_true),
        calibration=calibration.age_calibration_bins(age_true, age_pred),
        residuals=age_pred - age_true,
    )


def _summarize_gender(summary, predictions, gender_true):
    known = ~np.isnan(gender_true)
    gender_pred = predictions["gender_pred"].to_numpy(dtype="float64")
    missing_pred = known & np.isnan(gender_pred)
    if missing_pred.any():
        raise ValueError(
            f"gender_pred is empty in {int(missing_pred.sum())} rows of a model with a gender head. "
            "Expected a prediction for every face."
        )
    if not known.any():
        return

    gender_true, gender_pred = gender_true[known], gender_pred[known]
    summary.gender = metrics.gender_scores(gender_true, gender_pred)
    summary.gender_accuracy_by_group = fairness.gender_accuracy_by_group(
        predictions["group_true"].to_numpy(dtype="float64")[known], gender_true, gender_pred
    )
    summary.gender_confusion = metrics.confusion_matrix(gender_true, gender_pred, num_classes=2)

    if "prob_female" in predictions.columns:
        prob_female = predictions["prob_female"].to_numpy(dtype="float64")[known]
        if np.all(np.isfinite(prob_female)):
            is_female = (gender_true == labels.FEMALE).astype("int64")
            summary.gender_reliability = calibration.reliability_bins(prob_female, is_female)
            summary.gender_ece = calibration.expected_calibration_error(prob_female, is_female)


def summarize_predictions_table(
    predictions, *, num_resamples=metrics.BOOTSTRAP_RESAMPLES, seed=metrics.BOOTSTRAP_SEED
):
    """Compute every number a comparison report shows for one predictions table.

    Undefined values (an empty age group, no predicted female) are nan, and
    their warnings are silenced because the report marks each such value.

    Returns:
        `PredictionSummary`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
        return _summarize(predictions, num_resamples, seed)


def _summarize(predictions, num_resamples, seed):
    age_true = predictions["age_true"].to_numpy(dtype="float64")
    gender_true = predictions["gender_true"].to_numpy(dtype="float64")
    group_head = has_group_head(predictions)

    estimates = [(CENTRE_ESTIMATE, "group centre" if group_head else None)]
    if group_head and _has_values(predictions, EXPECTED_ESTIMATE):
        estimates.append((EXPECTED_ESTIMATE, "expectation"))
    predicted = {column: predictions[column].to_numpy(dtype="float64") for column, _ in estimates}
    for column, values in predicted.items():
        if not np.all(np.isfinite(values)):
            raise ValueError(f"Column {column} has empty or non-numeric values; expected an age for every face.")

    summary = PredictionSummary(
        num_faces=len(predictions),
        age_true=age_true,
        ages=[
            _summarize_age(
                age_true,
                predicted[column],
                gender_true,
                estimate=column,
                name=name,
                num_resamples=num_resamples,
                seed=seed,
            )
            for column, name in estimates
        ],
        predictions=predicted,
        has_gender_head=has_gender_head(predictions),
        has_group_head=group_head,
        num_known_gender=int(np.count_nonzero(~np.isnan(gender_true))),
    )
    if summary.has_gender_head:
        _summarize_gender(summary, predictions, gender_true)

    group_true = predictions["group_true"].to_numpy(dtype="float64")
    group_pred = predictions["group_pred"].to_numpy(dtype="float64")
    summary.group_accuracy = metrics.age_group_accuracy(group_true, group_pred)
    summary.group_confusion = metrics.confusion_matrix(group_true, group_pred, num_classes=labels.NUM_AGE_GROUPS)
    if group_head:
        probabilities = predictions[list(GROUP_PROBABILITY_COLUMNS)].to_numpy(dtype="float64")
        confidence, correct = calibration.top_label_confidence(probabilities, group_true)
        summary.group_reliability = calibration.reliability_bins(confidence, correct)
        summary.group_ece = calibration.expected_calibration_error(confidence, correct)
    return summary


@dataclasses.dataclass
class DeltaTable:
    """MAE of runs with one balancing method minus the MAE of matching baseline runs, in years.

    Attributes:
        method: str. The balancing method, e.g. `oversample`.
        baseline: str. The baseline's method, usually `none`.
        row_labels: list of str. One row per model and age estimate.
        column_labels: list of str. The five age groups, the average of
            groups and all faces.
        values: float array (rows, columns). Negative where balancing
            lowered the MAE; nan where a group is empty in either run.
        pairs: list of `(run name, baseline run name)` per row.
        notes: list of str. Runs left out or chosen among several.
    """

    method: str
    baseline: str
    row_labels: list
    column_labels: list
    values: np.ndarray
    pairs: list
    notes: list


def _match_key(run):
    return tuple(str(run.config.get(key, run.model if key == "model" else "")) for key in MATCH_KEYS)


def _delta_row(summary, baseline_summary, estimate):
    age, baseline_age = summary.age(estimate), baseline_summary.age(estimate)
    values = [age.mae_by_group[label] - baseline_age.mae_by_group[label] for label in labels.AGE_GROUP_LABELS]
    values.append(age.group_average - baseline_age.group_average)
    values.append(age.mae - baseline_age.mae)
    return values


def balance_deltas(runs, summaries, *, baseline="none"):
    """Compare every balancing method with the baseline runs of the same model.

    Args:
        runs: list of finished `Run`.
        summaries: dict. Run name to `PredictionSummary`.
        baseline: str. Balancing method of the baseline runs.

    Returns:
        A list of `DeltaTable`, one per method other than `baseline` that has
        at least one run with a matching baseline: `oversample` first, then
        `reweight`, then other methods by name. Runs match when their config
        agrees on model, backbone, weights and image size.
    """
    baselines = {}
    for run in runs:
        if run.balance == baseline:
            baselines.setdefault(_match_key(run), []).append(run)
    methods = sorted({run.balance for run in runs if run.balance != baseline}, key=run_folders.balance_sort_key)

    tables = []
    for method in methods:
        treated = {}
        for run in runs:
            if run.balance == method:
                treated.setdefault(_match_key(run), []).append(run)

        notes = []
        matched = []
        for key in sorted(treated):
            if key not in baselines:
                names = ", ".join(run.name for run in treated[key])
                notes.append(f"{names}: no run with balance={baseline!r} of the same model, backbone, weights and size")
                continue
            run, baseline_run = treated[key][0], baselines[key][0]
            for group, used in ((treated[key], run), (baselines[key], baseline_run)):
                if len(group) > 1:
                    others = ", ".join(other.name for other in group[1:])
                    notes.append(f"several runs match {key[0].upper()}: used {used.name}, left out {others}")
            matched.append((key, run, baseline_run))
        if not matched:
            continue

        models = [key[0] for key, _, _ in matched]
        row_labels, rows, pairs = [], [], []
        for key, run, baseline_run in matched:
            label = key[0].upper()
            if models.count(key[0]) > 1:
                label += f" ({key[1]}, {key[2]}, {key[3]} px)"
            for age in summaries[run.name].ages:
                if baseline_run.name in summaries and summaries[baseline_run.name].age(age.estimate) is not None:
                    row_labels.append(label + (f", {age.name}" if age.name else ""))
                    rows.append(_delta_row(summaries[run.name], summaries[baseline_run.name], age.estimate))
                    pairs.append((run.name, baseline_run.name))
        tables.append(
            DeltaTable(
                method=method,
                baseline=baseline,
                row_labels=row_labels,
                column_labels=list(labels.AGE_GROUP_LABELS) + [AVERAGE_COLUMN, ALL_FACES_COLUMN],
                values=np.asarray(rows, dtype="float64"),
                pairs=pairs,
                notes=notes,
            )
        )
    return tables
