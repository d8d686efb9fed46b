"""Figures of comparison reports: several runs per figure, saved as PNG files.

Each function takes plain arrays or summaries, not run folders, draws on a
`matplotlib.figure.Figure` with the Agg backend (as `plots` does), writes
the PNG and returns its path. Figures with one panel per run share their
axes, so panels compare at a glance. Ages and errors are in years.
"""

import dataclasses
import math

import numpy as np

from faceage_keras import labels
from faceage_keras.plots import _age_axis_limits, _format_epoch_axis, _history_epochs, _new_figure, _point_alpha, _save

# Panels per row of figures with one panel per run.
MAX_PANEL_COLUMNS = 4
# Width in years of the residual histogram bins.
RESIDUAL_BIN_WIDTH = 2.0
# Residual histograms span this percentile range of all residuals, so a few outliers do not squeeze them.
RESIDUAL_PERCENTILES = (0.5, 99.5)


@dataclasses.dataclass(frozen=True)
class Series:
    """One line or point set of a figure: a legend label, values and a style.

    Attributes:
        label: str. Legend entry.
        values: array or summary object, as the plotting function expects.
        colour: matplotlib colour or None for the default cycle.
        linestyle: matplotlib line style.
    """

    label: str
    values: object
    colour: object = None
    linestyle: str = "-"


@dataclasses.dataclass(frozen=True)
class Panel:
    """One panel: a title and its series."""

    title: str
    series: tuple


def _panel_grid(num_panels, panel_size, *, max_columns=MAX_PANEL_COLUMNS, sharex=False, sharey=False, square=False):
    """Return a figure and a flat list of `num_panels` axes in a grid; unused axes are hidden.

    Square panels use matplotlib's "compressed" layout, which places
    fixed-aspect axes without cutting off their labels as "constrained" can.
    """
    num_columns = max(1, min(num_panels, max_columns))
    num_rows = math.ceil(num_panels / num_columns)
    width, height = panel_size
    figure = _new_figure(figsize=(width * num_columns, height * num_rows))
    if square:
        figure.set_layout_engine("compressed", w_pad=0.12, h_pad=0.08)
    axes = figure.subplots(num_rows, num_columns, squeeze=False, sharex=sharex, sharey=sharey).ravel()
    for axis in axes[num_panels:]:
        axis.set_visible(False)
    return figure, list(axes[:num_panels])


def _show_tick_labels(axes):
    # With shared axes matplotlib hides inner tick labels; panels read better with all of them.
    for axis in axes:
        axis.tick_params(labelbottom=True, labelleft=True)


def plot_scatter_panels(panels, age_true_by_panel, path, *, title):
    """Plot predicted against true age, one panel per run, with the identity line and shared axes.

    Args:
        panels: list of `Panel` whose series values are predicted ages.
        age_true_by_panel: list of true-age arrays, one per panel.
        path: PNG path.
        title: str. Figure title.
    """
    all_ages = [np.asarray(ages, dtype="float64") for ages in age_true_by_panel]
    all_ages += [np.asarray(series.values, dtype="float64") for panel in panels for series in panel.series]
    low, high = _age_axis_limits(*all_ages)

    figure, axes = _panel_grid(len(panels), (3.9, 3.9), sharex=True, sharey=True, square=True)
    for axis, panel, age_true in zip(axes, panels, age_true_by_panel):
        axis.plot([low, high], [low, high], color="black", linestyle="--", linewidth=1.0, label="Perfect prediction")
        for series in panel.series:
            age_pred = np.asarray(series.values, dtype="float64")
            mae = float(np.mean(np.abs(age_pred - age_true)))
            axis.scatter(
                age_true,
                age_pred,
                s=8,
                alpha=_point_alpha(age_pred.size),
                color=series.colour,
                edgecolors="none",
                rasterized=True,
                label=f"{series.label}: MAE {mae:.2f} years",
            )
        axis.set_xlim(low, high)
        axis.set_ylim(low, high)
        axis.set_box_aspect(1)
        axis.set_title(panel.title, fontsize=10)
        axis.set_xlabel("True age (years)")
        axis.set_ylabel("Predicted age (years)")
        axis.grid(True, alpha=0.3)
        legend = axis.legend(loc="upper left", fontsize=7, framealpha=0.85)
        for handle in legend.legend_handles:
            handle.set_alpha(1.0)
    _show_tick_labels(axes)
    figure.suptitle(title)
    return _save(figure, path)


