"""Calibration of predicted probabilities and of predicted ages.

A classifier is calibrated when, among the faces it gives confidence p, a
fraction p is right. `reliability_bins` groups faces into equal-width
confidence bins, and `expected_calibration_error` (ECE) is the mean gap
between confidence and observed frequency over those bins, weighted by the
faces per bin. For an age estimate, `age_calibration_bins` gives the mean and
spread of the predicted age within each bin of true age.
"""

import dataclasses
import math

import numpy as np

from faceage_keras.metrics import _check_targets, _warn_undefined

# Equal-width confidence bins of reliability diagrams and the ECE.
NUM_CONFIDENCE_BINS = 10
# Width in years of the true-age bins of age calibration curves.
AGE_BIN_WIDTH = 5.0


@dataclasses.dataclass(frozen=True)
class ReliabilityBins:
    """Faces of equal-width confidence bins on [0, 1].

    Attributes:
        edges: float array (num_bins + 1,). Bin edges from 0 to 1.
        counts: int array (num_bins,). Faces per bin.
        mean_confidence: float array (num_bins,). Mean confidence per bin,
            nan for an empty bin.
        frequency: float array (num_bins,). Fraction of faces whose outcome
            is 1 (right, or the positive class), nan for an empty bin.
    """

    edges: np.ndarray
    counts: np.ndarray
    mean_confidence: np.ndarray
    frequency: np.ndarray


def reliability_bins(confidence, outcome, *, num_bins=NUM_CONFIDENCE_BINS):
    """Sort faces into `num_bins` equal-width confidence bins and summarise each bin.

    Args:
        confidence: array-like of probabilities in [0, 1], e.g. P(female) or
            the probability of the predicted age group.
        outcome: array-like of 0 or 1, e.g. whether the face is female or
            whether the predicted group is right.
        num_bins: int. Bin `i` contains confidences in `[i / num_bins, (i + 1) / num_bins)`,
            and the last bin also contains a confidence of exactly 1.

    Returns:
        `ReliabilityBins`.
    """
    confidence, outcome = _check_targets(confidence, outcome, true_name="confidence", pred_name="outcome")
    num_bins = int(num_bins)
    if num_bins < 1:
        raise ValueError(f"num_bins must be at least 1, got {num_bins}.")
    if np.any((confidence < 0) | (confidence > 1)):
        raise ValueError(
            f"confidence must contain probabilities in [0, 1], got values from {confidence.min()} to {confidence.max()}."
        )
    if np.any((outcome != 0) & (outcome != 1)):
        raise ValueError(f"outcome must contain only 0 and 1, got {np.unique(outcome)[:5].tolist()}.")

    indices = np.minimum((confidence * num_bins).astype("int64"), num_bins - 1)
    counts = np.bincount(indices, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(indices, weights=confidence, minlength=num_bins) / counts
        frequency = np.bincount(indices, weights=outcome, minlength=num_bins) / counts
    return ReliabilityBins(
        edges=np.linspace(0.0, 1.0, num_bins + 1),
        counts=counts,
        mean_confidence=mean_confidence,
        frequency=frequency,
    )


def expected_calibration_error(confidence, outcome, *, num_bins=NUM_CONFIDENCE_BINS):
    """Compute the expected calibration error over equal-width confidence bins.

    ECE is the sum over non-empty bins of `count / total * |frequency - mean_confidence|`,
    with the bins of `reliability_bins`. It is 0 for a calibrated model and at
    most 1. Returns nan with an `UndefinedMetricWarning` for empty inputs.
    """
    bins = reliability_bins(confidence, outcome, num_bins=num_bins)
    total = int(bins.counts.sum())
    if total == 0:
        return _warn_undefined("Expected calibration error is undefined for empty inputs, so it is nan.")
    filled = bins.counts > 0
    gaps = np.abs(bins.frequency[filled] - bins.mean_confidence[filled])
    return float(np.sum(bins.counts[filled] / total * gaps))


def top_label_confidence(probabilities, true_classes):
    """Return the probability of the predicted class and whether that class is right, per face.

    Args:
        probabilities: array-like (n, num_classes) of class probabilities.
        true_classes: array-like (n,) of class indices.

    Returns:
        `(confidence, correct)`: float64 and int64 arrays of shape (n,).
    """
    probabilities = np.asarray(probabilities, dtype="float64")
    if probabilities.ndim != 2:
        raise ValueError(f"probabilities must have shape (faces, classes), got {probabilities.shape}.")
    true_classes, _ = _check_targets(
        true_classes, true_classes, true_name="true_classes", pred_name="true_classes", num_classes=probabilities.shape[1]
    )
    if true_classes.size != probabilities.shape[0]:
        raise ValueError(
            f"true_classes has {true_classes.size} faces but probabilities has {probabilities.shape[0]} rows."
        )
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities[np.arange(probabilities.shape[0]), predicted]
    return confidence, (predicted == true_classes).astype("int64")


@dataclasses.dataclass(frozen=True)
class AgeCalibrationBins:
    """Predicted age per bin of true age, in years, for bins with enough faces.

    Attributes:
        lower: float array. Lower edge of each bin.
        counts: int array. Faces per bin.
        mean_true: float array. Mean true age per bin.
        mean_pred: float array. Mean predicted age per bin.
        std_pred: float array. Population standard deviation of the predicted
            age per bin.
    """

    lower: np.ndarray
    counts: np.ndarray
    mean_true: np.ndarray
    mean_pred: np.ndarray
    std_pred: np.ndarray


def age_calibration_bins(age_true, age_pred, *, bin_width=AGE_BIN_WIDTH, min_faces=1):
    """Compute the mean and spread of the predicted age within each bin of true age.

    Bins start at 0 years and are `bin_width` years wide, so bin `i` contains
    true ages in `[i * bin_width, (i + 1) * bin_width)`. Bins with fewer than
    `min_faces` faces are left out. A calibrated age estimate has a mean
    predicted age close to the mean true age in every bin.

    Returns:
        `AgeCalibrationBins`, with empty arrays when no bin has enough faces.
    """
    age_true, age_pred = _check_targets(age_true, age_pred, true_name="age_true", pred_name="age_pred")
    if not (math.isfinite(bin_width) and bin_width > 0):
        raise ValueError(f"bin_width must be a positive number of years, got {bin_width}.")
    if np.any(age_true < 0):
        raise ValueError(f"age_true must be at least 0 years, got {age_true.min()}.")

    indices = np.floor(age_true / bin_width).astype("int64")
    rows = []
    for index in np.unique(indices):
        in_bin = indices == index
        count = int(np.count_nonzero(in_bin))
        if count >= min_faces:
            predicted = age_pred[in_bin]
            rows.append((index * bin_width, count, age_true[in_bin].mean(), predicted.mean(), predicted.std()))
    columns = list(zip(*rows)) if rows else [[]] * 5
    return AgeCalibrationBins(
        lower=np.asarray(columns[0], dtype="float64"),
        counts=np.asarray(columns[1], dtype="int64"),
        mean_true=np.asarray(columns[2], dtype="float64"),
        mean_pred=np.asarray(columns[3], dtype="float64"),
        std_pred=np.asarray(columns[4], dtype="float64"),
    )
