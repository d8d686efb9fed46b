"""The real faces that the pipeline and prediction measurements read."""

import json
import pathlib

from faceage_keras.splits import read_splits
from faceage_keras.table import read_labels

FACE_SEED = 0


def sample_faces(data_dir, count, seed=FACE_SEED):
    """Return the first `count` faces of `data_dir` after a seeded shuffle, as a labels table."""
    table, _ = read_labels(data_dir, skip_bad_rows=True, check_images=False, limit=count, seed=seed)
    return table


def run_test_faces(data_dir, run_dir, count):
    """Return the first `count` faces of the test split that the run in `run_dir` saved.

    Faces of the test split took no part in training or epoch selection, so
    their MAE is a fair estimate of the run's error.
    """
    table, _ = read_labels(data_dir, skip_bad_rows=True, check_images=False)
    return read_splits(run_dir, table)["test"].head(count).reset_index(drop=True)


def benchmark_faces(data_dir, count, run_dir=None):
    """Return the faces to measure: the run's test faces with `run_dir`, else a seeded sample."""
    if run_dir is None:
        return sample_faces(data_dir, count)
    return run_test_faces(data_dir, run_dir, count)


def write_faces_csv(faces, path):
    """Write the columns that the prediction measurements read: path, clipped age, gender and group."""
    faces[["path", "age_clipped", "gender", "group"]].to_csv(path, index=False)


def warm_file_cache(paths):
    """Read every file once, so that timings measure decoding rather than the first disk read."""
    for path in paths:
        pathlib.Path(path).read_bytes()


def read_run_config(run_dir):
    """Return the `config.json` of a training run as a dict."""
    path = pathlib.Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --run needs the folder of a finished training run.")
    return json.loads(path.read_text())