def _residual_bins(panels):
    residuals = np.concatenate([np.asarray(series.values, dtype="float64") for panel in panels for series in panel.series])
    low, high = np.percentile(residuals, RESIDUAL_PERCENTILES)
    low = math.floor(min(low, -RESIDUAL_BIN_WIDTH) / RESIDUAL_BIN_WIDTH) * RESIDUAL_BIN_WIDTH
    high = math.ceil(max(high, RESIDUAL_BIN_WIDTH) / RESIDUAL_BIN_WIDTH) * RESIDUAL_BIN_WIDTH
    return np.arange(low, high + RESIDUAL_BIN_WIDTH / 2, RESIDUAL_BIN_WIDTH)


def plot_residual_overlay(panels, path, *, title):
    """Overlay the residual distributions (predicted minus true age) of several runs per panel.

    Each series is a frequency polygon: the density of each 2-year bin drawn
    at the bin centre, so runs with different numbers of faces compare
    directly and overlapping lines stay apart better than stacked bars. All
    panels share the bins and axes. Residuals outside the 0.5-99.5 percentile
    range of all series are left out of the polygons.
    """
    bins = _residual_bins(panels)
    centres = (bins[:-1] + bins[1:]) / 2
    figure, axes = _panel_grid(len(panels), (5.2, 4.4), max_columns=3, sharex=True, sharey=True)
    for axis, panel in zip(axes, panels):
        for series in panel.series:
            residuals = np.asarray(series.values, dtype="float64")
            density, _ = np.histogram(residuals, bins=bins)
            density = density / (residuals.size * RESIDUAL_BIN_WIDTH)
            axis.plot(
                centres,
                density,
                linewidth=1.6,
                color=series.colour,
                linestyle=series.linestyle,
                label=f"{series.label}: mean {np.mean(residuals):+.1f} years",
            )
        axis.axvline(0.0, color="black", linewidth=0.8)
        axis.set_ylim(bottom=0)
        axis.set_title(panel.title, fontsize=10)
        axis.set_xlabel("Residual: predicted − true age (years)")
        axis.set_ylabel("Density (share of faces per year)")
        axis.grid(True, alpha=0.3)
        axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, fontsize=7, frameon=False)
    _show_tick_labels(axes)
    figure.suptitle(title)
    return _save(figure, path)


def plot_age_calibration(panels, path, *, title):
    """Plot the mean predicted age per 5-year bin of true age with a ±1 std band, one panel per run.

    Series values are `calibration.AgeCalibrationBins`. Points sit at the
    mean true age of each bin, and the identity line marks a calibrated
    estimate. Points below it at old ages and above it at young ages show
    regression to the mean.
    """
    extents = [np.asarray(_age_axis_limits(np.zeros(1)))]
    for panel in panels:
        for series in panel.series:
            bins = series.values
            if bins.mean_true.size:
                extents.append(np.asarray(_age_axis_limits(bins.mean_true, bins.mean_pred - bins.std_pred, bins.mean_pred + bins.std_pred)))
    low = min(extent[0] for extent in extents)
    high = max(extent[1] for extent in extents)

    figure, axes = _panel_grid(len(panels), (3.9, 3.9), sharex=True, sharey=True, square=True)
    for axis, panel in zip(axes, panels):
        axis.plot([low, high], [low, high], color="black", linestyle="--", linewidth=1.0, label="Calibrated")
        for series in panel.series:
            bins = series.values
            axis.fill_between(
                bins.mean_true, bins.mean_pred - bins.std_pred, bins.mean_pred + bins.std_pred, color=series.colour, alpha=0.18, linewidth=0
            )
            axis.plot(
                bins.mean_true,
                bins.mean_pred,
                color=series.colour,
                linestyle=series.linestyle,
                marker="o",
                markersize=3,
                label=f"{series.label} (mean ± 1 std)",
            )
        axis.set_xlim(low, high)
        axis.set_ylim(low, high)
        axis.set_box_aspect(1)
        axis.set_title(panel.title, fontsize=10)
        axis.set_xlabel("True age, bin mean (years)")
        axis.set_ylabel("Predicted age (years)")
        axis.grid(True, alpha=0.3)
        axis.legend(loc="upper left", fontsize=7, framealpha=0.85)
    _show_tick_labels(axes)
    figure.suptitle(title)
    return _save(figure, path)


