"""Scoring a trained run again: on its own test split, another data set, or a re-rendered test split.

Each evaluation writes `test_predictions.csv`, `metrics.json`, the scatter
and residual figures and `evaluation.json` into `<run>/evaluations/<label>/`,
where `invoke report` finds them and shows them beside the in-domain
test results.
"""

import datetime
import json
import logging
import pathlib

import keras

from faceage_keras.config import load_config
from faceage_keras.dataset import FaceDataset
from faceage_keras.evaluation import evaluate_predictions, predictions_frame
from faceage_keras.models import get_task
from faceage_keras.splits import read_splits
from faceage_keras.sources import load_face_table
from faceage_keras.table import DataError, write_bad_rows
from faceage_keras.training import BEST_MODEL_FILE

logger = logging.getLogger(__name__)

EVALUATIONS_DIR = "evaluations"
EVAL_TRANSFORMS = ("historical",)


def _eval_transform(name):
    """Return the `FaceDataset` transform of an evaluation rendering, seeded by face index."""
    if name is None:
        return None
    if name not in EVAL_TRANSFORMS:
        raise ValueError(f"Unknown eval transform {name!r}. Expected one of {EVAL_TRANSFORMS}.")
    from faceage_keras.historical import render_historical

    return lambda pixels, index: render_historical(pixels, seed=index)


def _default_label(data, eval_transform):
    parts = []
    if data is not None:
        parts.append(str(data).replace(":", "-") if str(data).startswith("tfds:") else pathlib.Path(data).resolve().name)
    if eval_transform is not None:
        parts.append(eval_transform)
    return "-".join(parts) or "test"


def _test_table(run_dir, data):
    """Return the faces to score: the run's test split, or every valid face of `data`."""
    if data is None:
        run_info = json.loads((run_dir / "run.json").read_text())
        table, _ = load_face_table(run_info["data_dir"], skip_bad_rows=True)
        return read_splits(run_dir, table)["test"], []
    return load_face_table(data, skip_bad_rows=True)


def _data_name(data):
    """Return how `evaluation.json` names the data: None, a `tfds:` spec as given, or an absolute folder."""
    if data is None or str(data).startswith("tfds:"):
        return None if data is None else str(data)
    return str(pathlib.Path(data).resolve())


def _check_same_evaluation(out_dir, data_name, eval_transform):
    """Raise DataError when `out_dir` contains an evaluation of other data or another transform."""
    info_path = out_dir / "evaluation.json"
    if not info_path.is_file():
        return
    earlier = json.loads(info_path.read_text())
    if (earlier.get("data"), earlier.get("eval_transform")) != (data_name, eval_transform):
        raise DataError(
            f"{out_dir} contains an evaluation of data {earlier.get('data')!r} with eval transform "
            f"{earlier.get('eval_transform')!r}. Pass --label NAME to keep both, or delete that folder."
        )
    logger.info("Replacing the earlier evaluation in %s.", out_dir)


def evaluate_run(run_dir, *, data=None, eval_transform=None, label=None, batch_size=64, workers=1):
    """Score a run's best model and write the results into `<run_dir>/evaluations/<label>/`.

    Args:
        run_dir: path of a run folder written by `training.train`.
        data: path, str or None. None scores the run's own test split, whose
            data must still exist. A data folder or `tfds:NAME[:VERSION]`
            scores all its valid faces (cross-data-set evaluation) and lists
            the skipped rows in `skipped_rows.csv`.
        eval_transform: str or None. `"historical"` renders every face with
            the historical-photo look, seeded per face, before scoring.
        label: str or None. Name of the output folder; by default the data
            folder's name and/or the transform, else `test`.
        batch_size: int. Faces per prediction batch.
        workers: int. Threads that decode images.

    Returns:
        `(out_dir, metrics)`: the output folder and the metrics dict.
    """
    run_dir = pathlib.Path(run_dir)
    model_path = run_dir / BEST_MODEL_FILE
    if not model_path.is_file():
        raise DataError(f"{run_dir} is not a finished run folder: {BEST_MODEL_FILE} not found.")
    config = load_config(run_dir / "config.json")
    transform = _eval_transform(eval_transform)
    label = label or _default_label(data, eval_transform)
    out_dir = run_dir / EVALUATIONS_DIR / label
    data_name = _data_name(data)
    _check_same_evaluation(out_dir, data_name, eval_transform)

    table, bad_rows = _test_table(run_dir, data)
    if bad_rows:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_bad_rows(bad_rows, out_dir / "skipped_rows.csv")
        logger.warning("Skipped %d invalid rows of %s; see %s.", len(bad_rows), data, out_dir / "skipped_rows.csv")

    task = get_task(config.model)
    faces = FaceDataset(
        table, task, image_size=config.image_size, batch_size=batch_size, transform=transform, workers=workers
    )
    model = keras.models.load_model(model_path)
    outputs = model.predict(faces, verbose=0)
    frame = predictions_frame(task, faces.table, outputs)

    title_prefix = f"{label}: " if label != "test" else ""
    summary = evaluate_predictions(frame, config.model, out_dir, title_prefix=title_prefix)
    info = {
        "label": label,
        "data": data_name,
        "eval_transform": eval_transform,
        "num_faces": len(frame),
        "evaluated": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    (out_dir / "evaluation.json").write_text(json.dumps(info, indent=2) + "\n")
    return out_dir, summary
