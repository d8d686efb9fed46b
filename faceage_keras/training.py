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

from faceage_keras import balance, checkpoint, distributed, feature_cache, plots, synthetic
from faceage_keras.acceleration import apply_gpu_options
from faceage_keras.config import ConfigError, load_config
from faceage_keras.callbacks import DatasetEpoch, EpochLogLine, SelectBestEpoch, ValidationMetrics
from faceage_keras.dataset import FaceDataset
from faceage_keras.evaluation import evaluate_predictions, predictions_frame
from faceage_keras.models import build_model, default_compile_args
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


def make_optimizer(config, learning_rate=None):
    """Return the Keras optimizer the config names, at `learning_rate` or else the config's."""
    learning_rate = config.learning_rate if learning_rate is None else learning_rate
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=config.momentum, global_clipnorm=config.global_clipnorm)
    return keras.optimizers.AdamW(learning_rate, weight_decay=config.weight_decay, global_clipnorm=config.global_clipnorm)


def step_schedule(config, learning_rate=None, first_epoch=0):
    """Return the epoch -> learning rate function: a factor every `lr_step_epochs` epochs.

    The schedule starts at `learning_rate` (by default the config's) in
    epoch `first_epoch`, the first epoch of a training stage.
    """
    initial = config.learning_rate if learning_rate is None else learning_rate

    def schedule(epoch, learning_rate=None):
        return initial * config.lr_step_factor ** ((epoch - first_epoch) // config.lr_step_epochs)

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


def _load_splits(config, data_dir, run_dir, resume=False):
    table, bad_rows = load_face_table(
        data_dir, skip_bad_rows=config.skip_bad_rows, limit=config.limit, seed=config.seed
    )
    if bad_rows:
        write_bad_rows(bad_rows, run_dir / "skipped_rows.csv")
    if config.limit is not None:
        logger.info("Using the first %d faces after a shuffle with seed %d (--limit).", len(table), config.seed)
    splits = split_table(table, seed=config.seed)
    if resume:
        checkpoint.check_same_splits(run_dir, splits)
    else:
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


def train(config, *, data=None, run_dir=None, resume=False):
    """Train one model with the settings in `config` and evaluate it on the test split.

    Under torchrun, every process calls this; they train together with
    DistributedDataParallel (see `faceage_keras.distributed`), and only the
    main process writes the run folder and evaluates on the test split.

    Args:
        config: `TrainConfig`.
        data: path, str or None. Data folder with `labels.csv` and `images/`,
            or a TFDS data set `tfds:NAME[:VERSION]`; None reads
            `$FACEAGE_DATA`, and without it a synthetic set is used.
        run_dir: path or None. Output folder; by default
            `runs/<model>-<timestamp>`.
        resume: bool. Continue the run in `run_dir` after the last epoch of
            its checkpoint; `config` and `data` must be the run's own (see
            `resume_run`).

    Returns:
        The run folder, holding `config.json`, `run.json`, `splits/`,
        `train.log`, `history.csv`, `best_model.keras`, `loss_curve.png`,
        `val_mae_curve.png`, `test_predictions.csv`, `metrics.json`,
        `test_scatter.png` and `residuals.png`.
    """
    if resume and config.finetune_stages:
        # NOTE: the checkpoint records one training stage; continuing inside or after the second is not supported.
        raise checkpoint.ResumeError(
            f"Run {run_dir} has a second, fine-tuning stage (finetune_stages = {config.finetune_stages}), and "
            f"--resume cannot continue such runs. Start a new run."
        )
    context, started_group = distributed.start_process_group()
    try:
        if resume:
            checkpoint.read_state(run_dir)
            run_dir = pathlib.Path(run_dir)
        else:
            run_dir = context.share(_new_run_dir(config.model, run_dir) if context.is_main else None)
        log_file = _start_log_file(run_dir) if context.is_main else None
        try:
            return _train(config, data, run_dir, context, resume)
        except Exception as error:
            logger.error("Run failed: %s: %s", type(error).__name__, error)
            raise
        finally:
            if log_file is not None:
                logging.getLogger("faceage_keras").removeHandler(log_file)
                log_file.close()
    finally:
        if started_group:
            distributed.end_process_group()


def resume_run(run_dir, *, data=None):
    """Continue the interrupted run in `run_dir` with its own config, from its last checkpoint.

    The resumed run trains the epochs left and then writes the same files as
    an uninterrupted run.

    Args:
        run_dir: path of the run folder.
        data: path or None. The data folder, when it moved since the run
            started; by default the one named in `run.json`.

    Returns:
        The run folder.
    """
    config_path, data_dir = checkpoint.run_settings(run_dir)
    return train(load_config(config_path), data=data or data_dir, run_dir=run_dir, resume=True)


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


def _check_finetune_stages(model, config, context):
    if not config.finetune_stages:
        return
    if context.is_distributed:
        # NOTE: the DDP wrapper built for the first stage registers only the head parameters, so backbone gradients would not be averaged.
        raise ConfigError("finetune_stages runs in one process; drop it or --nproc.")
    try:
        num_groups = len(model.get_layer("backbone").parameter_groups)
    except ValueError as error:
        raise ConfigError(f"finetune_stages: {error}") from error
    if config.finetune_stages > num_groups:
        raise ConfigError(
            f"`finetune_stages` must be at most {num_groups}, the number of parameter groups of backbone "
            f"{config.backbone!r}. Received: finetune_stages={config.finetune_stages}"
        )


def _image_data(model, config, splits, context):
    """Return the model to fit and the image data sets of the splits."""
    options = {"image_size": config.image_size, "batch_size": config.batch_size, "workers": config.workers}
    train_options = dict(training=True, augment=config.augment, seed=config.seed, balance=config.balance, **options)
    if context.is_distributed:
        shard = {"rank": context.rank, "world_size": context.world_size}
        train_data = distributed.ShardedFaceDataset(splits["train"], config.model, **shard, **train_options)
    else:
        train_data = FaceDataset(splits["train"], config.model, **train_options)
    val_data = FaceDataset(splits["val"], config.model, **options)
    test_data = FaceDataset(splits["test"], config.model, **options)
    return model, train_data, val_data, test_data


def _cached_feature_data(model, config, splits):
    """Return the head model to fit and feature data sets read from, or written to, the cache."""
    started = time.monotonic()
    options = {"image_size": config.image_size, "batch_size": config.batch_size, "workers": config.workers}
    cache_dir = _cache_dir() / "features"
    features = {
        name: feature_cache.cached_features(model, splits[name], cache_dir, **options)
        for name in ("val", "test")
    }
    if not config.cache_views:
        features["train"] = feature_cache.cached_features(model, splits["train"], cache_dir, **options)
    else:
        features["train"] = feature_cache.cached_features(
            model,
            splits["train"],
            cache_dir,
            views=config.cache_views,
            augment=config.augment,
            seed=config.seed,
            **options,
        )
    logger.info("Backbone features ready in %.0f s.", time.monotonic() - started)

    heads = feature_cache.head_model(model)
    # The full model's optimizer, so that its saved `.keras` file carries the optimizer state.
    defaults = default_compile_args(config.model)
    heads.compile(
        optimizer=model.optimizer,
        loss=defaults["loss"],
        loss_weights=defaults["loss_weights"],
        metrics=defaults["metrics"],
    )
    train_data = feature_cache.FeatureDataset(
        features["train"],
        splits["train"],
        model.task,
        batch_size=config.batch_size,
        training=True,
        seed=config.seed,
        balance=config.balance,
    )
    val_data = feature_cache.FeatureDataset(features["val"], splits["val"], model.task, batch_size=config.batch_size)
    test_data = feature_cache.FeatureDataset(features["test"], splits["test"], model.task, batch_size=config.batch_size)
    return heads, train_data, val_data, test_data


def _fit(fit_model, model, config, context, run_dir, train_data, val_data, state, started):
    """Train `fit_model`, after the epochs of the checkpoint `state` when resuming; return the `SelectBestEpoch`.

    `fit_model` is `model` itself, or its heads when training on cached features;
    the best epoch is saved as the full `model` either way.
    """
    select_best = SelectBestEpoch(
        model.task,
        run_dir / BEST_MODEL_FILE if context.is_main else None,
        config.early_stopping_patience,
        model_to_save=model,
    )
    if state is not None:
        checkpoint.restore_best_epoch(select_best, state)
        if state["finished"]:
            return select_best

    # ValidationMetrics must run before the callbacks that read its keys.
    callbacks = [
        distributed.SyncProcesses(context),
        ValidationMetrics(val_data, predict=distributed.ShardedPredictor(context) if context.is_distributed else None),
        keras.callbacks.LearningRateScheduler(step_schedule(config)),
        select_best,
        DatasetEpoch(train_data),
        EpochLogLine(config.epochs),
    ]
    if context.is_main:
        callbacks += [
            keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=state is not None),
            checkpoint.TrainingCheckpoint(run_dir, select_best, epochs=config.epochs, started=started, state=state),
        ]
    verbose = 0
    if context.is_main:
        verbose = 1 if sys.stdout.isatty() else 2
    # FaceDataset shuffles itself with the seed; Keras' own shuffle would use Python's global RNG.
    fit_model.fit(
        train_data,
        epochs=config.epochs,
        initial_epoch=state["epochs_done"] if state else 0,
        callbacks=callbacks,
        shuffle=False,
        verbose=verbose,
    )
    return select_best


