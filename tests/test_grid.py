"""Experiment grids (`invoke run-all`) and scoring finished runs (`invoke evaluate`)."""

import json
import os
import pathlib
import subprocess
import sys

import pandas as pd
import pytest

from faceage_keras.config import ConfigError
from faceage_keras.grid import load_grid, run_name
from faceage_keras.table import DataError
from faceage_keras.run_evaluation import evaluate_run

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_SETTINGS = """
[settings]
backbone = "test_efficientnet"
weights = "none"
image_size = 32
epochs = 1
batch_size = 16
limit = 120
workers = 1
"""


def _write_grid(folder, models, balance, model_settings=None):
    folder.mkdir(parents=True, exist_ok=True)
    for model in models:
        extra = (model_settings or {}).get(model, "")
        (folder / f"{model}.toml").write_text(f'model = "{model}"\n{extra}\n')
    grid = folder / "grid.toml"
    grid.write_text(
        f'name = "tiny"\nmodels = {json.dumps(models)}\nbalance = {json.dumps(balance)}\n'
        f'config = "{{model}}.toml"\n{TINY_SETTINGS}'
    )
    return grid


def _invoke(*args, cache_dir=None):
    # One torch thread per process, as in the in-process tests (see conftest.py).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if cache_dir is not None:
        env["XDG_CACHE_HOME"] = str(cache_dir)
    command = [sys.executable, "-m", "invoke", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_load_grid_crosses_models_and_balance(tmp_path):
    grid = _write_grid(tmp_path, ["m2", "m4"], ["none", "oversample"])

    name, runs = load_grid(grid)

    assert name == "tiny"
    assert [run.name for run in runs] == ["m2-unbalanced", "m2-oversample", "m4-unbalanced", "m4-oversample"]
    assert runs[1].config.balance == "oversample"
    assert runs[1].config.image_size == 32


def test_uncached_grid_loads():
    _, runs = load_grid(REPO / "experiments" / "cpu-grid-uncached.toml")

    assert [run.name for run in runs] == ["m1-unbalanced", "m2-unbalanced", "m3-unbalanced", "m4-unbalanced", "m5-unbalanced"]
    assert all(run.config.freeze_backbone and not run.config.cache_features for run in runs)


@pytest.mark.parametrize("name", ["cpu-grid", "thesis-grid"])
def test_shipped_grid_loads(name):
    _, runs = load_grid(REPO / "experiments" / f"{name}.toml")

    assert [run.model for run in runs] == ["m1", "m1", "m2", "m2", "m3", "m3", "m4", "m4", "m5", "m5"]
    assert [run.balance for run in runs[:2]] == ["none", "oversample"]
    for run in runs:
        assert run.config.model == run.model, f"{run.name} trains {run.config.model}"


def test_historical_grid_loads():
    _, runs = load_grid(REPO / "experiments" / "historical-grid.toml")

    assert [run.name for run in runs] == ["m2-unbalanced"]
    assert runs[0].config.augment.historical is not None
    assert runs[0].config.cache_views == 1


def test_load_grid_overrides_settings(tmp_path):
    grid = _write_grid(tmp_path, ["m2"], ["none"])

    _, runs = load_grid(grid, epochs=3, limit=None)

    assert runs[0].config.epochs == 3
    assert runs[0].config.limit == 120


def test_load_grid_rejects_unknown_key(tmp_path):
    grid = _write_grid(tmp_path, ["m2"], ["none"])
    grid.write_text(grid.read_text().replace('name = "tiny"', 'name = "tiny"\nmodel = "m2"'))

    with pytest.raises(ConfigError, match="Unknown key"):
        load_grid(grid)


def test_load_grid_checks_every_run_first(tmp_path):
    grid = _write_grid(tmp_path, ["m2", "m4"], ["none", "equal"])

    with pytest.raises(ConfigError, match="balance"):
        load_grid(grid)


def test_load_grid_names_settings_typo(tmp_path):
    grid = _write_grid(tmp_path, ["m2"], ["none"])
    grid.write_text(grid.read_text() + "image_sise = 64\n")

    with pytest.raises(ConfigError, match=r"image_sise.*\[settings\] of grid file"):
        load_grid(grid)


def test_load_grid_rejects_unknown_model(tmp_path):
    grid = _write_grid(tmp_path, ["m2", "m6"], ["none"])

    with pytest.raises(ConfigError, match="Unknown model.*m6"):
        load_grid(grid)


def test_run_name_of_unbalanced():
    assert run_name("m3", "none") == "m3-unbalanced"
    assert run_name("m3", "reweight") == "m3-reweight"


@pytest.mark.slow
def test_run_all_continues_past_failure(utkface_dir, tmp_path):
    grid = _write_grid(
        tmp_path / "grid", ["m2", "m4"], ["none"], model_settings={"m4": "model_kwargs = { no_such_argument = 1 }"}
    )

    result = _invoke("run-all", "--grid", str(grid), "--data", str(utkface_dir), "--out", str(tmp_path / "out"),
                     cache_dir=tmp_path / "cache")

    assert result.returncode == 1, result.stderr[-2000:]
    assert "m4-unbalanced" in result.stderr
    manifest = json.loads((tmp_path / "out" / "grid.json").read_text())
    statuses = {run["name"]: run["status"] for run in manifest["runs"]}
    assert statuses == {"m2-unbalanced": "ok", "m4-unbalanced": "failed"}
    failed = next(run for run in manifest["runs"] if run["status"] == "failed")
    assert "no_such_argument" in failed["error"]
    assert (tmp_path / "out" / "m2-unbalanced" / "metrics.json").is_file()


@pytest.mark.slow
def test_grid_and_evaluate_end_to_end(utkface_dir, small_face_folder, tmp_path):
    grid = _write_grid(tmp_path / "grid", ["m1", "m3"], ["none", "reweight"])

    result = _invoke("run-all", "--grid", str(grid), "--data", str(utkface_dir), "--out", str(tmp_path / "out"),
                     cache_dir=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "grid.json").read_text())
    assert [run["status"] for run in manifest["runs"]] == ["ok"] * 4
    config = json.loads((tmp_path / "out" / "m3-reweight" / "config.json").read_text())
    assert config["balance"] == "reweight"

    # Own test split: the same MAE as the run reported.
    run_dir = tmp_path / "out" / "m1-unbalanced"
    _, own = evaluate_run(run_dir)
    reported = json.loads((run_dir / "metrics.json").read_text())
    assert own["mae"] == pytest.approx(reported["mae"], abs=1e-4)

    # Another data set: every face of it, through the command line.
    result = _invoke("evaluate", "--run", str(run_dir), "--data", str(small_face_folder), "--label", "cross")
    assert result.returncode == 0, result.stderr[-2000:]
    out_dir = run_dir / "evaluations" / "cross"
    predictions = pd.read_csv(out_dir / "test_predictions.csv")
    faces = pd.read_csv(small_face_folder / "labels.csv")
    assert len(predictions) == len(faces)
    info = json.loads((out_dir / "evaluation.json").read_text())
    assert info["label"] == "cross"
    assert info["num_faces"] == len(faces)
    assert (out_dir / "metrics.json").is_file()
    assert (out_dir / "test_scatter.png").is_file()


def test_evaluate_keeps_other_evaluation(tmp_path):
    evaluation = tmp_path / "run" / "evaluations" / "faces"
    evaluation.mkdir(parents=True)
    (tmp_path / "run" / "best_model.keras").write_text("")
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": "m2"}))
    (evaluation / "evaluation.json").write_text(json.dumps({"data": "/elsewhere/faces", "eval_transform": None}))

    with pytest.raises(DataError, match="--label"):
        evaluate_run(tmp_path / "run", data=tmp_path / "faces")


def test_evaluate_rejects_folder_without_model(tmp_path):
    result = _invoke("evaluate", "--run", str(tmp_path))

    assert result.returncode == 2
    assert "best_model.keras" in result.stderr


def test_evaluate_rejects_unknown_transform(tmp_path):
    (tmp_path / "best_model.keras").write_text("")
    (tmp_path / "config.json").write_text(json.dumps({"model": "m2"}))

    with pytest.raises(ValueError, match="historical"):
        evaluate_run(tmp_path, eval_transform="sepia")
