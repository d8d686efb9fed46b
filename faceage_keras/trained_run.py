"""Reading a finished training run folder: its config, best model and split tables."""

import json
import logging
import pathlib

import keras
import pandas as pd

from faceage_keras.labels import clip_age
from faceage_keras.models import get_task
from faceage_keras.splits import SPLIT_NAMES, SPLITS_DIR
from faceage_keras.table import IMAGES_DIR, resolve_image_path
from faceage_keras.training import BEST_MODEL_FILE

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
RUN_INFO_FILE = "run.json"


class RunFolderError(ValueError):
    """A run folder that lacks a file or whose data cannot be found."""


def check_run_dir(run_dir):
    """Return `run_dir` as a Path after checking that it contains a config and a trained model.

    Raises:
        RunFolderError: the folder, `config.json` or `best_model.keras` is missing.
    """
    run_dir = pathlib.Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise RunFolderError(f"Run folder {run_dir} not found. Pass the folder that `invoke train` wrote.")
    for name in (CONFIG_FILE, BEST_MODEL_FILE):
        if not (run_dir / name).is_file():
            raise RunFolderError(
                f"{run_dir} is not a finished run folder: {name} is missing. "
                f"Pass a folder written by `invoke train` after its training ended."
            )
    return run_dir


def load_run_config(run_dir):
    """Return the settings saved in a run's `config.json` as a dict.

    Only `model` and `image_size` are checked, so runs whose config has
    settings of another version of this package still load.

    Raises:
        RunFolderError: `config.json` is missing, not JSON, or lacks those keys.
    """
    path = check_run_dir(run_dir) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        model_name = get_task(config["model"]).name
        image_size = int(config["image_size"])
    except (ValueError, KeyError, TypeError) as error:
        raise RunFolderError(
            f"Invalid {path}: {type(error).__name__}: {error}. It needs the keys `model` and `image_size`."
        ) from error
    return {**config, "model": model_name, "image_size": image_size}


def load_run_model(run_dir):
    """Load the best model of a run folder, checking that it matches the run's config.

    Raises:
        RunFolderError: the model file cannot be loaded or its model or input
            size differ from `config.json`.
    """
    run_dir = check_run_dir(run_dir)
    config = load_run_config(run_dir)
    try:
        model = keras.models.load_model(run_dir / BEST_MODEL_FILE)
    except (OSError, ValueError, TypeError) as error:
        raise RunFolderError(f"Cannot load {run_dir / BEST_MODEL_FILE}: {type(error).__name__}: {error}") from error

    image_size = int(model.input_shape[1])
    task_name = getattr(getattr(model, "task", None), "name", None)
    if task_name != config["model"] or image_size != config["image_size"]:
        raise RunFolderError(
            f"{BEST_MODEL_FILE} in {run_dir} is model {task_name} at {image_size} px, but {CONFIG_FILE} "
            f"says {config['model']} at {config['image_size']} px. The folder mixes files of two runs."
        )
    return model


def run_data_dir(run_dir, data=None):
    """Return the data folder of a run: `data` when given, else the one recorded in `run.json`.

    Raises:
        RunFolderError: neither is available.
    """
    if data is not None:
        return pathlib.Path(data).expanduser()
    info_path = pathlib.Path(run_dir) / RUN_INFO_FILE
    if not info_path.is_file():
        raise RunFolderError(
            f"{info_path} not found, so the run's data folder is unknown. "
            f"Pass the folder with labels.csv and images/ the run was trained on (data= or --data)."
        )
    return pathlib.Path(json.loads(info_path.read_text())["data_dir"])


def read_split_labels(run_dir, name):
    """Return the saved split `name` of a run (image_name, age, gender, group) without touching images.

    The table also gets `age_clipped`, the 0-75 ages of training and metrics.
    """
    if name not in SPLIT_NAMES:
        raise ValueError(f"`name` must be one of {SPLIT_NAMES}. Received: name={name!r}")
    path = pathlib.Path(run_dir) / SPLITS_DIR / f"{name}.csv"
    if not path.is_file():
        raise RunFolderError(f"{path} not found; the run folder lacks its saved splits.")
    table = pd.read_csv(path, dtype={"image_name": str})
    table["age_clipped"] = clip_age(table["age"].to_numpy())
    return table


def read_split_images(run_dir, name, data=None):
    """Return the split `name` of a run as a table for `FaceDataset`, with the path of every image.

    The images are looked up in `data/images/`, else in the images folder of
    the data folder recorded in `run.json`.

    Raises:
        RunFolderError: the data folder is unknown or lacks some of the
            split's images.
    """
    table = read_split_labels(run_dir, name)
    images_dir = run_data_dir(run_dir, data) / IMAGES_DIR
    table["path"] = [str(resolve_image_path(images_dir, image_name)) for image_name in table["image_name"]]

    missing = [path for path in table["path"] if not pathlib.Path(path).is_file()]
    if missing:
        raise RunFolderError(
            f"{len(missing)} of the {len(table)} {name} images of run {run_dir} are missing, e.g. {missing[0]}. "
            f"Pass the data folder the run was trained on (data= or --data)."
        )
    return table
