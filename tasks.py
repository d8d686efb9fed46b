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
        "balance": "Balance the training split over age groups and genders: none, oversample or reweight.",
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
    balance=None,
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
            balance=balance,
        )
        run_training(train_config, data=data, run_dir=run_dir)
    except (ConfigError, DataError, ImageReadError, OSError) as error:
        # Input, option and file problems: a message without a traceback.
        raise Exit(f"error: {error}", code=2) from error


@task(
    help={
        "grid": "Grid file, e.g. experiments/cpu-grid.toml: models x balancing methods.",
        "data": "Data folder with labels.csv and images/ (default: $FACEAGE_DATA, else synthetic faces).",
        "out": "Folder of the grid's runs and grid.json (default: runs/<grid name>-<timestamp>).",
        "limit": "Use only the first N faces in every run, for quick checks.",
        "epochs": "Maximum number of epochs of every run.",
    }
)
def run_all(c, grid, data=None, out=None, limit=None, epochs=None):
    """Train every run of a grid in turn; exit 1 if any failed, after all have run."""
    from faceage_keras.config import ConfigError
    from faceage_keras.grid import run_grid

    try:
        manifest, failed = run_grid(
            grid,
            data=data,
            out_dir=out,
            limit=_int_or_none(limit, "limit"),
            epochs=_int_or_none(epochs, "epochs"),
        )
    except (ConfigError, OSError) as error:
        raise Exit(f"error: {error}", code=2) from error
    print(f"Grid manifest: {manifest}")
    if failed:
        raise Exit(f"error: {len(failed)} run(s) failed: {', '.join(failed)}. Reasons are in {manifest}.", code=1)


@task(
    help={
        "run": "Run folder of a finished training run.",
        "data": "Score all faces of this data folder instead of the run's own test split.",
        "eval_transform": "Render the faces before scoring: historical (a fixed-seed historical-photo look).",
        "label": "Name of the output folder under <run>/evaluations/ (default from --data and --eval-transform).",
        "batch_size": "Faces per prediction batch.",
    }
)
def evaluate(c, run, data=None, eval_transform=None, label=None, batch_size=64):
    """Score a trained run on its test split, another data set or a re-rendered test split."""
    from faceage_keras.config import ConfigError
    from faceage_keras.images import ImageReadError
    from faceage_keras.run_evaluation import evaluate_run
    from faceage_keras.table import DataError

    try:
        out_dir, summary = evaluate_run(
            run,
            data=data,
            eval_transform=eval_transform,
            label=label,
            batch_size=_int_or_none(batch_size, "batch-size"),
        )
    except (ConfigError, DataError, ImageReadError, OSError, ValueError) as error:
        raise Exit(f"error: {error}", code=2) from error
    print(f"MAE {summary['mae']:.2f} years on {summary['num_faces']} faces; results in {out_dir}")
