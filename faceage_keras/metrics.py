"""Evaluation metrics for age and gender predictions.

All metrics take array-likes, compute with numpy in float64 and return Python
floats. Names carry the direction: a `*_error` or `mae*` value is better when
lower, a `*_score` or accuracy is better when higher. Ages are in years.

A metric can be undefined for its input, for example with no faces at all, an
empty age group, or no predicted female for precision. It then issues an
`UndefinedMetricWarning` and returns nan instead of raising, so that one empty
group does not stop an evaluation run.
"""

import math
import re
import warnings

import numpy as np

from faceage_keras import labels

# Columns that every test predictions table passed to `summarize_predictions` must have.
PREDICTION_COLUMNS = (
    "image_name",
    "age_true",
    "age_pred",
    "group_true",
    "group_pred",
    "gender_true",
    "gender_pred",
    "prob_female",
)

# Threshold in years of the cumulative score reported as `cs5`.
CS_THRESHOLD = 5.0


class UndefinedMetricWarning(UserWarning):
    """Warning issued when a metric is undefined for its input and nan is returned."""


def group_metric_suffix(label):
    """Convert an age-group label such as `<19` or `60+` into a metric-name suffix.

    The suffix contains only letters, digits and underscores, so it can be used
    in Keras metric names and CSV column names: `<19` -> `lt19`,
    `19-29` -> `19_29`, `60+` -> `60plus`.
    """
    suffix = str(label).strip().replace("<", "lt").replace("+", "plus").replace("-", "_")
    if not re.fullmatch(r"[A-Za-z0-9_]+", suffix):
        raise ValueError(
            f"Cannot convert age-group label {label!r} into a metric-name suffix. "
            f"The result {suffix!r} contains characters other than letters, digits and underscores."
        )
    return suffix


# Metric-name suffixes of the age groups, in the order of labels.AGE_GROUP_LABELS.
GROUP_METRIC_SUFFIXES = tuple(group_metric_suffix(label) for label in labels.AGE_GROUP_LABELS)


def _warn_undefined(message):
    warnings.warn(message, UndefinedMetricWarning, stacklevel=3)
    return math.nan


def _check_targets(y_true, y_pred, *, true_name="y_true", pred_name="y_pred", num_classes=None):
    """Validate a pair of target arrays and return them as 1-D numpy arrays.

    Both inputs must convert to numbers, have the same length and contain no
    nan or infinity. A column vector of shape `(n, 1)`, as Keras returns for a
    single output unit, is flattened. Without `num_classes` the arrays are
    returned as float64. With it, every value must be an integer in
    `[0, num_classes)` and the arrays are returned as int64.
    Empty arrays are valid here, so that each metric decides what to return.
    """
    arrays = []
    for values, name in ((y_true, true_name), (y_pred, pred_name)):
        try:
            array = np.asarray(values, dtype="float64")
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name} must contain numbers: {error}") from error

        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise ValueError(f"{name} must be a 1-D array or a column vector, got shape {array.shape}.")

        num_invalid = int(np.count_nonzero(~np.isfinite(array)))
        if num_invalid:
            raise ValueError(
                f"{name} contains {num_invalid} nan or infinite values out of {array.size}. "
                "Drop those rows before computing the metric."
            )

        if num_classes is not None:
            invalid = (array != np.round(array)) | (array < 0) | (array >= num_classes)
            if np.any(invalid):
                examples = np.unique(array[invalid])[:5].tolist()
                raise ValueError(
                    f"{name} must contain class indices 0 to {num_classes - 1}, "
                    f"got invalid values such as {examples}."
                )
            array = array.astype("int64")

        arrays.append(array)

    if arrays[0].shape[0] != arrays[1].shape[0]:
        raise ValueError(
            f"{true_name} and {pred_name} must have the same length, "
            f"got {arrays[0].shape[0]} and {arrays[1].shape[0]}."
        )
    return arrays[0], arrays[1]


def mean_absolute_error(y_true, y_pred):
    """Compute the mean absolute error, in the unit of the inputs (years for ages).

    Returns nan with an `UndefinedMetricWarning` for empty inputs.
    """
    y_true, y_pred = _check_targets(y_true, y_pred)
    if y_true.size == 0:
        return _warn_undefined("Mean absolute error is undefined for empty inputs, so it is nan.")
    return float(np.mean(np.abs(y_pred - y_true)))


def groupwise_mae(age_true, age_pred):
    """Compute the mean absolute error in years within each age group.

    Faces are grouped by their TRUE age with `labels.age_to_group`. Returns a
    dict keyed by the labels of `labels.AGE_GROUP_LABELS` ("<19", "19-29", ...)
    in that order. A group without faces gets nan and an `UndefinedMetricWarning`.
    """
    age_true, age_pred = _check_targets(age_true, age_pred, true_name="age_true", pred_name="age_pred")
    groups = labels.age_to_group(age_true)
    absolute_errors = np.abs(age_pred - age_true)

    mae_by_group = {}
    for index, label in enumerate(labels.AGE_GROUP_LABELS):
        in_group = groups == index
        if np.any(in_group):
            mae_by_group[label] = float(np.mean(absolute_errors[in_group]))
        else:
            mae_by_group[label] = _warn_undefined(
                f"Age group {label} contains no faces, so its mean absolute error is nan."
            )
    return mae_by_group


