"""Figures of training histories and age predictions, saved as PNG files.

Each function draws on a `matplotlib.figure.Figure` rendered by the Agg
backend, writes a PNG to the given path (creating missing parent folders),
releases the figure and returns the path as a `pathlib.Path`. Figures are
never registered with `matplotlib.pyplot`, so plotting neither switches the
pyplot backend of a notebook nor opens windows.

History tables are pandas DataFrames shaped like the CSV that
`keras.callbacks.CSVLogger` writes: an `epoch` column, counted from 0, and
one column per logged metric. Epochs are drawn counted from 1, as Keras
prints them during training.
"""

from pathlib import Path

import numpy as np

from faceage_keras import labels
from faceage_keras.metrics import GROUP_METRIC_SUFFIXES, _check_targets, mean_absolute_error

DPI = 150
# Default axis range in years of age plots, wide enough for clipped ages (0-75).
AGE_AXIS_LIMITS = (0.0, 80.0)
# Histories with at most this many epochs get a marker at every epoch.
MAX_EPOCHS_WITH_MARKERS = 30
# Width in years of the true-age bins of the mean-residual line, and the
# minimum number of faces a bin needs to get a point on that line.
RESIDUAL_BIN_WIDTH = 5.0
MIN_FACES_PER_RESIDUAL_BIN = 5


def plot_loss_curve(history, path, *, title=None):
    """Plot training and validation loss per epoch and save the figure as a PNG.

    The first panel shows `loss` and, when present, `val_loss`. Every other
    column that ends in `_loss`, such as `age_loss` or `val_gender_loss`, is a
    per-output loss, and each output gets its own panel because the scales of
    age and gender losses differ by orders of magnitude. Returns the path.
    """
    epochs = _history_epochs(history)
    if "loss" not in history.columns:
        raise ValueError(f"The history table has no 'loss' column. Its columns are {list(history.columns)}.")

    output_names = _per_output_loss_names(history.columns)
    num_panels = 1 + len(output_names)
    num_columns = min(num_panels, 3)
    num_rows = int(np.ceil(num_panels / num_columns))

    figure = _new_figure(figsize=(4.8 * num_columns, 3.8 * num_rows))
    axes = figure.subplots(num_rows, num_columns, squeeze=False).ravel()

    panels = [("Total loss", "loss", "val_loss")]
    panels += [(f"Output '{name}'", f"{name}_loss", f"val_{name}_loss") for name in output_names]
    for axis, (panel_title, train_column, val_column) in zip(axes, panels):
        _plot_train_val(axis, history, epochs, train_column, val_column)
        axis.set_title(panel_title)
        axis.set_xlabel("Epoch")
        axis.set_ylabel("Loss")
    for axis in axes[num_panels:]:
        axis.set_visible(False)

    figure.suptitle(title or "Training and validation loss")
    return _save(figure, path)


