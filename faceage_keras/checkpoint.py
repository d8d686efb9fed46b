"""Resumable training state, written to `<run>/checkpoint/` at the end of every epoch.

The folder holds:

| File | Content |
|---|---|
| `training.weights.h5` | model variables, BatchNorm statistics and optimizer variables (`model.save_weights`) |
| `best_model.keras` | a copy of the run's best model as of this epoch |
| `rng.json` | the Python, NumPy and torch random states of the main process |
| `state.json` | completed epochs, whether training finished, the best epoch and its score, the history rows and the elapsed seconds |

`train(config, run_dir=..., resume=True)` reads it back and continues with
the next epoch. The learning rate is a function of the epoch index
(`LearningRateScheduler`), and the training data's shuffle and augmentation
are seeded with the seed and the epoch index (`DatasetEpoch`), so neither
needs saving. A new checkpoint is written to `checkpoint.partial/` and then
renamed, so a run killed while writing keeps the previous one.
"""

import json
import logging
import math
import os
import pathlib
import random
import shutil
import time

import keras
import numpy as np
import pandas as pd
import torch

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
WEIGHTS_FILE = "training.weights.h5"
BEST_MODEL_COPY = "best_model.keras"
RNG_FILE = "rng.json"
STATE_FILE = "state.json"
HISTORY_FILE = "history.csv"
_PARTIAL_DIR = "checkpoint.partial"
_PREVIOUS_DIR = "checkpoint.previous"


class ResumeError(ValueError):
    """A run folder that cannot be resumed."""


def find_checkpoint(run_dir):
    """Return the folder of the latest complete checkpoint in `run_dir`, or None."""
    run_dir = pathlib.Path(run_dir)
    # A run killed between the two renames of `write_checkpoint` left only the previous folder.
    for name in (CHECKPOINT_DIR, _PREVIOUS_DIR):
        if (run_dir / name / STATE_FILE).is_file():
            return run_dir / name
    return None


def read_state(run_dir):
    """Return the `state.json` dict of the latest checkpoint in `run_dir`.

    Raises:
        ResumeError: `run_dir` has no checkpoint, or its training and
            evaluation already finished.
    """
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        raise ResumeError(f"Run folder not found: {run_dir}")
    folder = find_checkpoint(run_dir)
    if folder is None:
        raise ResumeError(
            f"{run_dir} has no checkpoint ({CHECKPOINT_DIR}/{STATE_FILE}): the run stopped before its first "
            f"epoch ended, or it was written by a version without checkpoints. Start a new run instead."
        )
    state = json.loads((folder / STATE_FILE).read_text())
    if state["finished"] and (run_dir / "metrics.json").is_file():
        raise ResumeError(f"Run {run_dir} is complete: it trained {state['epochs_done']} epochs and wrote metrics.json.")
    return state


def run_settings(run_dir):
    """Return `(config_path, data_dir)` of a run: its `config.json` and the data folder named in `run.json`."""
    run_dir = pathlib.Path(run_dir)
    for name in ("config.json", "run.json"):
        if not (run_dir / name).is_file():
            raise ResumeError(f"{run_dir} lacks {name}, so the run cannot be resumed. Is it a run folder?")
    info = json.loads((run_dir / "run.json").read_text())
    return run_dir / "config.json", info["data_dir"]


def check_same_splits(run_dir, splits):
    """Raise `ResumeError` unless `splits` list the same faces as the run's `splits/*.csv`."""
    for name, split in splits.items():
        path = pathlib.Path(run_dir) / "splits" / f"{name}.csv"
        saved = pd.read_csv(path, dtype={"image_name": str})["image_name"].tolist()
        if saved != split["image_name"].tolist():
            raise ResumeError(
                f"The {name} split of the data differs from {path}: the data folder changed since the run "
                f"started. Resume with the original data (--data), or start a new run."
            )


