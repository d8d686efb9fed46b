"""A complete training run: data, splits, model, `fit`, test evaluation and the run folder."""

import datetime
import json
import logging
import os
import pathlib
import platform
import sys
import time

import keras
import pandas as pd
import timm
import torch

from faceage_keras import plots, synthetic
from faceage_keras.config import ConfigError
from faceage_keras.callbacks import EpochLogLine, SelectBestEpoch, ValidationMetrics
from faceage_keras.dataset import FaceDataset
from faceage_keras.evaluation import evaluate_predictions, predictions_frame
from faceage_keras.models import build_model
from faceage_keras.splits import split_table, write_splits
from faceage_keras.sources import load_face_table, resolve_data
from faceage_keras.table import write_bad_rows

logger = logging.getLogger(__name__)

DATA_ENV_VARIABLE = "FACEAGE_DATA"
BEST_MODEL_FILE = "best_model.keras"
SYNTHETIC_FACES = 600


def _cache_dir():
    root = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(root) / "faceage_keras"


def resolve_data_dir(data=None):
    """Return `(data_dir, is_synthetic)` from `data`, else `$FACEAGE_DATA`, else synthetic faces.

    A TFDS spec `tfds:NAME[:VERSION]` resolves to the folder of the built version.
    """
    data = data or os.environ.get(DATA_ENV_VARIABLE)
    if data:
        return resolve_data(data), False
    directory = synthetic.write_synthetic_dataset(_cache_dir() / "synthetic", num_images=SYNTHETIC_FACES)
    logger.warning(
        "No data given: training on %d SYNTHETIC drawn portraits in %s. Results say nothing about real faces. "
        "For real data pass --data DIR or set %s to a folder with labels.csv and images/.",
        SYNTHETIC_FACES,
        directory,
        DATA_ENV_VARIABLE,
    )
    return directory, True


def _start_log_file(run_dir):
    package_logger = logging.getLogger("faceage_keras")
    package_logger.setLevel(logging.INFO)
    if not logging.getLogger().handlers and not package_logger.handlers:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(message)s"))
        package_logger.addHandler(console)
    file_handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_logger.addHandler(file_handler)
    return file_handler


def make_optimizer(config):
    """Return the Keras optimizer the config names."""
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(config.learning_rate, momentum=config.momentum, global_clipnorm=config.global_clipnorm)
    return keras.optimizers.AdamW(config.learning_rate, weight_decay=config.weight_decay, global_clipnorm=config.global_clipnorm)


