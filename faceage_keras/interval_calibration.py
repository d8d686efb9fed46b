"""Calibration of a run's age intervals on its validation faces, stored as `<run>/calibration.json`.

The method is in `faceage_keras.intervals`. A run gets two calibrations: one
for plain predictions and one for test-time augmentation (TTA: the mean over
the face and its mirror image), because averaging two views narrows the
spread of the errors.
"""

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import uuid

import numpy as np

from faceage_keras import intervals, labels
from faceage_keras.dataset import FaceDataset
from faceage_keras.evaluation import decode_outputs
from faceage_keras.inference import average_views, face_batches, predict_views
from faceage_keras.trained_run import (
    RunFolderError,
    check_run_dir,
    load_run_model,
    read_split_images,
    read_split_labels,
)
from faceage_keras.training import BEST_MODEL_FILE

logger = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
FORMAT_VERSION = 1


@dataclasses.dataclass
class IntervalCalibration:
    """The fitted age intervals of one model, for plain and for TTA predictions.

    Attributes:
        model: str. `m1` ... `m5`.
        coverage: float. Nominal coverage of the intervals.
        validation_faces: int. Number of validation faces it was fit on.
        plain: `RegressionIntervals` or `GroupIntervals` for plain predictions.
        tta: the same for predictions averaged over the face and its mirror image.
        model_sha256: str or None. Hash of the `best_model.keras` it was fit
            for, so that a retrained model does not reuse old intervals.
    """

    model: str
    coverage: float
    validation_faces: int
    plain: object
    tta: object
    model_sha256: str | None = None

    def intervals_for(self, tta):
        return self.tta if tta else self.plain

    def interval(self, decoded, *, tta=False):
        """Return `(low, high)` ages in years for decoded predictions (see `evaluation.decode_outputs`)."""
        fitted = self.intervals_for(tta)
        if isinstance(fitted, intervals.GroupIntervals):
            return fitted.interval(decoded["prob_group"])
        return fitted.interval(decoded["age_pred"])

    def group_probabilities(self, decoded, *, tta=False):
        """Return (n, 5) age-group probabilities: softmax for group models, residual shares for regression."""
        if "prob_group" in decoded:
            return np.asarray(decoded["prob_group"])
        return self.intervals_for(tta).group_probabilities(decoded["age_pred"])

    def to_dict(self):
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "coverage": self.coverage,
            "validation_faces": self.validation_faces,
            "model_sha256": self.model_sha256,
            "plain": self.plain.to_dict(),
            "tta": self.tta.to_dict(),
        }

    @classmethod
    def from_dict(cls, values):
        if values.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {values.get('format_version')!r} is not {FORMAT_VERSION}")
        return cls(
            model=values["model"],
            coverage=float(values["coverage"]),
            validation_faces=int(values["validation_faces"]),
            plain=intervals.intervals_from_dict(values["plain"]),
            tta=intervals.intervals_from_dict(values["tta"]),
            model_sha256=values.get("model_sha256"),
        )


def file_sha256(path):
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def predict_table(model, table, *, tta=False, batch_size=64):
    """Return the decoded predictions of `model` on the images of a face table, one view or the mean of two."""
    views = predict_views(model, face_batches(list(table["path"]), model.image_size, batch_size), tta=tta)
    return decode_outputs(model.task, average_views(views)), views


def fit_calibration(
    model,
    val_table,
    train_table,
    *,
    coverage=intervals.NOMINAL_COVERAGE,
    batch_size=64,
    min_bin_faces=intervals.MIN_BIN_FACES,
):
    """Fit plain and TTA age intervals of `model` on the validation faces in `val_table`.

    Args:
        model: the trained model of the run.
        val_table: DataFrame with `path` and `age_clipped` of the validation faces.
        train_table: DataFrame with `age_clipped` and `group` of the training
            faces; group models take the age distribution of each group from it.
        coverage: float. Nominal coverage, 0.8 by default.
        batch_size: int. Faces per forward pass.
        min_bin_faces: int. Minimum number of faces per bin of predicted age (regression models).

    Returns:
        An `IntervalCalibration`.
    """
    _, views = predict_table(model, val_table, tta=True, batch_size=batch_size)
    age_true = val_table["age_clipped"].to_numpy(dtype="float64")
    fit_options = {
        "train_ages": train_table["age_clipped"].to_numpy(dtype="float64"),
        "train_groups": train_table["group"].to_numpy(dtype="int64"),
        "coverage": coverage,
        "min_bin_faces": min_bin_faces,
    }
    fitted = {}
    for name, outputs in (("plain", views[0]), ("tta", average_views(views))):
        decoded = decode_outputs(model.task, outputs)
        fitted[name] = intervals.fit_interval_calibration(model.task, decoded, age_true, **fit_options)
    if len(val_table) < min_bin_faces:
        logger.warning(
            "Age intervals fit on only %d validation faces; expect their coverage to vary by several points.",
            len(val_table),
        )
    return IntervalCalibration(model.task.name, coverage, len(val_table), fitted["plain"], fitted["tta"])