def write_checkpoint(run_dir, model, state, best_model_path):
    """Write a checkpoint of `model` (weights and optimizer) and `state` to `run_dir/checkpoint/`.

    Args:
        run_dir: path of the run folder.
        model: compiled Keras model.
        state: JSON-serialisable dict; `best_epoch` and `epochs_done` are
            read from it to decide whether the best model changed.
        best_model_path: path of the run's best `.keras` file.
    """
    run_dir = pathlib.Path(run_dir)
    partial, final, previous = run_dir / _PARTIAL_DIR, run_dir / CHECKPOINT_DIR, run_dir / _PREVIOUS_DIR
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()

    model.save_weights(partial / WEIGHTS_FILE)
    (partial / RNG_FILE).write_text(json.dumps(_random_states()) + "\n")

    # SelectBestEpoch rewrites best_model.keras in place, so the checkpoint keeps its own copy.
    old_copy = final / BEST_MODEL_COPY
    if state["best_epoch"] == state["epochs_done"] - 1 or not old_copy.is_file():
        shutil.copy2(best_model_path, partial / BEST_MODEL_COPY)
    else:
        _link_or_copy(old_copy, partial / BEST_MODEL_COPY)
    (partial / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    shutil.rmtree(previous, ignore_errors=True)
    if final.exists():
        final.rename(previous)
    partial.rename(final)
    shutil.rmtree(previous, ignore_errors=True)


def restore_checkpoint(run_dir, model, *, restore_files):
    """Load the latest checkpoint of `run_dir` into a compiled `model` and return its state.

    Args:
        run_dir: path of the run folder.
        model: the compiled model of the run's config, freshly built.
        restore_files: bool. Also put back the checkpoint's best model and
            cut `history.csv` to the checkpoint's epochs (the main process
            only).

    Returns:
        The `state.json` dict.
    """
    run_dir = pathlib.Path(run_dir)
    state = read_state(run_dir)
    folder = find_checkpoint(run_dir)

    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(folder / WEIGHTS_FILE)
    _set_random_states(json.loads((folder / RNG_FILE).read_text()))

    if restore_files:
        shutil.copy2(folder / BEST_MODEL_COPY, run_dir / BEST_MODEL_COPY)
        _truncate_history(run_dir / HISTORY_FILE, state["epochs_done"])
    logger.info("Resuming %s after epoch %d from %s.", run_dir, state["epochs_done"], folder)
    return state


def _truncate_history(path, num_epochs):
    # CSVLogger writes a header and one line per epoch, and the run may have died
    # after writing the line of an epoch whose checkpoint was never completed.
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if len(lines) < num_epochs + 1:
        raise ResumeError(f"{path} has {len(lines) - 1} epoch lines, fewer than the checkpoint's {num_epochs}.")
    path.write_text("".join(lines[: num_epochs + 1]), encoding="utf-8")


def _link_or_copy(source, target):
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _random_states():
    states = {
        "python": _to_lists(random.getstate()),
        "numpy": _to_lists(np.random.get_state()),
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        states["cuda"] = [state.tolist() for state in torch.cuda.get_rng_state_all()]
    return states


def _set_random_states(states):
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(torch.tensor(states["torch"], dtype=torch.uint8))
    # NOTE: a checkpoint written on a machine with another GPU count, or without
    # GPUs, leaves the CUDA generators as seeded at the start of the run.
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.tensor(state, dtype=torch.uint8) for state in states["cuda"]])


def _to_lists(value):
    if isinstance(value, (tuple, list)):
        return [_to_lists(item) for item in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _json_number(value):
    value = float(value)
    return value if math.isfinite(value) else None


class TrainingCheckpoint(keras.callbacks.Callback):
    """Write a resumable checkpoint at the end of every epoch.

    Place it after `SelectBestEpoch` and `CSVLogger`, so that the checkpoint
    records the epoch's best-model decision and follows its history line.

    Args:
        run_dir: path of the run folder.
        select_best: the run's `SelectBestEpoch`.
        epochs: int. Epochs the run trains at most.
        started: float. `time.monotonic()` when this process started the run.
        state: dict or None. The state of the checkpoint this run resumed from.
    """

    def __init__(self, run_dir, select_best, *, epochs, started, state=None):
        super().__init__()
        self.run_dir = pathlib.Path(run_dir)
        self.select_best = select_best
        self.epochs = int(epochs)
        self.started = started
        self.history = list(state["history"]) if state else []
        self.previous_seconds = state["train_seconds"] if state else 0.0

    def on_epoch_end(self, epoch, logs=None):
        self.history.append({name: _json_number(value) for name, value in (logs or {}).items()})
        best_score = self.select_best.best_score
        state = {
            "epochs_done": epoch + 1,
            "finished": bool(self.model.stop_training) or epoch + 1 >= self.epochs,
            "best_epoch": self.select_best.best_epoch,
            # A score may hold -inf (no finite MAE yet), which JSON lacks.
            "best_score": None if best_score is None else [repr(float(value)) for value in best_score],
            "train_seconds": round(self.previous_seconds + time.monotonic() - self.started, 1),
            "history": self.history,
        }
        write_checkpoint(self.run_dir, self.model, state, self.select_best.path)


def restore_best_epoch(select_best, state):
    """Set a `SelectBestEpoch` to the best epoch and score recorded in a checkpoint state."""
    select_best.best_epoch = state["best_epoch"]
    select_best.best_score = None if state["best_score"] is None else tuple(float(value) for value in state["best_score"])
