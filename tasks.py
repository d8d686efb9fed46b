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


@task(
    iterable=["runs"],
    help={
        "runs": "A run folder, or a folder that contains run folders. Repeat the option for more.",
        "grid": "Grid manifest (grid.json) that lists the runs of an experiment grid, failed ones included.",
        "out": "Output folder for report.md, report.html and figures/ (default: reports/report-<timestamp>).",
        "resamples": "Bootstrap resamples of the 95% MAE intervals.",
        "seed": "Seed of the bootstrap.",
        "baseline_balance": "Balancing method that the ΔMAE heatmaps subtract (balanced minus this).",
    },
)
def report(c, runs=None, grid=None, out=None, resamples=1000, seed=0, baseline_balance="none"):
    """Compare finished runs: tables, fairness, calibration and figures as Markdown and HTML."""
    from faceage_keras.config import ConfigError
    from faceage_keras.report import write_report
    from faceage_keras.run_folders import ReportError

    try:
        if resamples < 1:
            raise ConfigError(f"--resamples must be at least 1. Received: {resamples}")
        out_dir = write_report(
            runs or [],
            grid,
            out,
            num_resamples=resamples,
            seed=seed,
            baseline_balance=baseline_balance,
        )
    except (ConfigError, ReportError, OSError) as error:
        raise Exit(f"error: {error}", code=2) from error
    print(f"Report written to {out_dir}/report.html and {out_dir}/report.md")