def plot_reliability(panels, path, *, title, xlabel, ylabel):
    """Draw reliability diagrams, one panel per run, with the ECE in each panel title.

    Each panel has one series whose values are `(ReliabilityBins, ece)`.
    Bars show the observed frequency per confidence bin, hatched bars the gap
    to the mean confidence of the bin, and the diagonal a calibrated model.
    Empty bins have no bar.
    """
    figure, axes = _panel_grid(len(panels), (3.6, 3.9), sharex=True, sharey=True, square=True)
    for axis, panel in zip(axes, panels):
        bins, ece = panel.series[0].values
        width = np.diff(bins.edges)
        centres = bins.edges[:-1] + width / 2
        filled = bins.counts > 0
        axis.bar(centres[filled], bins.frequency[filled], width=width[filled], color="tab:blue", alpha=0.75, edgecolor="white", label="Observed")
        axis.bar(
            centres[filled],
            bins.mean_confidence[filled] - bins.frequency[filled],
            bottom=bins.frequency[filled],
            width=width[filled],
            fill=False,
            hatch="///",
            edgecolor="tab:red",
            linewidth=0.6,
            label="Gap to confidence",
        )
        axis.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1.0, label="Calibrated")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_box_aspect(1)
        axis.set_title(panel.title, fontsize=10)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.grid(True, alpha=0.3)
        legend_title = f"ECE {ece:.3f}, {bins.counts.size} bins, {int(bins.counts.sum())} faces"
        axis.legend(loc="upper left", fontsize=7, title=legend_title, title_fontsize=7, framealpha=0.85)
    _show_tick_labels(axes)
    figure.suptitle(title)
    return _save(figure, path)


def plot_confusion_matrices(panels, path, *, title, class_names, xlabel, ylabel):
    """Draw confusion matrices, one panel per run, coloured by the share of each true class.

    Each panel has one series whose values are a count matrix with true
    classes in rows and predicted classes in columns. Cells show the count
    and the row percentage. Rows without faces stay white.
    """
    num_classes = len(class_names)
    side = 2.4 + 0.55 * num_classes
    figure, axes = _panel_grid(
        len(panels), (side, side), max_columns=3 if num_classes > 2 else MAX_PANEL_COLUMNS, square=True
    )
    image = None
    for axis, panel in zip(axes, panels):
        counts = np.asarray(panel.series[0].values, dtype="int64")
        row_totals = counts.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            shares = np.where(row_totals > 0, counts / row_totals, np.nan)
        image = axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
        for row in range(num_classes):
            for column in range(num_classes):
                share = shares[row, column]
                text = f"{counts[row, column]}" + ("" if math.isnan(share) else f"\n{share:.0%}")
                colour = "white" if not math.isnan(share) and share > 0.6 else "black"
                axis.text(column, row, text, ha="center", va="center", fontsize=7 if num_classes > 2 else 9, color=colour)
        axis.set_xticks(range(num_classes), class_names, rotation=30 if num_classes > 2 else 0, ha="right" if num_classes > 2 else "center", fontsize=8)
        axis.set_yticks(range(num_classes), class_names, fontsize=8)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.set_title(panel.title, fontsize=10)
    if image is not None:
        colour_bar = figure.colorbar(image, ax=axes, shrink=0.8)
        colour_bar.set_label("Share of the true class")
        colour_bar.ax.yaxis.set_major_formatter(_percent_formatter())
    figure.suptitle(title)
    return _save(figure, path)


def _percent_formatter():
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0, decimals=0)


def plot_delta_heatmap(delta_table, path, *, title):
    """Draw a ΔMAE heatmap (rows: models, columns: age groups) with a diverging scale centred at zero.

    Blue cells are lower MAE than the baseline, red cells higher. Each cell
    shows its value in years; cells where a group is empty show "–".
    """
    from matplotlib.colors import TwoSlopeNorm

    values = np.asarray(delta_table.values, dtype="float64")
    finite = values[np.isfinite(values)]
    limit = max(0.5, float(np.max(np.abs(finite))) if finite.size else 0.5)
    num_rows, num_columns = values.shape

    figure = _new_figure(figsize=(1.05 * num_columns + 3.6, 0.5 * num_rows + 2.3))
    axis = figure.subplots()
    image = axis.imshow(
        np.ma.masked_invalid(values), cmap="RdBu_r", norm=TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit), aspect="auto"
    )
    for row in range(num_rows):
        for column in range(num_columns):
            value = values[row, column]
            text = "–" if not math.isfinite(value) else f"{value:+.2f}"
            colour = "white" if math.isfinite(value) and abs(value) > 0.6 * limit else "black"
            axis.text(column, row, text, ha="center", va="center", fontsize=8, color=colour)

    column_labels = [_group_column_label(label) for label in delta_table.column_labels]
    axis.set_xticks(range(num_columns), column_labels, rotation=30, ha="right", fontsize=8)
    axis.set_yticks(range(num_rows), delta_table.row_labels, fontsize=8)
    # A line separates the five groups from the summary columns.
    axis.axvline(labels.NUM_AGE_GROUPS - 0.5, color="black", linewidth=1.5)
    axis.set_xlabel("True age group")
    axis.set_ylabel("Model")
    colour_bar = figure.colorbar(image, ax=axis)
    colour_bar.set_label(f"ΔMAE (years): {delta_table.method} − {delta_table.baseline}")
    axis.set_title(title, fontsize=10)
    return _save(figure, path)