def _finetune(model, config, context, run_dir, splits, select_best, first_epoch):
    """Train the heads and the last backbone groups on images from the best first-stage epoch on.

    Epochs are numbered on from `first_epoch`, history rows are appended to
    `history.csv`, and `select_best` keeps the first stage's best score, so
    `best_model.keras` ends as the best epoch of both stages.

    Returns:
        The image `FaceDataset` of the test split.
    """
    model.load_weights(run_dir / BEST_MODEL_FILE)
    model.unfreeze_backbone_groups(config.finetune_stages)
    model.compile(optimizer=make_optimizer(config, learning_rate=config.finetune_learning_rate))
    _, train_data, val_data, test_data = _image_data(model, config, splits, context)
    backbone = model.get_layer("backbone")
    logger.info(
        "Fine-tuning the last %d of %d backbone parameter groups with the heads on images: %s trainable "
        "parameters, learning rate %.3g, up to %d epochs.",
        config.finetune_stages,
        len(backbone.parameter_groups),
        f"{sum(int(keras.ops.size(variable)) for variable in model.trainable_weights):,}",
        config.finetune_learning_rate,
        config.finetune_epochs,
    )

    select_best.restart_patience(first_epoch)
    last_epoch = first_epoch + config.finetune_epochs
    callbacks = [
        ValidationMetrics(val_data),
        keras.callbacks.LearningRateScheduler(
            step_schedule(config, learning_rate=config.finetune_learning_rate, first_epoch=first_epoch)
        ),
        select_best,
        DatasetEpoch(train_data),
        EpochLogLine(last_epoch),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
    ]
    model.fit(
        train_data,
        epochs=last_epoch,
        initial_epoch=first_epoch,
        callbacks=callbacks,
        shuffle=False,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    return test_data


def _train(config, data, run_dir, context, resume):
    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    data_dir, is_synthetic = resolve_data_dir(data)
    logger.info("Run %s: model %s, data %s.", run_dir, config.model, data_dir)

    # Model first, so that a wrong backbone or weights setting fails before the data is read.
    model = _build_model(config)
    model.compile(optimizer=make_optimizer(config))
    apply_gpu_options(model, channels_last=config.channels_last, mixed_precision=config.mixed_precision)
    logger.info(
        "%s (%s): %s backbone with weights %r, %s parameters.",
        config.model,
        model.task.description,
        config.backbone,
        config.weights,
        f"{model.count_params():,}",
    )
    _check_finetune_stages(model, config, context)

    # Data.
    splits = context.share(_load_splits(config, data_dir, run_dir, resume) if context.is_main else None)
    if context.is_main and not resume:
        _write_run_info(run_dir, config, data_dir, is_synthetic, splits)
    if config.balance != "none" and context.is_main:
        logger.info("Balancing the training split by %s; faces per age group and gender:\n%s",
                    config.balance, balance.cell_counts(splits["train"]).to_string())
    if config.cache_features:
        if context.is_distributed:
            raise ConfigError("cache_features trains the heads in one process; drop it or --nproc.")
        fit_model, train_data, val_data, test_data = _cached_feature_data(model, config, splits)
    else:
        fit_model, train_data, val_data, test_data = _image_data(model, config, splits, context)

    # Resume state, then DDP, whose wrapper broadcasts the main process's weights.
    state = checkpoint.restore_checkpoint(run_dir, fit_model, restore_files=context.is_main) if resume else None
    if context.is_distributed:
        distributed.install_ddp_train_step(model, context)
    select_best = _fit(fit_model, model, config, context, run_dir, train_data, val_data, state, started)
    if not context.is_main:
        return run_dir
    stages = [
        {
            "stage": "heads" if config.freeze_backbone else "full",
            "epochs": len(pd.read_csv(run_dir / "history.csv")),
            "data": "cached features" if config.cache_features else "images",
            "learning_rate": config.learning_rate,
        }
    ]
    if config.finetune_stages:
        first_epoch = stages[0]["epochs"]
        test_data = _finetune(model, config, context, run_dir, splits, select_best, first_epoch)
        stages.append(
            {
                "stage": "finetune",
                "epochs": len(pd.read_csv(run_dir / "history.csv")) - first_epoch,
                "data": "images",
                "learning_rate": config.finetune_learning_rate,
                "unfrozen_backbone_groups": config.finetune_stages,
            }
        )
    train_seconds = time.monotonic() - started + (state["train_seconds"] if state else 0.0)

    history = pd.read_csv(run_dir / "history.csv")
    plots.plot_loss_curve(history, run_dir / "loss_curve.png", title=f"{config.model}: loss")
    plots.plot_val_mae_curve(history, run_dir / "val_mae_curve.png", title=f"{config.model}: validation MAE")

    # Test evaluation of the best epoch.
    best_model = keras.models.load_model(run_dir / BEST_MODEL_FILE)
    if config.cache_features and not config.finetune_stages:
        best_model = feature_cache.head_model(best_model)
    outputs = best_model.predict(test_data, verbose=0)
    frame = predictions_frame(model.task, test_data.table, outputs)
    run_metrics = {
        "best_epoch": select_best.best_epoch + 1,
        "train_seconds": round(train_seconds, 1),
        "balance": config.balance,
        "cache_features": config.cache_features,
        "stages": stages,
    }
    if config.finetune_stages:
        run_metrics["best_stage"] = "finetune" if select_best.best_epoch >= stages[0]["epochs"] else "heads"
    summary = evaluate_predictions(frame, config.model, run_dir, extra_metrics=run_metrics)

    logger.info(
        "Done in %.0f s. Test MAE %.2f years, best epoch %d. Run folder: %s",
        time.monotonic() - started,
        summary["mae"],
        summary["best_epoch"],
        run_dir,
    )
    return run_dir
