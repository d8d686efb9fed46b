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


@task(
    help={
        "data": "Data folder with labels.csv and images/ (default: $FACEAGE_DATA).",
        "output": "PNG file to write (default: docs/historical_look.png).",
        "faces": "Number of faces, spread over the five age groups and both genders (default: 10).",
        "image_size": "Side in pixels the faces are resized to before the look, as in training (default: 112).",
        "seed": "Seed of the face choice and of the rendering (default: 0).",
    }
)
def figure_historical(c, data=None, output="docs/historical_look.png", faces=10, image_size=112, seed=0):
    """Plot real faces before and after the historical-photograph look, and each effect alone."""
    import os

    data = data or os.environ.get("FACEAGE_DATA")
    if not data:
        raise Exit("error: give --data or set FACEAGE_DATA to a folder with labels.csv and images/.", code=2)
    labels_path = os.path.join(data, "labels.csv")
    if not os.path.isfile(labels_path):
        raise Exit(f"error: {labels_path} not found. --data must be a folder with labels.csv and images/.", code=2)

    import numpy as np
    import pandas as pd
    from PIL import Image

    from faceage_keras.config import ConfigError
    from faceage_keras.images import ImageReadError, load_rgb
    from faceage_keras.labels import age_to_group
    from faceage_keras.plots import plot_historical_look

    try:
        num_faces = _int_or_none(faces, "faces")
        size = _int_or_none(image_size, "image-size")
        seed = _int_or_none(seed, "seed")
    except ConfigError as error:
        raise Exit(f"error: {error}", code=2) from error

    # Face i comes from age group i % 5 and gender i % 2, so a few faces span ages and genders.
    labels = pd.read_csv(labels_path, dtype={"image_name": str})
    labels["group"] = age_to_group(labels["age"].to_numpy(dtype="float64"))
    genders = sorted(labels["gender"].unique())
    rows = []
    for index in range(num_faces):
        cell = labels[(labels["group"] == index % 5) & (labels["gender"] == genders[index % len(genders)])]
        cell = cell.drop(index=[row.name for row in rows], errors="ignore")
        if len(cell):
            rows.append(cell.sample(n=1, random_state=seed + index).iloc[0])
    if not rows:
        raise Exit(f"error: {labels_path} lists no faces.", code=2)

    images, captions = [], []
    try:
        for row in rows:
            image = load_rgb(os.path.join(data, "images", row["image_name"]))
            images.append(np.asarray(image.resize((size, size), Image.BILINEAR)))
            captions.append(f"{row['age']:g} years, {row['gender']}")
    except ImageReadError as error:
        raise Exit(f"error: {error}", code=2) from error

    path = plot_historical_look(images, output, captions=captions, seed=seed)
    print(f"Wrote {path}")
