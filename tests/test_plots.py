"""Tests for faceage_keras.plots: each figure is written as a valid PNG."""

import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from faceage_keras import plots
from faceage_keras.metrics import GROUP_METRIC_SUFFIXES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_valid_png(path):
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert image.format == "PNG"
    assert 300 <= width <= 4000
    assert 300 <= height <= 4000


def _history(num_epochs, *, per_output=True, group_columns=True):
    epochs = np.arange(num_epochs)
    decay = np.exp(-epochs / 8.0)
    table = pd.DataFrame({"epoch": epochs, "loss": 120 * decay + 30, "val_loss": 130 * decay + 40})
    if per_output:
        table["age_loss"] = 118 * decay + 29
        table["gender_loss"] = 0.5 * decay + 0.2
        table["val_age_loss"] = 128 * decay + 39
        table["val_gender_loss"] = 0.55 * decay + 0.25
    table["val_mae"] = 9 * decay + 5
    if group_columns:
        for offset, suffix in enumerate(GROUP_METRIC_SUFFIXES):
            table[f"val_mae_{suffix}"] = (9 + offset) * decay + 4 + offset
    return table


def _ages(num_faces, seed=0):
    rng = np.random.default_rng(seed)
    age_true = rng.uniform(1, 75, size=num_faces)
    age_pred = 35 + 0.7 * (age_true - 35) + rng.normal(0, 5, size=num_faces)
    return age_true, age_pred


def test_plot_loss_curve_normal(tmp_path):
    path = plots.plot_loss_curve(_history(25), tmp_path / "loss.png", title="M1 loss")
    assert path == tmp_path / "loss.png"
    _assert_valid_png(path)


def test_plot_loss_curve_single_epoch(tmp_path):
    path = plots.plot_loss_curve(_history(1), tmp_path / "loss.png")
    _assert_valid_png(path)


def test_plot_loss_curve_without_per_output(tmp_path):
    path = plots.plot_loss_curve(_history(5, per_output=False), tmp_path / "loss.png")
    _assert_valid_png(path)


def test_plot_loss_curve_without_validation(tmp_path):
    history = _history(5, per_output=False).drop(columns=["val_loss"])
    path = plots.plot_loss_curve(history, tmp_path / "loss.png")
    _assert_valid_png(path)


def test_plot_loss_curve_creates_parent_folder(tmp_path):
    path = plots.plot_loss_curve(_history(3), tmp_path / "figures" / "run" / "loss.png")
    _assert_valid_png(path)


def test_plot_loss_curve_empty_history_raises(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        plots.plot_loss_curve(_history(0), tmp_path / "loss.png")


def test_plot_loss_curve_missing_loss_raises(tmp_path):
    with pytest.raises(ValueError, match="'loss'"):
        plots.plot_loss_curve(pd.DataFrame({"epoch": [0], "val_loss": [1.0]}), tmp_path / "loss.png")


def test_plot_per_output_loss_names():
    columns = ["epoch", "loss", "age_loss", "gender_loss", "val_loss", "val_age_loss", "val_gender_loss", "val_mae"]
    assert plots._per_output_loss_names(columns) == ["age", "gender"]


def test_plot_val_mae_curve_with_groups(tmp_path):
    path = plots.plot_val_mae_curve(_history(25), tmp_path / "val_mae.png", title="M1 validation MAE")
    _assert_valid_png(path)


def test_plot_val_mae_curve_without_groups(tmp_path):
    history = _history(10, group_columns=False)
    path = plots.plot_val_mae_curve(history, tmp_path / "val_mae.png")
    _assert_valid_png(path)


def test_plot_val_mae_curve_single_epoch(tmp_path):
    path = plots.plot_val_mae_curve(_history(1), tmp_path / "val_mae.png")
    _assert_valid_png(path)


def test_plot_val_mae_curve_keras_output_name(tmp_path):
    history = _history(4, group_columns=False).rename(columns={"val_mae": "val_age_mae"})
    path = plots.plot_val_mae_curve(history, tmp_path / "val_mae.png")
    _assert_valid_png(path)


def test_plot_val_mae_curve_missing_column_raises(tmp_path):
    history = _history(4, group_columns=False).drop(columns=["val_mae"])
    with pytest.raises(ValueError, match="val_mae"):
        plots.plot_val_mae_curve(history, tmp_path / "val_mae.png")


def test_plot_scatter_normal(tmp_path):
    age_true, age_pred = _ages(500)
    path = plots.plot_scatter(age_true, age_pred, tmp_path / "scatter.png", title="M1 test set")
    _assert_valid_png(path)


def test_plot_scatter_single_point(tmp_path):
    path = plots.plot_scatter([30.0], [33.0], tmp_path / "scatter.png")
    _assert_valid_png(path)


def test_plot_scatter_prediction_beyond_axis(tmp_path):
    path = plots.plot_scatter([2.0, 75.0], [-4.0, 91.0], tmp_path / "scatter.png")
    _assert_valid_png(path)


def test_plot_scatter_empty_raises(tmp_path):
    with pytest.raises(ValueError, match="without any faces"):
        plots.plot_scatter([], [], tmp_path / "scatter.png")


def test_plot_residuals_normal(tmp_path):
    age_true, age_pred = _ages(500)
    path = plots.plot_residuals(age_true, age_pred, tmp_path / "residuals.png", title="M1 residuals")
    _assert_valid_png(path)


def test_plot_residuals_single_point(tmp_path):
    path = plots.plot_residuals([30.0], [33.0], tmp_path / "residuals.png")
    _assert_valid_png(path)


def test_plot_residuals_length_mismatch_raises(tmp_path):
    with pytest.raises(ValueError, match="same length"):
        plots.plot_residuals([30.0, 40.0], [33.0], tmp_path / "residuals.png")


def test_binned_mean_residuals():
    # Bin 0-5: 5 faces, mean true age (0 + 1 + 2 + 3 + 4.5) / 5 = 2.1, mean residual 15 / 5 = 3.0.
    # Bin 10-15: 4 faces, below the minimum of 5, so it has no point.
    age_true = np.array([0.0, 1.0, 2.0, 3.0, 4.5, 10.0, 11.0, 12.0, 13.0])
    residuals = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0, 0.0, 0.0])
    mean_ages, mean_residuals = plots._binned_mean_residuals(age_true, residuals)
    assert mean_ages.tolist() == pytest.approx([2.1])
    assert mean_residuals.tolist() == pytest.approx([3.0])


def test_plots_leave_pyplot_alone(tmp_path):
    age_true, age_pred = _ages(20)
    plots.plot_scatter(age_true, age_pred, tmp_path / "scatter.png")
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        assert pyplot.get_fignums() == []