def _group_column_label(label):
    if label in labels.AGE_GROUP_LABELS:
        name = labels.AGE_GROUP_NAMES[labels.AGE_GROUP_LABELS.index(label)]
        return f"{name} ({label.replace('-', '–')})"
    return label


def plot_training_losses(panels, path, *, title):
    """Plot training and validation loss per epoch, one panel per run.

    Each panel has one series whose values are a history table with `loss`
    and, when present, `val_loss`. Panels keep their own loss axes, because
    the losses of regression and classification models differ in scale.
    """
    figure, axes = _panel_grid(len(panels), (3.9, 3.1))
    for axis, panel in zip(axes, panels):
        history = panel.series[0].values
        epochs = _history_epochs(history)
        marker = "o" if len(epochs) <= 30 else None
        if "loss" in history.columns:
            axis.plot(epochs, history["loss"].to_numpy(dtype="float64"), color="tab:blue", marker=marker, markersize=3, label="Training")
        if "val_loss" in history.columns:
            axis.plot(
                epochs, history["val_loss"].to_numpy(dtype="float64"), color="tab:orange", linestyle="--", marker=marker, markersize=3, label="Validation"
            )
        _format_epoch_axis(axis, epochs)
        axis.set_title(panel.title, fontsize=10)
        axis.set_xlabel("Epoch")
        axis.set_ylabel("Loss")
        axis.grid(True, alpha=0.3)
        axis.legend(loc="upper right", fontsize=7)
    figure.suptitle(title)
    return _save(figure, path)


def plot_validation_mae(series_list, path, *, title):
    """Plot the validation MAE per epoch of every run on one axis.

    Each series' values are a history table with `val_mae` (or
    `val_age_mae`). The legend sits to the right of the axis, so lines stay
    visible however many runs there are.
    """
    figure = _new_figure(figsize=(9.5, 4.8))
    axis = figure.subplots()
    all_epochs = []
    for series in series_list:
        history = series.values
        column = next(name for name in ("val_mae", "val_age_mae") if name in history.columns)
        epochs = _history_epochs(history)
        all_epochs.append(epochs)
        axis.plot(
            epochs,
            history[column].to_numpy(dtype="float64"),
            color=series.colour,
            linestyle=series.linestyle,
            marker="o" if len(epochs) <= 30 else None,
            markersize=3,
            linewidth=1.6,
            label=series.label,
        )
    _format_epoch_axis(axis, np.unique(np.concatenate(all_epochs)))
    axis.set_xlabel("Epoch")
    axis.set_ylabel("Validation MAE (years)")
    axis.grid(True, alpha=0.3)
    axis.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8)
    axis.set_title(title)
    return _save(figure, path)


def plot_domain_shift(rows, evaluation_labels, path, *, title):
    """Draw horizontal bars of the in-domain test MAE beside each extra evaluation's MAE, per run.

    Args:
        rows: list of `(run label, {evaluation label: (mae, low, high)})`.
            Missing evaluations have no bar.
        evaluation_labels: list of str, the in-domain label first.
        path: PNG path.
        title: str.
    """
    from matplotlib import colormaps

    colours = colormaps["tab10"]
    num_bars = len(evaluation_labels)
    bar_height = 0.8 / num_bars
    figure = _new_figure(figsize=(8.5, 0.9 + (0.32 * num_bars + 0.25) * len(rows) + 0.6))
    axis = figure.subplots()
    for bar_index, evaluation in enumerate(evaluation_labels):
        positions, values, errors = [], [], []
        for row_index, (_, values_by_label) in enumerate(rows):
            if evaluation in values_by_label:
                mae, low, high = values_by_label[evaluation]
                positions.append(row_index - 0.4 + bar_height * (bar_index + 0.5))
                values.append(mae)
                errors.append((mae - low, high - mae))
        if positions:
            axis.barh(
                positions,
                values,
                height=bar_height * 0.92,
                xerr=np.asarray(errors).T,
                color=colours(bar_index % 10),
                error_kw={"elinewidth": 0.8, "capsize": 2},
                label=evaluation,
            )
    axis.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("MAE (years), bars: 95% bootstrap interval")
    axis.grid(True, axis="x", alpha=0.3)
    axis.legend(title="Test data", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8)
    axis.set_title(title)
    return _save(figure, path)