def _write_json_atomically(path, values):
    path = pathlib.Path(path)
    # A unique name in the same folder, opened like any new file so that it gets the usual permissions.
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "x", encoding="utf-8") as file:
            json.dump(values, file, indent=1)
            file.write("\n")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_calibration(
    run_dir, model=None, val_data=None, *, data=None, coverage=intervals.NOMINAL_COVERAGE, batch_size=64
):
    """Fit a run's age intervals on its validation faces and write `<run_dir>/calibration.json`.

    Call it at the end of training, or let `Predictor.from_run` call it.

    Args:
        run_dir: path. A finished run folder.
        model: the model saved in the run's `best_model.keras`, or None to load it.
        val_data: `FaceDataset`, DataFrame with `path` and `age_clipped`, or
            None to read the validation split from `splits/val.csv` and the
            run's data folder.
        data: path or None. Data folder to look up the validation images in
            instead of the one recorded in `run.json`.
        coverage: float. Nominal coverage, 0.8 by default.
        batch_size: int. Faces per forward pass.

    Returns:
        The `IntervalCalibration`.

    Raises:
        RunFolderError: the run folder is incomplete or the validation images
            cannot be found.
    """
    run_dir = check_run_dir(run_dir)
    calibration = _fit_run(run_dir, model, val_data, data=data, coverage=coverage, batch_size=batch_size)
    _write_json_atomically(run_dir / CALIBRATION_FILE, calibration.to_dict())
    logger.info("Wrote %s.", run_dir / CALIBRATION_FILE)
    return calibration


def _fit_run(run_dir, model, val_data, *, data, coverage, batch_size):
    model = model if model is not None else load_run_model(run_dir)
    if isinstance(val_data, FaceDataset):
        val_table = val_data.table
    elif val_data is None:
        val_table = read_split_images(run_dir, "val", data)
    else:
        val_table = val_data
    train_table = read_split_labels(run_dir, "train")

    logger.info("Fitting the age intervals of %s on %d validation faces.", run_dir, len(val_table))
    calibration = fit_calibration(model, val_table, train_table, coverage=coverage, batch_size=batch_size)
    calibration.model_sha256 = file_sha256(run_dir / BEST_MODEL_FILE)
    return calibration


def load_calibration(run_dir):
    """Return the `IntervalCalibration` of a run, or None when it has none or one for another model file.

    Raises:
        RunFolderError: `calibration.json` exists but cannot be read.
    """
    run_dir = pathlib.Path(run_dir)
    path = run_dir / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        calibration = IntervalCalibration.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as error:
        raise RunFolderError(f"Cannot read {path}: {type(error).__name__}: {error}. Delete it to refit.") from error
    if calibration.model_sha256 != file_sha256(run_dir / BEST_MODEL_FILE):
        logger.warning("%s was fit for another %s; fitting it again.", path, BEST_MODEL_FILE)
        return None
    return calibration


def ensure_calibration(run_dir, model, *, data=None, batch_size=64):
    """Return the run's `IntervalCalibration`, fitting it first when `calibration.json` is missing or stale.

    When the run folder is read-only, the fitted intervals are kept in memory
    with a warning.
    """
    run_dir = check_run_dir(run_dir)
    calibration = load_calibration(run_dir)
    if calibration is not None:
        return calibration

    calibration = _fit_run(
        run_dir, model, None, data=data, coverage=intervals.NOMINAL_COVERAGE, batch_size=batch_size
    )
    try:
        _write_json_atomically(run_dir / CALIBRATION_FILE, calibration.to_dict())
        logger.info("Wrote %s.", run_dir / CALIBRATION_FILE)
    except PermissionError as error:
        logger.warning("Cannot write %s (%s); using the intervals without saving them.", CALIBRATION_FILE, error)
    return calibration


def coverage_report(run_dir, *, split="test", table=None, data=None, tta=False, batch_size=64):
    """Measure how often the run's age intervals contain the true age on one of its splits.

    The intervals come from `calibration.json`, fit on the validation split
    (and fit now when missing). Ages are compared on the clipped 0-75 scale.

    Args:
        run_dir: path. A finished run folder.
        split: str. The run's split to measure on, `test` by default.
        table: DataFrame or None. Faces to measure on instead of the split,
            with `path` and `age_clipped` columns.
        data: path or None. Data folder of the split's images when it moved.
        tta: bool. Measure the intervals of mirror-averaged predictions.
        batch_size: int. Faces per forward pass.

    Returns:
        A dict: `model`, `split`, `faces`, `tta`, `nominal_coverage`,
        `coverage`, `below` and `above` (shares of faces outside the interval
        on each side), `mean_width` in years, and `coverage_by_group` keyed by
        the true age group.
    """
    run_dir = check_run_dir(run_dir)
    model = load_run_model(run_dir)
    calibration = ensure_calibration(run_dir, model, data=data, batch_size=batch_size)
    if table is None:
        table = read_split_images(run_dir, split, data)
    else:
        split = None

    decoded, _ = predict_table(model, table, tta=tta, batch_size=batch_size)
    low, high = calibration.interval(decoded, tta=tta)
    age_true = table["age_clipped"].to_numpy(dtype="float64")
    true_groups = labels.age_to_group(age_true)
    by_group = {}
    for index, label in enumerate(labels.AGE_GROUP_LABELS):
        members = true_groups == index
        by_group[label] = intervals.interval_coverage(low[members], high[members], age_true[members])

    return {
        "model": calibration.model,
        "split": split,
        "faces": len(table),
        "tta": bool(tta),
        "nominal_coverage": calibration.coverage,
        "coverage": intervals.interval_coverage(low, high, age_true),
        "below": float(np.mean(age_true < low)),
        "above": float(np.mean(age_true > high)),
        "mean_width": float(np.mean(high - low)),
        "coverage_by_group": by_group,
        "validation_faces": calibration.validation_faces,
    }
