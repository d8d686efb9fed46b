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


def _log_to_console():
    """Show the package's info messages (such as fitting the age intervals) on stderr."""
    import logging

    package_logger = logging.getLogger("faceage_keras")
    package_logger.setLevel(logging.INFO)
    if not logging.getLogger().handlers and not package_logger.handlers:
        console = logging.StreamHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        package_logger.addHandler(console)


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


@task(
    help={
        "run": "Run folder written by `invoke train` (with config.json and best_model.keras).",
        "input": "A photo, or a folder whose files (subfolders included) are all tried as photos.",
        "output": "CSV file to write, one row per face; written only when every photo was handled.",
        "cropped": "Each image is one cropped face: skip face detection (face index 0, box = whole image).",
        "batch_size": "Faces per forward pass (default: 32).",
        "tta": "Average each prediction over the face and its mirror image.",
        "data": "Data folder the run was trained on, when it moved (default: the one in run.json). "
        "Needed only to fit the age intervals once.",
    }
)
def predict(c, run=None, input=None, output=None, cropped=False, batch_size=None, tta=False, data=None):
    """Predict age (with an 80% interval), age group and gender for every face in photos."""
    from faceage_keras.config import ConfigError
    from faceage_keras.photos import PhotoInputError, list_input_files, load_detector, predict_photos
    from faceage_keras.predict import DEFAULT_BATCH_SIZE, Predictor
    from faceage_keras.table import DataError
    from faceage_keras.trained_run import RunFolderError, check_run_dir

    _log_to_console()
    try:
        for option, value in (("run", run), ("input", input), ("output", output)):
            if not value:
                raise ConfigError(f"--{option} is required. See `invoke --help predict`.")
        batch_size = _int_or_none(batch_size, "batch-size")
        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1. Received: {batch_size}")
        # Run folder, input and detector problems show up before the model loads.
        check_run_dir(run)
        list_input_files(input)
        detector = None if cropped else load_detector()
        predictor = Predictor.from_run(run, data=data, tta=tta, batch_size=batch_size)
        summary = predict_photos(predictor, input, output, cropped=cropped, detector=detector)
    except (ConfigError, DataError, RunFolderError, PhotoInputError, OSError) as error:
        raise Exit(f"error: {error}", code=2) from error
    print(summary.format())


@task(
    help={
        "run": "Run folder written by `invoke train`.",
        "split": "Split of the run to measure on: test (default) or val.",
        "data": "Data folder the run was trained on, when it moved (default: the one in run.json).",
        "tta": "Measure the intervals of predictions averaged with the mirror image.",
        "batch_size": "Faces per forward pass (default: 32).",
        "throughput_faces": "Faces of the split to time prediction on (default: 512; 0 skips the timing).",
    }
)
def interval_coverage(c, run=None, split="test", data=None, tta=False, batch_size=None, throughput_faces=None):
    """Measure how often a run's 80% age intervals contain the true age, and prediction speed in faces/s."""
    import json

    from faceage_keras.config import ConfigError
    from faceage_keras.images import ImageReadError
    from faceage_keras.interval_calibration import coverage_report
    from faceage_keras.predict import DEFAULT_BATCH_SIZE, Predictor, measure_throughput
    from faceage_keras.table import DataError
    from faceage_keras.trained_run import RunFolderError, read_split_images

    _log_to_console()
    try:
        if not run:
            raise ConfigError("--run is required. See `invoke --help interval-coverage`.")
        batch_size = _int_or_none(batch_size, "batch-size")
        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        throughput_faces = _int_or_none(throughput_faces, "throughput-faces")
        throughput_faces = 512 if throughput_faces is None else throughput_faces
        if batch_size < 1 or throughput_faces < 0:
            raise ConfigError(
                f"--batch-size must be at least 1 and --throughput-faces at least 0. "
                f"Received: {batch_size} and {throughput_faces}"
            )
        report = coverage_report(run, split=split, data=data, tta=tta, batch_size=batch_size)
        if throughput_faces:
            predictor = Predictor.from_run(run, data=data, tta=tta, batch_size=batch_size)
            paths = list(read_split_images(run, split, data)["path"][:throughput_faces])
            report["throughput_faces"] = len(paths)
            report["faces_per_second"] = measure_throughput(predictor, paths)
    except (ConfigError, DataError, RunFolderError, ImageReadError, OSError, ValueError) as error:
        raise Exit(f"error: {error}", code=2) from error
    print(json.dumps(report, indent=1))
