"""Age and gender of face images from a trained run, with calibrated age intervals.

Example:
>>> predictor = Predictor.from_run("runs/m2-20250101-120000")
>>> predictor.predict("portrait.jpg")  # a FacePrediction
>>> predictor.predict(["a.jpg", "b.jpg"], tta=True)  # a DataFrame, one row per face
"""

import dataclasses
import os
import pathlib
import time

import numpy as np
import pandas as pd
from PIL import Image

from faceage_keras import labels
from faceage_keras.interval_calibration import ensure_calibration
from faceage_keras.evaluation import decode_outputs
from faceage_keras.inference import average_views, face_batches, predict_views
from faceage_keras.trained_run import check_run_dir, load_run_model

DEFAULT_BATCH_SIZE = 32


@dataclasses.dataclass
class FacePrediction:
    """The predictions for one face.

    Attributes:
        age: float. Predicted age in years. Group models give the expectation
            of the group centres under the group probabilities.
        age_low, age_high: float. Age interval in years with the nominal
            coverage of the calibration (0.8); nan without a calibration. An
            upper end of 75 means "75 or older".
        age_group: str. Predicted age group, one of `<19`, `19-29`, `30-39`,
            `40-59`, `60+`.
        age_group_probability: float. Probability of that group: the softmax
            output of group models, and for regression models the share of
            calibrated errors that keep the face in the group (nan without a
            calibration).
        gender: str or None. `male` or `female`; None for models without a gender head.
        gender_probability: float or None. Probability of that gender.
        source: str or None. The path the face was read from.
    """

    age: float
    age_low: float
    age_high: float
    age_group: str
    age_group_probability: float
    gender: str | None
    gender_probability: float | None
    source: str | None = None


def _is_single_face(inputs):
    if isinstance(inputs, np.ndarray):
        return inputs.ndim == 3
    return isinstance(inputs, (str, os.PathLike, Image.Image))


class Predictor:
    """A trained model with the preprocessing and age intervals of its run.

    Args:
        model: a model of this package (`FaceAgeModel`).
        calibration: `IntervalCalibration` or None. Without it the age
            intervals and the group probabilities of regression models are nan.
        tta: bool. Default of `predict(tta=...)`.
        batch_size: int. Faces per forward pass.
        run_dir: path or None. The run folder the model came from.
    """

    def __init__(self, model, calibration=None, *, tta=False, batch_size=DEFAULT_BATCH_SIZE, run_dir=None):
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be at least 1. Received: batch_size={batch_size}")
        if calibration is not None and calibration.model != model.task.name:
            raise ValueError(
                f"The calibration is for model {calibration.model}, but the model is {model.task.name}."
            )
        self.model = model
        self.calibration = calibration
        self.tta = bool(tta)
        self.batch_size = int(batch_size)
        self.run_dir = None if run_dir is None else pathlib.Path(run_dir)

    @classmethod
    def from_run(cls, run_dir, *, data=None, tta=False, batch_size=DEFAULT_BATCH_SIZE):
        """Load the best model of a run folder with its preprocessing and age intervals.

        When the run has no `calibration.json` (or one for another model
        file), the intervals are fit on the run's validation faces first and
        saved there. That needs the validation images: from `data`, else from
        the data folder recorded in the run.

        Raises:
            RunFolderError: the folder is incomplete, or the intervals must
                be fit and the validation images cannot be found.
        """
        run_dir = check_run_dir(run_dir)
        model = load_run_model(run_dir)
        calibration = ensure_calibration(run_dir, model, data=data)
        return cls(model, calibration, tta=tta, batch_size=batch_size, run_dir=run_dir)

    @property
    def task(self):
        return self.model.task

    @property
    def model_name(self):
        return self.model.task.name

    @property
    def image_size(self):
        return int(self.model.image_size)

    def predict(self, inputs, *, tta=None):
        """Predict age, age interval, age group and gender of one face or a list of faces.

        Args:
            inputs: a path, a PIL image, a uint8 array (height, width, 3), or
                a list of them. A uint8 array (n, height, width, 3) counts as
                a list. Each image is one face, resized to the model's input
                size as in evaluation.
            tta: bool or None. Average over the face and its mirror image;
                None takes the predictor's default.

        Returns:
            A `FacePrediction` for a single face, else a DataFrame with one
            row per face and the `FacePrediction` fields as columns.
        """
        if _is_single_face(inputs):
            return self.predict_faces([inputs], tta=tta)[0]
        records = self.predict_faces(list(inputs), tta=tta)
        columns = [field.name for field in dataclasses.fields(FacePrediction)]
        return pd.DataFrame([dataclasses.asdict(record) for record in records], columns=columns)

    def predict_faces(self, faces, *, tta=None):
        """Return one `FacePrediction` per face of the list `faces` (see `predict`)."""
        tta = self.tta if tta is None else bool(tta)
        if len(faces) == 0:
            return []
        views = predict_views(self.model, face_batches(faces, self.image_size, self.batch_size), tta=tta)
        decoded = decode_outputs(self.task, average_views(views))
        return self._records(decoded, faces, tta)

    def _records(self, decoded, faces, tta):
        count = len(decoded["group_pred"])
        if self.calibration is None:
            low = high = np.full(count, np.nan)
            prob_group = decoded.get("prob_group", np.full((count, labels.NUM_AGE_GROUPS), np.nan))
        else:
            low, high = self.calibration.interval(decoded, tta=tta)
            prob_group = self.calibration.group_probabilities(decoded, tta=tta)
        age = decoded["age_pred_expected"] if self.task.predicts_age_group else decoded["age_pred"]

        records = []
        for index in range(count):
            group = int(decoded["group_pred"][index])
            gender, gender_probability = None, None
            if self.task.predicts_gender:
                prob_female = float(decoded["prob_female"][index])
                is_female = int(decoded["gender_pred"][index]) == labels.FEMALE
                gender = labels.GENDER_NAMES[labels.FEMALE if is_female else labels.MALE]
                gender_probability = prob_female if is_female else 1.0 - prob_female
            source = faces[index]
            records.append(
                FacePrediction(
                    age=float(age[index]),
                    age_low=float(low[index]),
                    age_high=float(high[index]),
                    age_group=labels.AGE_GROUP_LABELS[group],
                    age_group_probability=float(prob_group[index, group]),
                    gender=gender,
                    gender_probability=gender_probability,
                    source=str(source) if isinstance(source, (str, os.PathLike)) else None,
                )
            )
        return records


def measure_throughput(predictor, faces, *, tta=None):
    """Return faces per second of `predictor.predict_faces` on pre-cropped `faces`, reading included.

    One warm-up batch runs first and is not timed, so that the first call's
    setup cost does not count.

    Args:
        predictor: `Predictor`.
        faces: list of face paths, PIL images or uint8 arrays.
        tta: bool or None. As in `Predictor.predict`.
    """
    if len(faces) == 0:
        raise ValueError("`faces` is empty: need at least one face to time.")
    predictor.predict_faces(faces[: predictor.batch_size], tta=tta)
    start = time.perf_counter()
    predictor.predict_faces(faces, tta=tta)
    return len(faces) / (time.perf_counter() - start)
