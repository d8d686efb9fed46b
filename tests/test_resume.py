"""Checkpoints, `resume_run` and the repeatability of runs with the same seed."""

import json
import os
import pathlib
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest

from faceage_keras import checkpoint
from faceage_keras.checkpoint import ResumeError, TrainingCheckpoint
from faceage_keras.config import TrainConfig
from faceage_keras.synthetic import write_synthetic_dataset
from faceage_keras.training import resume_run, train

REPO = pathlib.Path(__file__).resolve().parents[1]
EPOCHS = 3
# Files whose content must not depend on whether the run was interrupted.
SAME_FILES = ("history.csv", "test_predictions.csv", "splits/train.csv", "splits/test.csv")


class Interrupted(Exception):
    """Stands in for a run killed right after a checkpoint."""


def _config():
    # Two workers: the case where Keras calls on_epoch_end a different number of times than with one.
    return TrainConfig(
        model="m1",
        backbone="test_efficientnet",
        weights="none",
        image_size=32,
        epochs=EPOCHS,
        batch_size=16,
        workers=2,
        learning_rate=3e-3,
        lr_step_epochs=2,
    )


def _metrics(run_dir):
    values = json.loads((run_dir / "metrics.json").read_text())
    values.pop("train_seconds")
    return values


def _weights(path):
    arrays = {}
    with h5py.File(path, "r") as file:
        file.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("faces"), num_images=80, seed=5, size=64)


@pytest.fixture(scope="module")
def reference_run(faces, tmp_path_factory):
    return train(_config(), data=faces, run_dir=tmp_path_factory.mktemp("reference") / "run")


def test_same_seed_gives_same_metrics(faces, reference_run, tmp_path):
    second = train(_config(), data=faces, run_dir=tmp_path / "run")

    assert _metrics(second) == _metrics(reference_run), "metrics.json differs between two runs with the same seed"
    for name in SAME_FILES:
        assert (second / name).read_text() == (reference_run / name).read_text(), f"{name} differs"


def test_resume_matches_uninterrupted_run(faces, reference_run, tmp_path, monkeypatch):
    original = TrainingCheckpoint.on_epoch_end

    def stop_after_first_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 0:
            raise Interrupted()

    monkeypatch.setattr(TrainingCheckpoint, "on_epoch_end", stop_after_first_epoch)
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(_config(), data=faces, run_dir=run_dir)
    monkeypatch.undo()
    assert checkpoint.read_state(run_dir)["epochs_done"] == 1, "the checkpoint is not the one of epoch 1"
    assert not (run_dir / "metrics.json").exists(), "the interrupted run wrote metrics"
    # A run killed after CSVLogger's line and before the checkpoint leaves one line too many.
    with (run_dir / "history.csv").open("a") as history:
        history.write("1,2,3\n")

    resume_run(run_dir)

    assert len(pd.read_csv(run_dir / "history.csv")) == EPOCHS, "history.csv does not have one line per epoch"
    assert _metrics(run_dir) == _metrics(reference_run), "metrics.json differs from the uninterrupted run"
    for name in SAME_FILES:
        assert (run_dir / name).read_text() == (reference_run / name).read_text(), f"{name} differs"
    resumed = _weights(run_dir / "checkpoint" / checkpoint.WEIGHTS_FILE)
    expected = _weights(reference_run / "checkpoint" / checkpoint.WEIGHTS_FILE)
    assert resumed.keys() == expected.keys(), "the final checkpoints hold different variables"
    differing = [name for name in expected if not np.array_equal(resumed[name], expected[name])]
    assert not differing, f"final weights or optimizer state differ: {differing[:5]}"


def test_resume_rejects_complete_run(reference_run):
    with pytest.raises(ResumeError, match="complete"):
        resume_run(reference_run)


def test_resume_rejects_folder_without_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text("{}")

    with pytest.raises(ResumeError, match="no checkpoint"):
        checkpoint.read_state(tmp_path)


def test_find_checkpoint_falls_back_to_previous(tmp_path):
    # A run killed between the two renames of write_checkpoint.
    (tmp_path / "checkpoint.previous").mkdir()
    (tmp_path / "checkpoint.previous" / checkpoint.STATE_FILE).write_text("{}")

    assert checkpoint.find_checkpoint(tmp_path) == tmp_path / "checkpoint.previous", "previous checkpoint not found"


def test_invoke_resume_rejects_run_options(tmp_path):
    command = [sys.executable, "-m", "invoke", "--search-root", str(REPO), "train", "--resume", str(tmp_path)]
    command += ["--epochs", "5"]

    result = subprocess.run(command, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)

    assert result.returncode == 2, f"expected exit code 2, got {result.returncode}:\n{result.stderr[-2000:]}"
    assert "--epochs" in result.stderr, "the error does not name the option to drop"
