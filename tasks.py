"""Command-line tasks: `invoke train --model m4`, `invoke --list` for the rest."""

from invoke import Exit, task

MODELS_HELP = "Which model to train: m1, m2, m3, m4 or m5 (default: the config's, else m1)."


def _int_or_none(value, option):
    """Parse an integer option; invoke passes options without a default as strings."""
    from faceage_keras.config import ConfigError

    if value is None:
        return None
    try:
        return int(value)
    except ValueError as error:
        raise ConfigError(f"--{option} must be a whole number. Received: {value!r}") from error


@task(
    help={
        "model": MODELS_HELP,
        "data": "Data folder with labels.csv and images/ (default: $FACEAGE_DATA, else synthetic faces).",
        "config": "Experiment config (TOML), e.g. experiments/cpu/m4.toml. Options given here override it.",
        "backbone": "timm model name of the backbone, e.g. tf_efficientnet_lite0.",
        "weights": "Backbone weights: none, imagenet (download), efficientnet-lite0-package (offline) or a checkpoint path.",
        "image_size": "Side of the square input images in pixels.",
        "epochs": "Maximum number of epochs.",
        "batch_size": "Faces per training step.",
        "limit": "Use only the first N faces after a seeded shuffle, for quick runs.",
        "run_dir": "Output folder (default: runs/<model>-<timestamp>).",
        "skip_bad_rows": "Drop invalid metadata rows (listed in skipped_rows.csv) instead of failing.",
        "workers": "Threads that decode and augment images.",
    }
)
def train(
    c,
    model=None,
    data=None,
    config=None,
    backbone=None,
    weights=None,
    image_size=None,
    epochs=None,
    batch_size=None,
    limit=None,
    run_dir=None,
    skip_bad_rows=False,
    workers=None,
):
    """Train one of the models M1-M5 and evaluate it on its test split."""
    from faceage_keras.config import ConfigError, load_config
    from faceage_keras.images import ImageReadError
    from faceage_keras.table import DataError
    from faceage_keras.training import train as run_training

    try:
        train_config = load_config(
            config,
            model=model,
            backbone=backbone,
            weights=weights,
            image_size=_int_or_none(image_size, "image-size"),
            epochs=_int_or_none(epochs, "epochs"),
            batch_size=_int_or_none(batch_size, "batch-size"),
            limit=_int_or_none(limit, "limit"),
            workers=_int_or_none(workers, "workers"),
            skip_bad_rows=True if skip_bad_rows else None,
        )
        run_training(train_config, data=data, run_dir=run_dir)
    except (ConfigError, DataError, ImageReadError, OSError) as error:
        # Input, option and file problems: a message without a traceback.
        raise Exit(f"error: {error}", code=2) from error


def _float_or_none(value, option):
    """Parse a decimal option given as a string."""
    from faceage_keras.config import ConfigError

    if value is None:
        return None
    try:
        return float(value)
    except ValueError as error:
        raise ConfigError(f"--{option} must be a number. Received: {value!r}") from error


@task(
    help={
        "input": "Folder of photographs to read; subfolders are read too.",
        "output": "Folder to write: images/ with the crops, labels.csv, no_face.csv and unreadable.csv.",
        "detector": "Face detector: mtcnn (default).",
        "size": "Side of the square face crops in pixels (default 224).",
        "margin": "Fraction of the face box's side added on each side of it (default 0.4).",
        "largest_only": "Keep only the largest face of each photo.",
        "labels": "CSV of per-photo labels (image_name, age, gender) to copy onto each photo's faces.",
        "min_score": "Lowest detector score of a face to keep, 0-1 (default 0.9).",
        "overwrite": "Replace the tables of an earlier run in the output folder.",
        "max_detection_side": "Detect on photos shrunk to this longer side in pixels (faster on large scans); crops stay full resolution.",
    }
)
def prepare(
    c,
    input,
    output,
    detector="mtcnn",
    size=None,
    margin=None,
    largest_only=False,
    labels=None,
    min_score=None,
    overwrite=False,
    max_detection_side=None,
):
    """Find, align and crop the faces of a folder of photographs into a data folder."""
    from faceage_keras.config import ConfigError
    from faceage_keras.faces import DetectorUnavailableError, FaceDetectionError
    from faceage_keras.prepare import prepare_folder
    from faceage_keras.table import DataError

    try:
        options = {
            "size": _int_or_none(size, "size"),
            "margin": _float_or_none(margin, "margin"),
            "min_score": _float_or_none(min_score, "min-score"),
            "max_detection_side": _int_or_none(max_detection_side, "max-detection-side"),
        }
        summary = prepare_folder(
            input,
            output,
            detector=detector,
            largest_only=largest_only,
            labels=labels,
            overwrite=overwrite,
            **{name: value for name, value in options.items() if value is not None},
        )
    except (ConfigError, DataError, FaceDetectionError, DetectorUnavailableError, OSError) as error:
        raise Exit(f"error: {error}", code=2) from error
    print(summary.format())