def plot_val_mae_curve(history, path, *, title=None):
    """Plot the validation MAE in years per epoch, overall and per age group, and save it as a PNG.

    The overall curve is the `val_mae` column (or `val_age_mae`, the name Keras 3
    gives it for a model whose age output is called `age`). The group curves are
    the columns `val_mae_<suffix>`, with suffixes from
    `metrics.GROUP_METRIC_SUFFIXES`. Groups without a column are left out.
    Returns the path.
    """
    epochs = _history_epochs(history)
    overall_column = next((name for name in ("val_mae", "val_age_mae") if name in history.columns), None)
    if overall_column is None:
        raise ValueError(
            "The history table has neither a 'val_mae' nor a 'val_age_mae' column. "
            f"Its columns are {list(history.columns)}."
        )

    figure = _new_figure(figsize=(7.5, 4.2))
    axis = figure.subplots()
    marker_size = _marker_size(len(epochs))
    colours = _group_colours()

    for label, suffix, colour in zip(labels.AGE_GROUP_LABELS, GROUP_METRIC_SUFFIXES, colours):
        column = f"val_mae_{suffix}"
        if column in history.columns:
            axis.plot(
                epochs,
                history[column].to_numpy(dtype="float64"),
                color=colour,
                linewidth=1.3,
                marker="o" if marker_size else None,
                markersize=marker_size * 0.8,
                label=f"Age {label}",
            )
    axis.plot(
        epochs,
        history[overall_column].to_numpy(dtype="float64"),
        color="black",
        linewidth=2.2,
        marker="o" if marker_size else None,
        markersize=marker_size,
        label="All faces",
    )

    axis.set_xlabel("Epoch")
    axis.set_ylabel("Validation MAE (years)")
    _format_epoch_axis(axis, epochs)
    axis.grid(True, alpha=0.3)
    axis.legend(title="Validation faces", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    axis.set_title(title or "Validation mean absolute error")
    return _save(figure, path)


def plot_scatter(age_true, age_pred, path, *, title=None):
    """Plot predicted against true age with the identity line and save the figure as a PNG.

    Both axes span 0-80 years, or more when a prediction falls outside that
    range, and have equal scales. The legend gives the number of faces and the
    MAE. Points get more transparent as their number grows. Returns the path.
    """
    age_true, age_pred = _check_targets(age_true, age_pred, true_name="age_true", pred_name="age_pred")
    if age_true.size == 0:
        raise ValueError("Cannot plot predicted against true age without any faces.")
    mae = mean_absolute_error(age_true, age_pred)
    low, high = _age_axis_limits(age_true, age_pred)

    figure = _new_figure(figsize=(5.6, 5.6))
    axis = figure.subplots()
    axis.plot([low, high], [low, high], color="black", linestyle="--", linewidth=1.2, label="Perfect prediction")
    axis.scatter(
        age_true,
        age_pred,
        s=14,
        alpha=_point_alpha(age_true.size),
        color="tab:blue",
        edgecolors="none",
        label=f"Faces (n = {age_true.size}, MAE = {mae:.2f} years)",
    )

    axis.set_xlim(low, high)
    axis.set_ylim(low, high)
    axis.set_aspect("equal")
    axis.set_xlabel("True age (years)")
    axis.set_ylabel("Predicted age (years)")
    axis.grid(True, alpha=0.3)
    legend = axis.legend(loc="upper left")
    for handle in legend.legend_handles:
        handle.set_alpha(1.0)
    axis.set_title(title or "Predicted vs true age")
    return _save(figure, path)


def plot_residuals(age_true, age_pred, path, *, title=None):
    """Plot the distribution of age residuals and their trend over true age, and save it as a PNG.

    Residuals are predicted minus true age, in years, so a positive residual
    is an overestimate. The left panel is a histogram with the mean residual
    and the (population) standard deviation in the legend. The right panel
    plots each residual against the true age, with the mean residual of every
    5-year bin of true age that contains at least 5 faces. A line falling from
    positive to negative shows regression to the mean. Returns the path.
    """
    age_true, age_pred = _check_targets(age_true, age_pred, true_name="age_true", pred_name="age_pred")
    if age_true.size == 0:
        raise ValueError("Cannot plot residuals without any faces.")
    residuals = age_pred - age_true
    mean = float(np.mean(residuals))
    std = float(np.std(residuals))

    figure = _new_figure(figsize=(11.0, 4.4))
    histogram_axis, trend_axis = figure.subplots(1, 2)

    counts, _, _ = histogram_axis.hist(
        residuals, bins="auto", color="tab:blue", alpha=0.8, edgecolor="white", linewidth=0.5, zorder=2
    )
    histogram_axis.axvspan(
        mean - std, mean + std, color="tab:red", alpha=0.12, zorder=1, label=f"Mean ± std, std = {std:.2f} years"
    )
    histogram_axis.axvline(0.0, color="black", linewidth=1.0, zorder=3, label="Zero error")
    histogram_axis.axvline(
        mean, color="tab:red", linestyle="--", linewidth=1.5, zorder=3, label=f"Mean = {mean:+.2f} years"
    )
    # Headroom above the highest bar keeps the legend off the bars.
    histogram_axis.set_ylim(0, counts.max() * 1.45)
    histogram_axis.set_xlabel("Residual: predicted - true age (years)")
    histogram_axis.set_ylabel("Number of faces")
    histogram_axis.set_title("Residual distribution")
    histogram_axis.legend(loc="upper left")
    histogram_axis.grid(True, axis="y", alpha=0.3, zorder=0)

    trend_axis.scatter(
        age_true, residuals, s=12, alpha=_point_alpha(age_true.size), color="tab:blue", edgecolors="none", label="Faces"
    )
    trend_axis.axhline(0.0, color="black", linewidth=1.0)
    bin_ages, bin_residuals = _binned_mean_residuals(age_true, residuals)
    if bin_ages.size:
        trend_axis.plot(
            bin_ages,
            bin_residuals,
            color="tab:red",
            marker="o",
            markersize=4,
            linewidth=1.8,
            label=f"Mean per {RESIDUAL_BIN_WIDTH:g}-year bin",
        )
    low, high = _age_axis_limits(age_true)
    trend_axis.set_xlim(low, high)
    trend_axis.set_xlabel("True age (years)")
    trend_axis.set_ylabel("Residual (years)")
    trend_axis.set_title("Residual vs true age")
    trend_axis.grid(True, alpha=0.3)
    # Below the panel, the legend cannot hide points wherever the residuals fall.
    legend = trend_axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    for handle in legend.legend_handles:
        handle.set_alpha(1.0)

    figure.suptitle(title or "Age residuals")
    return _save(figure, path)


def plot_historical_look(faces, path, *, captions=None, seed=0, title=None):
    """Plot faces before and after the look of old photographs, and each effect alone, and save it as a PNG.

    The rows show the faces, the faces rendered with
    `historical.EVALUATION_LOOK`, the faces with one random draw of the
    training look `historical.HistoricalLook()`, and the face with the
    brightest corners (where vignetting and dark dust show best) with each
    effect of `historical.EFFECTS` alone at full strength. Faces are drawn
    one image pixel per figure pixel, so grain and JPEG blocks show as the
    model receives them. Returns the path.

    Args:
        faces: list of uint8 RGB arrays of one shape (side, side, 3).
        path: Output PNG path.
        captions: list of str or None. One caption per face, e.g. its age.
        seed: int. Seed of the rendering; face `i` uses `(seed, i)`.
        title: str or None. Figure title.
    """
    from faceage_keras import historical

    if not faces:
        raise ValueError("Cannot plot the historical look without any faces.")
    shapes = {np.shape(face) for face in faces}
    if len(shapes) != 1:
        raise ValueError(f"All faces must have one shape. Resize them first. Received shapes: {sorted(shapes)}")
    if captions is not None and len(captions) != len(faces):
        raise ValueError(f"`captions` has {len(captions)} entries for {len(faces)} faces.")

    training_look = historical.HistoricalLook(probability=1.0)
    example = faces[int(np.argmax([_corner_brightness(face) for face in faces]))]
    rows = [
        ("Original", list(faces), captions),
        ("Evaluation look", [historical.render_historical(face, (seed, i)) for i, face in enumerate(faces)], None),
        (
            "Training look\n(random draws)",
            [historical.render_historical(face, (seed, i), training_look) for i, face in enumerate(faces)],
            None,
        ),
        (
            "Each effect alone,\nfull strength",
            [example]
            + [
                historical.render_historical(example, seed, historical.HistoricalLook.single_effect(effect))
                for effect in historical.EFFECTS
            ],
            ["original"] + list(historical.EFFECTS),
        ),
    ]

    # One image pixel per figure pixel, with room for the row labels and captions.
    dpi = 100
    side = shapes.pop()[0]
    num_columns = max(len(images) for _, images, _ in rows)
    cell = side / dpi
    figure = _new_figure(figsize=(1.3 + num_columns * cell * 1.04, len(rows) * (cell + 0.3) + 0.4), dpi=dpi)
    axes = figure.subplots(len(rows), num_columns, squeeze=False)
    for row_axes, (label, images, texts) in zip(axes, rows):
        for column, axis in enumerate(row_axes):
            axis.set_xticks([])
            axis.set_yticks([])
            if column >= len(images):
                axis.set_visible(False)
                continue
            axis.imshow(images[column], interpolation="nearest")
            if texts is not None:
                axis.set_title(texts[column], fontsize=8)
        row_axes[0].set_ylabel(label, fontsize=9)

    figure.suptitle(title or "Historical-photograph look")
    return _save(figure, path, dpi=dpi)


def _corner_brightness(face):
    corner = max(1, len(face) // 6)
    corners = [face[:corner, :corner], face[:corner, -corner:], face[-corner:, :corner], face[-corner:, -corner:]]
    return float(np.mean([np.mean(part) for part in corners]))


def _new_figure(figsize, dpi=DPI):
    # Imported here so that importing faceage_keras does not import matplotlib.
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=dpi, layout="constrained")


def _save(figure, path, dpi=DPI):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png", dpi=dpi)
    figure.clear()
    return path


def _history_epochs(history):
    """Return the 1-based epoch numbers of a history table, raising if it has no rows."""
    if len(history) == 0:
        raise ValueError("The history table has no rows, so there is no epoch to plot.")
    if "epoch" in history.columns:
        return history["epoch"].to_numpy(dtype="float64") + 1
    return np.arange(1, len(history) + 1, dtype="float64")


def _per_output_loss_names(columns):
    """Return the output names of per-output loss columns, such as `age` for `age_loss`."""
    names = []
    for column in columns:
        column = str(column)
        if column in ("loss", "val_loss") or not column.endswith("_loss"):
            continue
        name = column[: -len("_loss")]
        if name.startswith("val_"):
            name = name[len("val_") :]
        if name not in names:
            names.append(name)
    return names


def _plot_train_val(axis, history, epochs, train_column, val_column):
    marker_size = _marker_size(len(epochs))
    marker = "o" if marker_size else None
    if train_column in history.columns:
        axis.plot(
            epochs,
            history[train_column].to_numpy(dtype="float64"),
            color="tab:blue",
            marker=marker,
            markersize=marker_size,
            label="Training",
        )
    if val_column in history.columns:
        axis.plot(
            epochs,
            history[val_column].to_numpy(dtype="float64"),
            color="tab:orange",
            linestyle="--",
            marker=marker,
            markersize=marker_size,
            label="Validation",
        )
    _format_epoch_axis(axis, epochs)
    axis.grid(True, alpha=0.3)
    axis.legend(loc="best")


def _marker_size(num_epochs):
    return 4.0 if num_epochs <= MAX_EPOCHS_WITH_MARKERS else 0.0


def _format_epoch_axis(axis, epochs):
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if len(epochs) == 1:
        axis.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)


