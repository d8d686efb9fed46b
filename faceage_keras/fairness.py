"""Fairness metrics: the spread of a model's errors across genders and age groups.

Faces are grouped by their TRUE gender (0 = male, 1 = female) and TRUE age
group. A gap is the difference between the best and the worst group, so a
model can have a low MAE overall and still a large gap. Undefined values
(an empty group) are nan with an `UndefinedMetricWarning`, as in `metrics`.
"""

import math
import warnings

import numpy as np

from faceage_keras import labels
from faceage_keras.metrics import UndefinedMetricWarning, _check_targets, _warn_undefined


def mae_by_gender(age_true, age_pred, gender_true):
    """Compute the MAE in years of male and female faces and their gap.

    Faces with an unknown gender (nan) are left out.

    Returns:
        A dict with "male" and "female" (MAE per true gender), "gap"
        (female minus male, so a positive gap means larger errors on women)
        and "num_male" and "num_female" (faces per gender).
    """
    age_true, age_pred = _check_targets(age_true, age_pred, true_name="age_true", pred_name="age_pred")
    gender_true = np.asarray(gender_true, dtype="float64").reshape(-1)
    if gender_true.size != age_true.size:
        raise ValueError(f"gender_true has {gender_true.size} faces but age_true has {age_true.size}.")
    known = ~np.isnan(gender_true)
    if np.any((gender_true[known] != labels.MALE) & (gender_true[known] != labels.FEMALE)):
        raise ValueError(f"gender_true must contain 0 (male), 1 (female) or nan, got {np.unique(gender_true[known])}.")

    absolute_errors = np.abs(age_pred - age_true)
    result = {}
    for code, name in enumerate(labels.GENDER_NAMES):
        in_gender = known & (gender_true == code)
        result[f"num_{name}"] = int(np.count_nonzero(in_gender))
        if np.any(in_gender):
            result[name] = float(np.mean(absolute_errors[in_gender]))
        else:
            result[name] = _warn_undefined(f"No face is {name}, so the MAE of {name} faces is nan.")
    result["gap"] = result["female"] - result["male"]
    return result


def gender_accuracy_by_group(group_true, gender_true, gender_pred):
    """Compute the gender accuracy within each true age group.

    Faces with an unknown true gender (nan) are left out. Returns a dict keyed
    by the labels of `labels.AGE_GROUP_LABELS`, with nan and an
    `UndefinedMetricWarning` for a group without faces of known gender.
    """
    group_true, gender_pred = _check_targets(
        group_true, gender_pred, true_name="group_true", pred_name="gender_pred"
    )
    gender_true = np.asarray(gender_true, dtype="float64").reshape(-1)
    if gender_true.size != group_true.size:
        raise ValueError(f"gender_true has {gender_true.size} faces but group_true has {group_true.size}.")
    known = ~np.isnan(gender_true)

    accuracy_by_group = {}
    for index, label in enumerate(labels.AGE_GROUP_LABELS):
        in_group = known & (group_true == index)
        if np.any(in_group):
            accuracy_by_group[label] = float(np.mean(gender_true[in_group] == gender_pred[in_group]))
        else:
            accuracy_by_group[label] = _warn_undefined(
                f"Age group {label} has no face with a known gender, so its gender accuracy is nan."
            )
    return accuracy_by_group


def largest_gap(values_by_group):
    """Find the groups with the lowest and the highest value and the gap between them.

    `values_by_group` maps group labels to values such as MAEs. Groups with a
    nan value are skipped with an `UndefinedMetricWarning`.

    Returns:
        A dict with "lowest" and "highest" (group labels), "low" and "high"
        (their values) and "gap" (high minus low). Labels are None and values
        nan when no group has a finite value.
    """
    finite = {label: float(value) for label, value in values_by_group.items() if math.isfinite(value)}
    undefined = [label for label in values_by_group if label not in finite]
    if undefined:
        warnings.warn(
            f"Skipping groups {undefined} in the largest gap because their value is undefined.",
            UndefinedMetricWarning,
            stacklevel=2,
        )
    if not finite:
        _warn_undefined("No group has a defined value, so the largest gap is nan.")
        return {"lowest": None, "highest": None, "low": math.nan, "high": math.nan, "gap": math.nan}

    lowest = min(finite, key=finite.get)
    highest = max(finite, key=finite.get)
    return {
        "lowest": lowest,
        "highest": highest,
        "low": finite[lowest],
        "high": finite[highest],
        "gap": finite[highest] - finite[lowest],
    }
