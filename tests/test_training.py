"""End-to-end training runs, the experiment configs and the `invoke train` command."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from faceage_keras.config import ConfigError, TrainConfig, load_config
from faceage_keras.labels import clip_age
from faceage_keras.metrics import PREDICTION_COLUMNS
from faceage_keras.models import MODEL_NAMES
from faceage_keras.training import train

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_BACKBONE = "test_efficientnet"
RUN_FILES = (
    "config.json",
    "run.json",
    "splits/train.csv",
    "splits/val.csv",
    "splits/test.csv",
    "train.log",
    "history.csv",
    "best_model.keras",
    "loss_curve.png",
    "val_mae_curve.png",
    "test_predictions.csv",
    "metrics.json",
    "test_scatter.png",
    "residuals.png",
)


def _tiny_config(model, **overrides):
    values = dict(
        model=model,
        backbone=TINY_BACKBONE,
        weights="none",
        image_size=64,
        epochs=1,
        batch_size=32,
        limit=256,
        workers=2,
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.slow
@pytest.mark.parametrize("model", MODEL_NAMES)
def test_train_one_epoch_on_real_faces(model, utkface_dir, tmp_path):
    run_dir = train(_tiny_config(model), data=utkface_dir, run_dir=tmp_path / "run")

    for name in RUN_FILES:
        assert (run_dir / name).is_file(), f"run folder lacks {name}"
    for name in ("loss_curve.png", "val_mae_curve.png", "test_scatter.png", "residuals.png"):
        with Image.open(run_dir / name) as image:
            assert image.format == "PNG", f"{name} is not a PNG"

    splits = {name: pd.read_csv(run_dir / "splits" / f"{name}.csv") for name in ("train", "val", "test")}
    assert sum(len(split) for split in splits.values()) <= 256, "--limit 256 was not applied"
    predictions = pd.read_csv(run_dir / "test_predictions.csv")
    assert list(predictions["image_name"]) == list(splits["test"]["image_name"]), "predictions are not the test split"
    for column in PREDICTION_COLUMNS:
        assert column in predictions.columns, f"test_predictions.csv lacks {column}"

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert math.isfinite(metrics["mae"]), "test MAE is not finite"
    assert math.isfinite(metrics["cs5"]), "CS@5 is not finite"
    assert len(metrics["mae_by_group"]) == 5, "group-wise MAE does not have five groups"
    if model in ("m1", "m3", "m5"):
        assert math.isfinite(metrics["gender"]["accuracy"]), "gender accuracy is not finite"
        assert math.isfinite(metrics["gender"]["f1"]) or metrics["gender"]["f1"] is None, "gender F1 is invalid"
    else:
        assert metrics["gender"] is None, "a model without a gender head reports gender metrics"
    if model in ("m3", "m4"):
        assert math.isfinite(metrics["mae_expected"]), "expected-age MAE of a group model is not finite"

    history = pd.read_csv(run_dir / "history.csv")
    for column in ("loss", "val_loss", "val_mae", "val_mae_lt19", "val_mae_60plus"):
        assert column in history.columns, f"history.csv lacks {column}"
    log = (run_dir / "train.log").read_text()
    assert "val MAE" in log, "train.log lacks the per-epoch line"


@pytest.mark.slow
def test_pretrained_m2_beats_mean_on_real_faces(utkface_dir, tmp_path):
    # Offline ImageNet weights, 600 faces at 64 px, 4 epochs: about a minute on one core.
    # Measured on this recipe: test MAE 10.9 years against 15.4 for the training mean.
    config = TrainConfig(
        model="m2", image_size=64, epochs=4, batch_size=32, limit=600, workers=1, learning_rate=2e-3, lr_step_epochs=3
    )
    run_dir = train(config, data=utkface_dir, run_dir=tmp_path / "run")

    metrics = json.loads((run_dir / "metrics.json").read_text())
    train_ages = clip_age(pd.read_csv(run_dir / "splits" / "train.csv")["age"])
    test_ages = clip_age(pd.read_csv(run_dir / "splits" / "test.csv")["age"])
    mean_baseline_mae = float(abs(test_ages - train_ages.mean()).mean())
    assert metrics["mae"] < 0.85 * mean_baseline_mae, (
        f"test MAE {metrics['mae']:.2f} is not clearly below the mean-age baseline {mean_baseline_mae:.2f}"
    )


@pytest.mark.slow
def test_splits_are_reused_for_same_seed(utkface_dir, tmp_path):
    config = _tiny_config("m2", epochs=1, limit=120)
    first = train(config, data=utkface_dir, run_dir=tmp_path / "a")
    second = train(config, data=utkface_dir, run_dir=tmp_path / "b")

    for name in ("train", "val", "test"):
        a = pd.read_csv(first / "splits" / f"{name}.csv")["image_name"].tolist()
        b = pd.read_csv(second / "splits" / f"{name}.csv")["image_name"].tolist()
        assert a == b, f"{name} split differs between two runs with the same seed"


def test_train_rejects_non_empty_run_dir(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "old.txt").write_text("x")

    with pytest.raises(FileExistsError, match="not empty"):
        train(_tiny_config("m4"), data=tmp_path, run_dir=tmp_path / "run")


# Training configs sit in subfolders; the grid files at the top level are tested in test_grid.py.
@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*/*.toml")), ids=lambda path: path.stem)
def test_experiment_config_loads(path):
    config = load_config(path)

    assert config.model in MODEL_NAMES, f"{path} names an unknown model"
    # Variants add a suffix to the model name, as in m2-historical.toml.
    model_in_name = path.stem.split("-")[0]
    assert config.model == model_in_name, f"{path} trains {config.model}, not the model its name says"


def test_thesis_recipe_values():
    config = load_config(REPO / "experiments" / "thesis" / "m1.toml")

    assert config.backbone == "convnextv2_tiny", "thesis backbone"
    assert config.image_size == 224, "thesis image size"
    assert config.batch_size == 64, "thesis batch size"
    assert (config.optimizer, config.learning_rate, config.momentum) == ("sgd", 1e-3, 0.9), "thesis optimizer"
    assert (config.lr_step_epochs, config.lr_step_factor) == (20, 0.2), "thesis learning-rate steps"
    assert (config.epochs, config.early_stopping_patience) == (100, 30), "thesis epochs and patience"
    assert config.global_clipnorm == 5.0, "thesis gradient clip"


def test_load_config_rejects_unknown_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('model = "m2"\nlearning_rat = 0.1\n')

    with pytest.raises(ConfigError, match="learning_rat"):
        load_config(path)


def test_load_config_overrides_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('model = "m2"\nepochs = 7\n[augment]\nrotation_degrees = 3.0\n')

    config = load_config(path, epochs=2, model=None)

    assert config.epochs == 2, "a given override did not replace the file's value"
    assert config.model == "m2", "an override of None replaced the file's value"
    assert config.augment.rotation_degrees == 3.0, "the [augment] table was not read"


def _invoke(args, env_overrides, cwd):
    env = {**os.environ, **env_overrides}
    command = [sys.executable, "-m", "invoke", "--search-root", str(REPO), "train", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_invoke_train_on_synthetic_faces(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "FACEAGE_DATA": ""}
    args = ["--model", "m4", "--backbone", TINY_BACKBONE, "--weights", "none", "--image-size", "48"]
    args += ["--epochs", "1", "--limit", "200", "--run-dir", str(tmp_path / "run")]

    result = _invoke(args, env, tmp_path)

    assert result.returncode == 0, f"invoke train failed:\n{result.stderr[-3000:]}"
    assert "SYNTHETIC" in result.stderr, "synthetic data was not announced"
    assert (tmp_path / "run" / "metrics.json").is_file(), "the run wrote no metrics.json"


def test_invoke_train_reports_bad_data(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels.csv").write_text("image_name,age,gender\nmissing.jpg,30,Male\n")

    result = _invoke(["--model", "m2", "--data", str(data), "--run-dir", str(tmp_path / "run")], {}, tmp_path)

    assert result.returncode == 2, f"expected exit code 2, got {result.returncode}:\n{result.stderr[-2000:]}"
    assert "line 2" in result.stderr, "the error does not name the CSV line"
    assert "--skip-bad-rows" in result.stderr, "the error does not name the fix"
    assert "Traceback" not in result.stderr, "a data error printed a traceback"