def _group_colours():
    from matplotlib import colormaps

    colour_map = colormaps["viridis"]
    return [colour_map(index / (labels.NUM_AGE_GROUPS - 1) * 0.9) for index in range(labels.NUM_AGE_GROUPS)]


def _point_alpha(num_points):
    """Return a marker opacity that keeps dense regions of a scatter plot readable."""
    if num_points <= 100:
        return 0.8
    return float(np.clip(8.0 / np.sqrt(num_points), 0.08, 0.6))


def _age_axis_limits(*ages):
    """Return axis limits in years that cover AGE_AXIS_LIMITS and every given age."""
    low = min(AGE_AXIS_LIMITS[0], *(float(np.floor(values.min())) for values in ages))
    high = max(AGE_AXIS_LIMITS[1], *(float(np.ceil(values.max())) for values in ages))
    return low, high


def _binned_mean_residuals(age_true, residuals):
    """Return the mean true age and mean residual of each true-age bin that contains enough faces.

    The mean true age, not the bin centre, places each point, because clipped
    ages pile up at the upper edge of the last bin.
    """
    low, _ = _age_axis_limits(age_true)
    bin_indices = np.floor((age_true - low) / RESIDUAL_BIN_WIDTH).astype("int64")

    mean_ages = []
    mean_residuals = []
    for index in np.unique(bin_indices):
        in_bin = bin_indices == index
        if np.count_nonzero(in_bin) >= MIN_FACES_PER_RESIDUAL_BIN:
            mean_ages.append(float(np.mean(age_true[in_bin])))
            mean_residuals.append(float(np.mean(residuals[in_bin])))
    return np.asarray(mean_ages), np.asarray(mean_residuals)
