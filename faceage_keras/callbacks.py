"""Keras callbacks for validation metrics, model selection and epoch log lines."""

import logging
import math
import warnings

import keras
import numpy as np

from faceage_keras import metrics
from faceage_keras.evaluation import validation_scores
from faceage_keras.labels import AGE_GROUP_LABELS

logger = logging.getLogger(__name__)


class ValidationMetrics(keras.callbacks.Callback):
    """Score the validation set after each epoch and add the results to the logs.

    Adds `val_loss` (the task's loss with its loss weights), `val_mae`,
    `val_mae_<group>` for the five age groups, and where the model has the
    heads `val_gender_accuracy`, `val_age_group_accuracy` and
    `val_mae_expected`. Place it before callbacks that read these keys.

    Args:
        dataset: `FaceDataset` of the validation split, not shuffled.
        predict: callable or None. `predict(model, dataset)` returns the
            outputs for every face of `dataset` in order; None uses
            `model.predict`. Distributed training passes one that splits the
            faces across processes.
    """

    def __init__(self, dataset, predict=None):
        super().__init__()
        self.dataset = dataset
        self.predict = predict or _predict_all
        self.task = dataset.task
        self._losses = {name: make_loss() for name, make_loss in self.task.losses.items()}

    def _loss(self, outputs):
        table = self.dataset.table
        targets, sample_weight = self.task.targets(
            table["age_clipped"].to_numpy(), table["gender"].to_numpy(), table["group"].to_numpy()
        )
        total = 0.0
        for name, loss in self._losses.items():
            weight = None if sample_weight is None else sample_weight[name]
            value = float(keras.ops.convert_to_numpy(loss(targets[name], outputs[name], sample_weight=weight)))
            total += self.task.loss_weights[name] * value
        return total

    def on_epoch_end(self, epoch, logs=None):
        outputs = self.predict(self.model, self.dataset)
        logs = logs if logs is not None else {}
        logs["val_loss"] = self._loss(outputs)
        # An age group without validation faces gives nan, which the log line shows.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
            scores = validation_scores(self.task, self.dataset.table, outputs)
        for name, value in scores.items():
            logs[f"val_{name}"] = value


def _predict_all(model, dataset):
    return model.predict(dataset, verbose=0)


def selection_score(task, logs):
    """Return the tuple that model selection maximises for a task's epoch logs.

    Gender models compare validation gender accuracy first and MAE second;
    the others compare MAE alone.
    """
    mae = logs.get("val_mae", math.inf)
    if not math.isfinite(mae):
        mae = math.inf
    if task.predicts_gender:
        return (logs.get("val_gender_accuracy", -math.inf), -mae)
    return (-mae,)


class SelectBestEpoch(keras.callbacks.Callback):
    """Save the model of the best epoch and stop after `patience` epochs without improvement.

    Args:
        task: `TaskSpec` whose `selection_score` ranks epochs.
        path: path of the `.keras` file to write, or None to track the best
            epoch without saving (the other processes of a distributed run).
        patience: int. Epochs without a better score before training stops.
        model_to_save: keras.Model or None. The model to write; None writes
            the model being trained. A head-only model trained on cached
            features passes the full model that shares its layers.
    """

    def __init__(self, task, path, patience, model_to_save=None):
        super().__init__()
        self.task = task
        self.path = None if path is None else str(path)
        self.patience = int(patience)
        self.model_to_save = model_to_save
        self.best_score = None
        self.best_epoch = None
        self._patience_origin = -1

    def restart_patience(self, epoch):
        """Count epochs without improvement from `epoch` on, keeping the best score and epoch.

        A second training stage calls this before its first epoch, so that it
        gets `patience` epochs to beat the first stage's best score.
        """
        self._patience_origin = int(epoch) - 1

    def on_epoch_end(self, epoch, logs=None):
        score = selection_score(self.task, logs or {})
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_epoch = score, epoch
            if self.path is not None:
                (self.model_to_save or self.model).save(self.path)
                logger.info("Epoch %d is the best so far; saved %s.", epoch + 1, self.path)
        elif epoch - max(self.best_epoch, self._patience_origin) >= self.patience:
            logger.info("No improvement for %d epochs: stopping early.", self.patience)
            self.model.stop_training = True


class EpochLogLine(keras.callbacks.Callback):
    """Log one line per epoch: losses, validation MAE, the five group MAEs and accuracies."""

    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        parts = [f"epoch {epoch + 1}/{self.epochs}"]
        parts += [f"{name} {value:.4g}" for name, value in logs.items() if name.endswith("loss")]
        parts.append(f"val MAE {logs.get('val_mae', np.nan):.2f}")
        groups = ", ".join(
            f"{label} {logs.get(f'val_mae_{suffix}', np.nan):.2f}"
            for label, suffix in zip(AGE_GROUP_LABELS, metrics.GROUP_METRIC_SUFFIXES)
        )
        parts.append(f"group MAE ({groups})")
        for name in ("val_mae_expected", "val_age_group_accuracy", "val_gender_accuracy"):
            if name in logs:
                parts.append(f"{name} {logs[name]:.4f}")
        if "learning_rate" in logs:
            parts.append(f"lr {logs['learning_rate']:.3g}")
        logger.info(", ".join(parts))


class DatasetEpoch(keras.callbacks.Callback):
    """Set a training `FaceDataset` to each epoch's index before its first batch.

    The shuffle and augmentation of an epoch then depend on the epoch index
    alone, not on how often Keras called `on_epoch_end` before, so a run
    resumed at epoch k gets the same batches as an uninterrupted one.

    Args:
        dataset: the training `FaceDataset`.
    """

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch, logs=None):
        self.dataset.set_epoch(epoch)
