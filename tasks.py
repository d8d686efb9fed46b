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


DATA_ACTIONS = ("build",)


@task(
    positional=["action"],
    help={
        "action": "What to do: build.",
        "dataset": "Builder in datasets/: utkface or portrait_archive.",
        "manual_dir": "Source folder: UTKFace crops (or a folder with images/ of them), or an archive with labels.csv and images/.",
        "data_dir": "TFDS data folder to write into (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets).",
    },
)
def data(c, action, dataset=None, manual_dir=None, data_dir=None):
    """Build a face data set in TFDS form: invoke data build --dataset utkface --manual-dir DIR."""
    import logging
    import sys

    from faceage_keras.table import DataError
    from faceage_keras.tfds_faces import DATA_DIR_ENV_VARIABLE, available_builders, build_dataset, default_data_dir

    if action not in DATA_ACTIONS:
        raise Exit(f"error: unknown action {action!r}. Expected one of {list(DATA_ACTIONS)}.", code=2)
    if not dataset or not manual_dir:
        raise Exit(
            f"error: --dataset and --manual-dir are required. Datasets: {available_builders()}.", code=2
        )

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    package_logger = logging.getLogger("faceage_keras")
    package_logger.setLevel(logging.INFO)
    package_logger.addHandler(handler)
    try:
        result = build_dataset(dataset, manual_dir, data_dir=data_dir)
    except (DataError, OSError) as error:
        raise Exit(f"error: {error}", code=2) from error
    finally:
        package_logger.removeHandler(handler)
    if result.built:
        print(f"Built {result.name} {result.version}: {result.num_faces} faces in {result.path} ({result.seconds:.0f} s).")
    else:
        print(f"{result.name} {result.version} is already built in {result.path}. Nothing to do.")
    data_root = result.path.parent.parent
    prefix = "" if data_root == default_data_dir() else f"{DATA_DIR_ENV_VARIABLE}={data_root} "
    print(f"Train on it with: {prefix}invoke train --data tfds:{result.name}:{result.version}")