def step_schedule(config):
    """Return the epoch -> learning rate function: a factor every `lr_step_epochs` epochs."""

    def schedule(epoch, learning_rate=None):
        return config.learning_rate * config.lr_step_factor ** (epoch // config.lr_step_epochs)

    return schedule


def _new_run_dir(model_name, run_dir):
    if run_dir is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = pathlib.Path("runs") / f"{model_name}-{stamp}"
    run_dir = pathlib.Path(run_dir)
    # A folder left by a run that failed before writing results holds only its log.
    if run_dir.exists() and {path.name for path in run_dir.iterdir()} - {"train.log"}:
        raise FileExistsError(f"Run folder {run_dir} exists and is not empty; choose another --run-dir.")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _load_splits(config, data_dir, run_dir):
    table, bad_rows = load_face_table(
        data_dir, skip_bad_rows=config.skip_bad_rows, limit=config.limit, seed=config.seed
    )
    if bad_rows:
        write_bad_rows(bad_rows, run_dir / "skipped_rows.csv")
    if config.limit is not None:
        logger.info("Using the first %d faces after a shuffle with seed %d (--limit).", len(table), config.seed)
    splits = split_table(table, seed=config.seed)
    write_splits(splits, run_dir)
    return splits


def _write_run_info(run_dir, config, data_dir, is_synthetic, splits):
    info = {
        "model": config.model,
        "data_dir": str(pathlib.Path(data_dir).resolve()),
        "synthetic_data": is_synthetic,
        "num_faces": {name: len(split) for name, split in splits.items()},
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "versions": {
            "python": platform.python_version(),
            "keras": keras.__version__,
            "torch": torch.__version__,
            "timm": timm.__version__,
        },
    }
    config.save(run_dir / "config.json")
    (run_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")


def train(config, *, data=None, run_dir=None):
    """Train one model with the settings in `config` and evaluate it on the test split.

    Args:
        config: `TrainConfig`.
        data: path, str or None. Data folder with `labels.csv` and `images/`,
            or a TFDS data set `tfds:NAME[:VERSION]`; None reads
            `$FACEAGE_DATA`, and without it a synthetic set is used.
        run_dir: path or None. Output folder; by default
            `runs/<model>-<timestamp>`.

    Returns:
        The run folder, holding `config.json`, `run.json`, `splits/`,
        `train.log`, `history.csv`, `best_model.keras`, `loss_curve.png`,
        `val_mae_curve.png`, `test_predictions.csv`, `metrics.json`,
        `test_scatter.png` and `residuals.png`.
    """
    run_dir = _new_run_dir(config.model, run_dir)
    log_file = _start_log_file(run_dir)
    try:
        return _train(config, data, run_dir)
    except Exception as error:
        logger.error("Run failed: %s: %s", type(error).__name__, error)
        raise
    finally:
        logging.getLogger("faceage_keras").removeHandler(log_file)
        log_file.close()


def _build_model(config):
    try:
        return build_model(
            config.model,
            backbone=config.backbone,
            weights=config.weights,
            image_size=config.image_size,
            freeze_backbone=config.freeze_backbone,
            dropout=config.dropout,
            age_bias=config.age_bias,
            model_kwargs=config.model_kwargs,
        )
    except ValueError as error:
        raise ConfigError(str(error)) from error


def _train(config, data, run_dir):
    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    data_dir, is_synthetic = resolve_data_dir(data)
    logger.info("Run %s: model %s, data %s.", run_dir, config.model, data_dir)

    # Model first, so that a wrong backbone or weights setting fails before the data is read.
    model = _build_model(config)
    model.compile(optimizer=make_optimizer(config))
    logger.info(
        "%s (%s): %s backbone with weights %r, %s parameters.",
        config.model,
        model.task.description,
        config.backbone,
        config.weights,
        f"{model.count_params():,}",
    )

    # Data.
    splits = _load_splits(config, data_dir, run_dir)
    _write_run_info(run_dir, config, data_dir, is_synthetic, splits)
    loader_options = {"image_size": config.image_size, "batch_size": config.batch_size, "workers": config.workers}
    train_data = FaceDataset(
        splits["train"], config.model, training=True, augment=config.augment, seed=config.seed, **loader_options
    )
    val_data = FaceDataset(splits["val"], config.model, **loader_options)
    test_data = FaceDataset(splits["test"], config.model, **loader_options)

    # Training. ValidationMetrics must run first because the others read its keys.
    select_best = SelectBestEpoch(model.task, run_dir / BEST_MODEL_FILE, config.early_stopping_patience)
    callbacks = [
        ValidationMetrics(val_data),
        keras.callbacks.LearningRateScheduler(step_schedule(config)),
        select_best,
        EpochLogLine(config.epochs),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv")),
    ]
    # FaceDataset shuffles itself with the seed; Keras' own shuffle would use Python's global RNG.
    model.fit(
        train_data,
        epochs=config.epochs,
        callbacks=callbacks,
        shuffle=False,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    train_seconds = time.monotonic() - started

    history = pd.read_csv(run_dir / "history.csv")
    plots.plot_loss_curve(history, run_dir / "loss_curve.png", title=f"{config.model}: loss")
    plots.plot_val_mae_curve(history, run_dir / "val_mae_curve.png", title=f"{config.model}: validation MAE")

    # Test evaluation of the best epoch.
    best_model = keras.models.load_model(run_dir / BEST_MODEL_FILE)
    outputs = best_model.predict(test_data, verbose=0)
    frame = predictions_frame(model.task, test_data.table, outputs)
    run_metrics = {"best_epoch": select_best.best_epoch + 1, "train_seconds": round(train_seconds, 1)}
    summary = evaluate_predictions(frame, config.model, run_dir, extra_metrics=run_metrics)

    logger.info(
        "Done in %.0f s. Test MAE %.2f years, best epoch %d. Run folder: %s",
        time.monotonic() - started,
        summary["mae"],
        summary["best_epoch"],
        run_dir,
    )
    return run_dir