def group_average_mae(mae_by_group):
    """Average group MAEs without weighting by group size.

    `mae_by_group` maps group labels to MAEs, as `groupwise_mae` returns. This
    average gives each age group the same weight, so the many young adults in
    typical face data sets do not hide errors on children and the elderly.
    Groups with a nan MAE are skipped with an `UndefinedMetricWarning`. Returns
    nan with a warning when no group has a finite MAE.
    """
    values = np.asarray(list(mae_by_group.values()), dtype="float64")
    undefined = [label for label, value in mae_by_group.items() if not np.isfinite(value)]
    if undefined:
        warnings.warn(
            f"Skipping age groups {undefined} in the average of group MAEs because their MAE is undefined.",
            UndefinedMetricWarning,
            stacklevel=2,
        )

    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return _warn_undefined("No age group has a defined MAE, so the average of group MAEs is nan.")
    return float(np.mean(finite))


def cumulative_score(y_true, y_pred, *, threshold=CS_THRESHOLD):
    """Compute the fraction of faces whose absolute age error is at most `threshold` years.

    The bound is inclusive, so an error of exactly `threshold` counts as a hit.
    With the default threshold this is CS@5. Returns a value in [0, 1], or nan
    with an `UndefinedMetricWarning` for empty inputs.
    """
    threshold = float(threshold)
    if not (np.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold must be a finite number of years >= 0, got {threshold}.")

    y_true, y_pred = _check_targets(y_true, y_pred)
    if y_true.size == 0:
        return _warn_undefined("Cumulative score is undefined for empty inputs, so it is nan.")
    return float(np.mean(np.abs(y_pred - y_true) <= threshold))


def age_group_accuracy(group_true, group_pred):
    """Compute the fraction of faces whose predicted age group is the true one.

    Groups are indices 0 to 4 in the order of `labels.AGE_GROUP_LABELS`.
    Returns nan with an `UndefinedMetricWarning` for empty inputs.
    """
    group_true, group_pred = _check_targets(
        group_true,
        group_pred,
        true_name="group_true",
        pred_name="group_pred",
        num_classes=labels.NUM_AGE_GROUPS,
    )
    if group_true.size == 0:
        return _warn_undefined("Age-group accuracy is undefined for empty inputs, so it is nan.")
    return float(np.mean(group_true == group_pred))


def gender_scores(gender_true, gender_pred):
    """Compute accuracy, precision, recall and F1 of gender predictions.

    Genders are coded 0 = male, 1 = female, and the POSITIVE class is female:
    precision is the fraction of predicted females that are female, and recall
    is the fraction of females predicted female. F1 is computed as
    2 TP / (2 TP + FP + FN), as in scikit-learn, so it stays defined when only
    one of precision and recall is.

    Returns a dict with keys "accuracy", "precision", "recall" and "f1". A score
    whose denominator is zero (precision without predicted females, recall
    without true females, all of them for empty inputs) is nan and issues an
    `UndefinedMetricWarning`.
    """
    gender_true, gender_pred = _check_targets(
        gender_true, gender_pred, true_name="gender_true", pred_name="gender_pred", num_classes=2
    )
    true_female = gender_true == labels.FEMALE
    pred_female = gender_pred == labels.FEMALE
    true_positives = int(np.count_nonzero(true_female & pred_female))
    false_positives = int(np.count_nonzero(~true_female & pred_female))
    false_negatives = int(np.count_nonzero(true_female & ~pred_female))

    if gender_true.size:
        accuracy = float(np.mean(gender_true == gender_pred))
    else:
        accuracy = _warn_undefined("Gender accuracy is undefined for empty inputs, so it is nan.")

    if true_positives + false_positives:
        precision = true_positives / (true_positives + false_positives)
    else:
        precision = _warn_undefined("Gender precision is undefined because no face is predicted female.")

    if true_positives + false_negatives:
        recall = true_positives / (true_positives + false_negatives)
    else:
        recall = _warn_undefined("Gender recall is undefined because no face is female.")

    f1_denominator = 2 * true_positives + false_positives + false_negatives
    if f1_denominator:
        f1 = 2 * true_positives / f1_denominator
    else:
        f1 = _warn_undefined("Gender F1 is undefined because no face is female or predicted female.")

    return {
        "accuracy": float(accuracy),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
    }


def summarize_predictions(predictions, *, model_name):
    """Compute the metrics of one model's test predictions, as stored in a run's `metrics.json`.

    `predictions` is a pandas DataFrame with the columns of `PREDICTION_COLUMNS`.
    `age_true` is the clipped true age in years. `gender_true` is nan where the
    data set has no gender, and `gender_pred` is nan in every row for a model
    without a gender head. Group models also provide `age_pred_expected`, the
    expectation of the group centres under the predicted group distribution.

    Returns a JSON-serialisable dict with the keys "model", "num_faces", "mae",
    "mae_by_group", "mae_group_average", "cs5", "age_group_accuracy" and
    "gender". "gender" is the dict of `gender_scores` over the faces with a
    known true gender, or None for a model without a gender head. With an
    `age_pred_expected` column, the dict also has "mae_expected",
    "mae_by_group_expected" and "cs5_expected". Values are nan only where the
    metric is undefined, and each such case issues an `UndefinedMetricWarning`.
    """
    missing = [column for column in PREDICTION_COLUMNS if column not in predictions.columns]
    if missing:
        raise ValueError(
            f"The predictions table of model {model_name!r} is missing the columns {missing}. "
            f"Expected at least {list(PREDICTION_COLUMNS)}."
        )

    age_true = predictions["age_true"].to_numpy(dtype="float64")
    age_pred = predictions["age_pred"].to_numpy(dtype="float64")
    mae_by_group = groupwise_mae(age_true, age_pred)
    summary = {
        "model": str(model_name),
        "num_faces": int(len(predictions)),
        "mae": mean_absolute_error(age_true, age_pred),
        "mae_by_group": mae_by_group,
        "mae_group_average": group_average_mae(mae_by_group),
        "cs5": cumulative_score(age_true, age_pred, threshold=CS_THRESHOLD),
        "age_group_accuracy": age_group_accuracy(
            predictions["group_true"].to_numpy(dtype="float64"),
            predictions["group_pred"].to_numpy(dtype="float64"),
        ),
        "gender": _summarize_gender(predictions, model_name=model_name),
    }

    if "age_pred_expected" in predictions.columns:
        age_pred_expected = predictions["age_pred_expected"].to_numpy(dtype="float64")
        summary["mae_expected"] = mean_absolute_error(age_true, age_pred_expected)
        summary["mae_by_group_expected"] = groupwise_mae(age_true, age_pred_expected)
        summary["cs5_expected"] = cumulative_score(age_true, age_pred_expected, threshold=CS_THRESHOLD)
    return summary


def _summarize_gender(predictions, *, model_name):
    """Return `gender_scores` over faces with a known true gender, or None without a gender head."""
    gender_true = predictions["gender_true"].to_numpy(dtype="float64")
    gender_pred = predictions["gender_pred"].to_numpy(dtype="float64")

    missing_pred = np.isnan(gender_pred)
    if np.all(missing_pred):
        return None
    if np.any(missing_pred):
        raise ValueError(
            f"gender_pred of model {model_name!r} is missing in {int(missing_pred.sum())} of "
            f"{gender_pred.size} rows. Expected a prediction in every row, or in none for a model "
            "without a gender head."
        )

    known = ~np.isnan(gender_true)
    return gender_scores(gender_true[known], gender_pred[known])


# Resamples and seed of the bootstrap intervals in comparison reports.
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
# Resampled values held in memory at once, so that large test sets fit.
_BOOTSTRAP_CHUNK_VALUES = 2_000_000


def bootstrap_mean_interval(values, *, confidence=0.95, num_resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED):
    """Compute a percentile bootstrap interval of the mean of per-face `values`.

    Each resample draws `len(values)` faces with replacement, and the interval
    bounds are the `(1 - confidence) / 2` and `(1 + confidence) / 2` quantiles
    of the resample means. Pass absolute age errors to get an interval of the
    MAE. The generator is seeded, so the same input gives the same interval.

    Returns:
        `(low, high)` as Python floats, or `(nan, nan)` with an
        `UndefinedMetricWarning` for empty inputs.
    """
    values, _ = _check_targets(values, values, true_name="values", pred_name="values")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}.")
    if int(num_resamples) < 1:
        raise ValueError(f"num_resamples must be at least 1, got {num_resamples}.")
    if values.size == 0:
        _warn_undefined("A bootstrap interval is undefined for empty inputs, so it is nan.")
        return math.nan, math.nan

    rng = np.random.default_rng(seed)
    num_resamples = int(num_resamples)
    resamples_per_chunk = max(1, _BOOTSTRAP_CHUNK_VALUES // values.size)
    means = []
    for start in range(0, num_resamples, resamples_per_chunk):
        size = min(resamples_per_chunk, num_resamples - start)
        indices = rng.integers(0, values.size, size=(size, values.size))
        means.append(values[indices].mean(axis=1))
    means = np.concatenate(means)

    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def confusion_matrix(true_classes, pred_classes, *, num_classes):
    """Count faces per (true class, predicted class) pair.

    Returns an int64 array of shape `(num_classes, num_classes)` whose row is
    the true class and whose column is the predicted class. Classes are
    indices 0 to `num_classes - 1`, such as age groups or genders (0 = male).
    """
    true_classes, pred_classes = _check_targets(
        true_classes, pred_classes, true_name="true_classes", pred_name="pred_classes", num_classes=num_classes
    )
    counts = np.zeros((num_classes, num_classes), dtype="int64")
    np.add.at(counts, (true_classes, pred_classes), 1)
    return counts
