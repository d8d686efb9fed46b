"""Comparison reports of training runs: tables, fairness, calibration and figures in Markdown and HTML.

`write_report` reads run folders (and a grid manifest), computes every
number from the runs' `test_predictions.csv` with `comparison`, draws the
figures with `report_figures` and writes `report.md`, a self-contained
`report.html` and `figures/*.png` into the output folder.
"""

import dataclasses
import datetime
import logging
import math
import pathlib
import warnings

from faceage_keras import comparison, fairness, labels, metrics, report_figures
from faceage_keras.calibration import NUM_CONFIDENCE_BINS
from faceage_keras.report_figures import Panel, Series
from faceage_keras.report_render import Cell, Document, Figure, Table, render_html, render_markdown
from faceage_keras.run_folders import ReportError, balance_sort_key, collect_runs

logger = logging.getLogger(__name__)

NO_FINISHED_RUN = "No run finished, so there are no results."
FIGURES_DIR = "figures"
MODEL_COLOURS = {"m1": "tab:blue", "m2": "tab:orange", "m3": "tab:green", "m4": "tab:red", "m5": "tab:purple"}
BALANCE_LINE_STYLES = {"none": "-", "oversample": "--", "reweight": ":"}
GROUP_ROW_NAMES = tuple(
    f"{name} ({label.replace('-', '–')})" for name, label in zip(labels.AGE_GROUP_NAMES, labels.AGE_GROUP_LABELS)
)

NO_GENDER_HEAD = "the model has no gender head (M2 and M4 predict age only)"
NO_GROUP_HEAD = "only models with an age-group head (M3, M4) give an age as expectation over the groups"
NO_KNOWN_GENDER = "the test data has no known gender"
EMPTY_GROUP = "no test faces in this age group"
NO_GENDER_FACES = "no test faces of this gender"
NO_PREDICTED_FEMALE = "undefined because no face is predicted female"
NO_TRUE_FEMALE = "undefined because no test face is female"
NO_PROB_FEMALE = "the predictions table has no P(female) column"


@dataclasses.dataclass
class ReportInputs:
    """The runs of a report with their summaries.

    Attributes:
        runs: list of `Run`, failed ones included.
        manifest: dict. The grid manifest, empty without one.
        summaries: dict. Run name to `PredictionSummary` of the test set.
        evaluation_summaries: dict. `(run name, evaluation label)` to
            `PredictionSummary`.
        num_resamples, seed: int. Bootstrap settings.
    """

    runs: list
    manifest: dict
    summaries: dict
    evaluation_summaries: dict
    num_resamples: int
    seed: int

    @property
    def finished(self):
        return [run for run in self.runs if run.ok]


# Formatting.


def _format(value, digits):
    return f"{value:.{digits}f}" if value is not None and math.isfinite(value) else None


def _value(table, value, digits, reason):
    text = _format(value, digits)
    return text if text is not None else table.missing(reason)


def _signed(table, value, reason):
    return f"{value:+.2f}" if value is not None and math.isfinite(value) else table.missing(reason)


def _interval(table, low, high, reason):
    if not (math.isfinite(low) and math.isfinite(high)):
        return table.missing(reason)
    return f"[{low:.2f}, {high:.2f}]"


def _count(number, noun):
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _model_name(run):
    return (run.model or "?").upper()


def _series_label(run, age):
    return f"{run.name}, {age.name}" if age.name else run.name


def _panel_title(run):
    return f"{run.name}\n{_model_name(run)}, balance: {run.balance}"


def _run_colours(runs, *, by_balance=False):
    """Return a colour per run name: the model's colour, or a palette colour where models repeat."""
    from matplotlib import colormaps

    keys = [(run.model, run.balance if by_balance else None) for run in runs]
    if len(set(keys)) == len(keys):
        return {run.name: MODEL_COLOURS.get(run.model, "tab:gray") for run in runs}
    palette = colormaps["tab20"]
    return {run.name: palette(index % 20) for index, run in enumerate(runs)}


# Inputs.


def read_inputs(run_paths=(), grid=None, *, num_resamples=metrics.BOOTSTRAP_RESAMPLES, seed=metrics.BOOTSTRAP_SEED):
    """Read the runs and compute the summaries of their test sets and extra evaluations."""
    manifest, runs = collect_runs(run_paths, grid)
    summaries, evaluation_summaries = {}, {}
    for run in runs:
        if not run.ok:
            continue
        summaries[run.name] = _summarize(run.predictions, run.folder, num_resamples, seed)
        for evaluation in run.evaluations:
            if evaluation.predictions is not None:
                evaluation_summaries[(run.name, evaluation.label)] = _summarize(
                    evaluation.predictions, evaluation.folder, num_resamples, seed
                )
    return ReportInputs(runs, manifest, summaries, evaluation_summaries, num_resamples, seed)


def _summarize(predictions, folder, num_resamples, seed):
    try:
        return comparison.summarize_predictions_table(predictions, num_resamples=num_resamples, seed=seed)
    except ValueError as error:
        raise ReportError(f"Cannot summarise the predictions in {folder}: {error}") from error


# Sections.


def _introduction(document, inputs, run_paths, grid):
    finished, failed = len(inputs.finished), len(inputs.runs) - len(inputs.finished)
    document.introduction.append(
        f"This report compares {_count(len(inputs.runs), 'run')}: {finished} finished and {failed} failed. "
        f"It was generated on {datetime.datetime.now().isoformat(timespec='seconds')}."
    )
    sources = []
    if grid is not None:
        started = inputs.manifest.get("started")
        sources.append(f"grid manifest {grid}" + (f" (grid started {started})" if started else ""))
    sources += [f"run folder {path}" for path in run_paths]
    document.introduction.append("Sources: " + "; ".join(sources) + ".")
    document.introduction.append(
        "Every number is computed from the test predictions of each run's best epoch. True ages are clipped to "
        f"0–75 years, as in training. MAE intervals are 95% percentile bootstrap intervals over test faces "
        f"({inputs.num_resamples} resamples, seed {inputs.seed}). Age groups are those of the true age. Female is "
        "the positive class of gender precision, recall and F1. M3 and M4 give two ages: the centre of the most "
        "probable group and the expectation over the group probabilities."
    )
    synthetic = [run.name for run in inputs.finished if run.info.get("synthetic_data")]
    if synthetic:
        document.introduction.append(
            f"WARNING: the runs {', '.join(synthetic)} were trained and tested on synthetic drawn portraits. "
            "Their numbers say nothing about real faces."
        )


def _runs_section(document, inputs):
    section = document.section("Runs")
    table = section.table(
        Table(
            "Runs",
            ["Run", "Model", "Balance", "Status", "Backbone", "Weights", "Image size (px)", "Best epoch", "Training time", "Test faces", "Data"],
        )
    )
    for run in inputs.runs:
        if not run.ok:
            failed = table.missing(f"{run.name} failed: {run.error}")
            status = Cell("failed", failed.note)
            table.add_row([run.name, _model_name(run), run.balance, status] + [table.missing("the run failed")] * 7)
            continue

        config, run_metrics = run.config, run.metrics
        best_epoch = run_metrics.get("best_epoch")
        epochs = config.get("epochs")
        seconds = run_metrics.get("train_seconds")
        data_dir = run.info.get("data_dir")
        data = pathlib.Path(data_dir).name if data_dir else None
        if data and run.info.get("synthetic_data"):
            data += " (synthetic)"
        table.add_row(
            [
                run.name,
                _model_name(run),
                run.balance,
                "ok",
                config.get("backbone") or table.missing("not in config.json"),
                config.get("weights") or table.missing("not in config.json"),
                str(config["image_size"]) if config.get("image_size") else table.missing("not in config.json"),
                f"{best_epoch} of {epochs}" if best_epoch else table.missing("not in metrics.json"),
                f"{seconds / 60:.1f} min" if isinstance(seconds, (int, float)) else table.missing("not in metrics.json"),
                str(inputs.summaries[run.name].num_faces),
                data or table.missing("not in run.json"),
            ]
        )


def _gender_cells(table, summary):
    if not summary.has_gender_head:
        return [table.missing(NO_GENDER_HEAD)] * 4
    if summary.gender is None:
        return [table.missing(NO_KNOWN_GENDER)] * 4

    counts = summary.gender_confusion
    reasons = {
        "accuracy": NO_KNOWN_GENDER,
        "precision": NO_PREDICTED_FEMALE,
        "recall": NO_TRUE_FEMALE,
        "f1": NO_TRUE_FEMALE if counts[:, 1].sum() == 0 else NO_PREDICTED_FEMALE,
    }
    return [_value(table, summary.gender[key], 3, reason) for key, reason in reasons.items()]


def _overall_section(document, inputs, figures_dir):
    section = document.section("Overall results")
    finished = inputs.finished
    if not finished:
        section.text(NO_FINISHED_RUN)
        return

    table = section.table(
        Table(
            "Test results per run",
            [
                "Run",
                "Model",
                "Balance",
                "Faces",
                "MAE (years)",
                "95% CI",
                "CS@5",
                "MAE, expectation (years)",
                "95% CI, expectation",
                "CS@5, expectation",
                "Gender accuracy",
                "Precision",
                "Recall",
                "F1",
            ],
            caption="MAE of M3 and M4 uses the centre of the most probable group; the expectation columns use "
            "the expectation over the group probabilities. CS@5 is the share of faces within 5 years.",
        )
    )
    for run in finished:
        summary = inputs.summaries[run.name]
        centre = summary.ages[0]
        expected = summary.age(comparison.EXPECTED_ESTIMATE)
        if expected is None:
            expectation_cells = [table.missing(NO_GROUP_HEAD)] * 3
        else:
            expectation_cells = [
                _format(expected.mae, 2),
                _interval(table, expected.mae_low, expected.mae_high, "no test faces"),
                _format(expected.cs5, 3),
            ]
        table.add_row(
            [
                run.name,
                _model_name(run),
                run.balance,
                str(summary.num_faces),
                _format(centre.mae, 2),
                _interval(table, centre.mae_low, centre.mae_high, "no test faces"),
                _format(centre.cs5, 3),
            ]
            + expectation_cells
            + _gender_cells(table, summary)
        )

    panels = [
        Panel(_panel_title(run), tuple(Series(age.name or "Faces", age_values, colour)
                                         for age, age_values, colour in _age_series(inputs.summaries[run.name])))
        for run in finished
    ]
    path = report_figures.plot_scatter_panels(
        panels, [inputs.summaries[run.name].age_true for run in finished], figures_dir / "scatter.png",
        title="Predicted vs true age on the test set",
    )
    section.figure(Figure("Predicted vs true age", path, "One panel per run; the dashed line is a perfect prediction."))

    path = report_figures.plot_residual_overlay(
        _residual_panels(finished, inputs.summaries), figures_dir / "residuals.png",
        title="Residual distributions by balancing method",
    )
    section.figure(
        Figure(
            "Residual distributions",
            path,
            "Residual = predicted − true age; negative residuals are underestimates. "
            "One panel per balancing method, one line per run and age estimate.",
        )
    )


def _age_series(summary):
    colours = ("tab:blue", "tab:orange")
    return [(age, summary.predictions[age.estimate], colour) for age, colour in zip(summary.ages, colours)]


def _residual_panels(runs, summaries):
    panels = []
    for balance in sorted({run.balance for run in runs}, key=balance_sort_key):
        members = [run for run in runs if run.balance == balance]
        colours = _run_colours(members)
        series = []
        for run in members:
            for age in summaries[run.name].ages:
                style = "--" if age.estimate == comparison.EXPECTED_ESTIMATE else "-"
                series.append(Series(_series_label(run, age), age.residuals, colours[run.name], style))
        panels.append(Panel(f"Balance: {balance}", tuple(series)))
    return panels


def _all_series(inputs):
    return [(run, age) for run in inputs.finished for age in inputs.summaries[run.name].ages]


def _groupwise_section(document, inputs):
    section = document.section("Group-wise MAE")
    series = _all_series(inputs)
    if not series:
        section.text(NO_FINISHED_RUN)
        return
    table = section.table(
        Table(
            "MAE (years) per true age group",
            ["Age group"] + [_series_label(run, age) for run, age in series],
            caption="The last row is the unweighted mean of the five groups, so each age group counts the same.",
        )
    )
    for label, row_name in zip(labels.AGE_GROUP_LABELS, GROUP_ROW_NAMES):
        table.add_row([row_name] + [_value(table, age.mae_by_group[label], 2, EMPTY_GROUP) for _, age in series])
    table.add_row(["Average of groups"] + [_value(table, age.group_average, 2, EMPTY_GROUP) for _, age in series])


def _fairness_section(document, inputs):
    section = document.section("Fairness")
    series = _all_series(inputs)
    if not series:
        section.text(NO_FINISHED_RUN)
        return

    table = section.table(
        Table(
            "MAE (years) by true gender",
            ["Run", "Male faces", "Female faces", "MAE male", "MAE female", "Gap (female − male)"],
            caption="A positive gap means larger age errors on women.",
        )
    )
    for run, age in series:
        by_gender = age.by_gender
        table.add_row(
            [
                _series_label(run, age),
                str(by_gender["num_male"]),
                str(by_gender["num_female"]),
                _value(table, by_gender["male"], 2, NO_GENDER_FACES),
                _value(table, by_gender["female"], 2, NO_GENDER_FACES),
                _signed(table, by_gender["gap"], NO_GENDER_FACES),
            ]
        )

    gender_runs = [run for run in inputs.finished if inputs.summaries[run.name].gender_accuracy_by_group is not None]
    if gender_runs:
        table = section.table(
            Table(
                "Gender accuracy per true age group",
                ["Run"] + list(GROUP_ROW_NAMES) + ["Largest gap"],
                caption="Largest gap: highest minus lowest group accuracy.",
            )
        )
        for run in gender_runs:
            accuracy_by_group = inputs.summaries[run.name].gender_accuracy_by_group
            gap = _largest_gap(accuracy_by_group)
            table.add_row(
                [run.name]
                + [_value(table, accuracy_by_group[label], 3, EMPTY_GROUP) for label in labels.AGE_GROUP_LABELS]
                + [_value(table, gap["gap"], 3, EMPTY_GROUP)]
            )
    else:
        section.text("No finished run has a gender head with known test genders, so there is no gender accuracy per age group.")

    table = section.table(
        Table(
            "Largest group-wise MAE gap",
            ["Run", "Lowest MAE group", "Lowest MAE (years)", "Highest MAE group", "Highest MAE (years)", "Gap (years)"],
        )
    )
    for run, age in series:
        gap = age.group_gap
        if gap["lowest"] is None:
            table.add_row([_series_label(run, age)] + [table.missing(EMPTY_GROUP)] * 5)
            continue
        table.add_row(
            [
                _series_label(run, age),
                GROUP_ROW_NAMES[labels.AGE_GROUP_LABELS.index(gap["lowest"])],
                _format(gap["low"], 2),
                GROUP_ROW_NAMES[labels.AGE_GROUP_LABELS.index(gap["highest"])],
                _format(gap["high"], 2),
                _format(gap["gap"], 2),
            ]
        )


def _largest_gap(values_by_group):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
        return fairness.largest_gap(values_by_group)


def _age_group_section(document, inputs, figures_dir):
    section = document.section("Age groups")
    finished = inputs.finished
    if not finished:
        section.text(NO_FINISHED_RUN)
        return

    table = section.table(
        Table(
            "Age-group accuracy",
            ["Run", "Model", "Source of the group", "Age-group accuracy"],
            caption="For M3 and M4 the group head predicts the group; for the other models it is the group of the predicted age.",
        )
    )
    for run in finished:
        summary = inputs.summaries[run.name]
        source = "group head" if summary.has_group_head else "group of the predicted age"
        table.add_row([run.name, _model_name(run), source, _value(table, summary.group_accuracy, 3, "no test faces")])

    group_runs = [run for run in finished if inputs.summaries[run.name].has_group_head]
    if not group_runs:
        section.text("No finished run has an age-group head (M3 or M4), so there are no group confusion matrices.")
        return

    for run in group_runs:
        counts = inputs.summaries[run.name].group_confusion
        table = section.table(
            Table(
                f"Age-group confusion matrix of {run.name} (faces)",
                ["True ↓ predicted →"] + list(GROUP_ROW_NAMES) + ["Faces"],
            )
        )
        for row_name, row in zip(GROUP_ROW_NAMES, counts):
            table.add_row([row_name] + [str(int(value)) for value in row] + [str(int(row.sum()))])

    panels = [Panel(_panel_title(run), (Series("counts", inputs.summaries[run.name].group_confusion),)) for run in group_runs]
    path = report_figures.plot_confusion_matrices(
        panels,
        figures_dir / "age_group_confusion.png",
        title="Age-group confusion matrices (M3, M4)",
        class_names=[label.replace("-", "–") for label in labels.AGE_GROUP_LABELS],
        xlabel="Predicted group (years)",
        ylabel="True group (years)",
    )
    section.figure(Figure("Age-group confusion matrices", path, "Cells: faces and share of the true group."))


def _gender_section(document, inputs, figures_dir):
    section = document.section("Gender")
    gender_runs = [run for run in inputs.finished if inputs.summaries[run.name].gender_confusion is not None]
    if not gender_runs:
        section.text("No finished run has a gender head with known test genders (M1, M3, M5), so this section is empty.")
        return

    table = section.table(
        Table(
            "Gender confusion (faces)",
            ["Run", "Male → male", "Male → female", "Female → male", "Female → female", "Accuracy"],
            caption="Rows of the confusion matrix: true → predicted gender.",
        )
    )
    for run in gender_runs:
        summary = inputs.summaries[run.name]
        counts = summary.gender_confusion
        table.add_row([run.name] + [str(int(value)) for value in counts.ravel()] + [_format(summary.gender["accuracy"], 3)])

    panels = [Panel(_panel_title(run), (Series("counts", inputs.summaries[run.name].gender_confusion),)) for run in gender_runs]
    path = report_figures.plot_confusion_matrices(
        panels,
        figures_dir / "gender_confusion.png",
        title="Gender confusion matrices",
        class_names=["male", "female"],
        xlabel="Predicted gender",
        ylabel="True gender",
    )
    section.figure(Figure("Gender confusion matrices", path, "Cells: faces and share of the true gender."))


def _add_reliability_figure(section, runs, inputs, kind, path, *, title, xlabel, ylabel, caption):
    """Add one reliability diagram per run that has `<kind>_reliability` (`kind`: gender or group)."""
    panels = []
    for run in runs:
        summary = inputs.summaries[run.name]
        curve = getattr(summary, f"{kind}_reliability")
        if curve is not None:
            panels.append(Panel(_panel_title(run), (Series("", (curve, getattr(summary, f"{kind}_ece"))),)))
    if panels:
        path = report_figures.plot_reliability(panels, path, title=title, xlabel=xlabel, ylabel=ylabel)
        section.figure(Figure(caption, path))


def _calibration_section(document, inputs, figures_dir):
    section = document.section("Calibration")
    finished = inputs.finished
    if not finished:
        section.text(NO_FINISHED_RUN)
        return

    panels = [
        Panel(
            _panel_title(run),
            tuple(
                Series(age.name or "Mean predicted age", age.calibration, colour)
                for age, colour in zip(inputs.summaries[run.name].ages, ("tab:blue", "tab:orange"))
            ),
        )
        for run in finished
    ]
    path = report_figures.plot_age_calibration(panels, figures_dir / "age_calibration.png", title="Age calibration on the test set")
    section.figure(
        Figure(
            "Age calibration",
            path,
            "Mean predicted age per 5-year bin of true age, with a band of ±1 standard deviation. "
            "The dashed line is a calibrated estimate.",
        )
    )

    table = section.table(
        Table(
            "Expected calibration error (ECE)",
            ["Run", "Model", "Gender ECE", "Age-group ECE (top label)"],
            caption=f"ECE over {NUM_CONFIDENCE_BINS} equal-width confidence bins: the gap between confidence and "
            "observed frequency, weighted by faces per bin; 0 is calibrated. Gender uses P(female) against the share of "
            "women, age groups the probability of the predicted group against its accuracy.",
        )
    )
    for run in finished:
        summary = inputs.summaries[run.name]
        if not summary.has_gender_head:
            gender = table.missing(NO_GENDER_HEAD)
        elif summary.gender is None:
            gender = table.missing(NO_KNOWN_GENDER)
        else:
            gender = _value(table, summary.gender_ece, 3, NO_PROB_FEMALE)
        group = _value(table, summary.group_ece, 3, "the model has no age-group head (only M3 and M4 have one)")
        table.add_row([run.name, _model_name(run), gender, group])

    _add_reliability_figure(
        section, finished, inputs, "gender", figures_dir / "gender_reliability.png",
        title="Reliability of P(female)", xlabel="Predicted P(female)", ylabel="Share of women",
        caption="Gender reliability diagrams",
    )  # fmt: skip
    _add_reliability_figure(
        section, finished, inputs, "group", figures_dir / "age_group_reliability.png",
        title="Reliability of the age-group probabilities (top label)", xlabel="Probability of the predicted group",
        ylabel="Accuracy", caption="Age-group reliability diagrams",
    )  # fmt: skip


def _file_name(text):
    return "".join(character if character.isalnum() else "_" for character in text)


def _group_column_name(label):
    if label in labels.AGE_GROUP_LABELS:
        return GROUP_ROW_NAMES[labels.AGE_GROUP_LABELS.index(label)]
    return label


def _balancing_section(document, inputs, figures_dir, baseline):
    section = document.section("Balancing")
    if not inputs.finished:
        section.text(NO_FINISHED_RUN)
        return
    deltas = comparison.balance_deltas(inputs.finished, inputs.summaries, baseline=baseline)
    if not deltas:
        methods = sorted({run.balance for run in inputs.finished})
        section.text(
            f"No finished run with a balancing method other than {baseline!r} has a matching {baseline!r} run "
            f"of the same model (balancing methods present: {', '.join(methods) or 'none'}), so there is no ΔMAE."
        )
        return

    section.text(
        f"ΔMAE = MAE of the balanced run − MAE of the run with balance {baseline!r} of the same model, backbone, "
        "weights and image size, in years. Negative values (blue) mean balancing lowered the error."
    )
    for delta in deltas:
        table = section.table(
            Table(
                f"ΔMAE (years): {delta.method} − {delta.baseline}",
                ["Model", "Runs compared"] + [_group_column_name(label) for label in delta.column_labels],
            )
        )
        for row_label, (run_name, baseline_name), row in zip(delta.row_labels, delta.pairs, delta.values):
            table.add_row(
                [row_label, f"{run_name} − {baseline_name}"]
                + [_signed(table, value, "the age group is empty in one of the two runs") for value in row]
            )
        for note in delta.notes:
            section.text(f"Note on {delta.method}: {note}.")
        path = report_figures.plot_delta_heatmap(
            delta,
            figures_dir / f"delta_mae_{_file_name(delta.method)}.png",
            title=f"ΔMAE by true age group: {delta.method} − {delta.baseline}",
        )
        section.figure(Figure(f"ΔMAE heatmap, {delta.method}", path))


def _evaluation_labels(runs):
    evaluation_labels = []
    for run in runs:
        for evaluation in run.evaluations:
            if evaluation.label not in evaluation_labels:
                evaluation_labels.append(evaluation.label)
    return evaluation_labels


def _evaluations_section(document, inputs, figures_dir):
    section = document.section("Extra evaluations")
    runs = [run for run in inputs.finished if run.evaluations]
    if not runs:
        section.text("No finished run has extra evaluations (folders in <run>/evaluations/).")
        return

    evaluation_labels = _evaluation_labels(runs)
    columns = ["Run", "Model", "In-domain test MAE (years)"]
    for label in evaluation_labels:
        columns += [f"{label} MAE (years)", f"{label} ΔMAE"]
    table = section.table(
        Table(
            "MAE on the in-domain test set and on each extra evaluation",
            columns,
            caption="ΔMAE = MAE of the evaluation − in-domain test MAE. M3 and M4 use the group centre.",
        )
    )
    figure_rows = []
    for run in runs:
        in_domain = inputs.summaries[run.name].ages[0]
        cells = [run.name, _model_name(run), _format(in_domain.mae, 2)]
        bars = {"in-domain test": (in_domain.mae, in_domain.mae_low, in_domain.mae_high)}
        by_label = {evaluation.label: evaluation for evaluation in run.evaluations}
        for label in evaluation_labels:
            evaluation = by_label.get(label)
            if evaluation is None:
                cells += [table.missing(f"{run.name} has no evaluation {label!r}")] * 2
            elif evaluation.predictions is None:
                cells += [table.missing(f"{run.name}/{label}: {evaluation.error}")] * 2
            else:
                age = inputs.evaluation_summaries[(run.name, label)].ages[0]
                cells += [_format(age.mae, 2), f"{age.mae - in_domain.mae:+.2f}"]
                bars[label] = (age.mae, age.mae_low, age.mae_high)
        table.add_row(cells)
        figure_rows.append((run.name, bars))

    table = section.table(
        Table(
            "Extra evaluations in detail",
            ["Run", "Evaluation", "Data", "Image transform", "Faces", "MAE (years)", "95% CI", "MAE, expectation (years)", "CS@5", "Gender accuracy"],
        )
    )
    for run in runs:
        for evaluation in run.evaluations:
            summary = inputs.evaluation_summaries.get((run.name, evaluation.label))
            data = str(evaluation.data) if evaluation.data else table.missing("evaluation.json gives no data folder")
            transform = evaluation.eval_transform or "none (plain images)"
            if summary is None:
                table.add_row([run.name, evaluation.label, data, transform] + [table.missing(str(evaluation.error))] * 6)
                continue
            age = summary.ages[0]
            expected = summary.age(comparison.EXPECTED_ESTIMATE)
            gender = _gender_cells(table, summary)[0]
            table.add_row(
                [
                    run.name,
                    evaluation.label,
                    data,
                    transform,
                    str(summary.num_faces),
                    _format(age.mae, 2),
                    _interval(table, age.mae_low, age.mae_high, "no faces"),
                    _format(expected.mae, 2) if expected is not None else table.missing(NO_GROUP_HEAD),
                    _format(age.cs5, 3),
                    gender,
                ]
            )

    path = report_figures.plot_domain_shift(
        figure_rows, ["in-domain test"] + evaluation_labels, figures_dir / "extra_evaluations.png",
        title="In-domain test MAE and extra evaluations",
    )
    section.figure(Figure("MAE per evaluation", path, "Error bars: 95% bootstrap interval over faces."))


def _training_section(document, inputs, figures_dir):
    section = document.section("Training curves")
    runs = [run for run in inputs.finished if run.history is not None]
    if not runs:
        section.text("No finished run has a readable history.csv, so there are no training curves.")
        return
    left_out = [run.name for run in inputs.finished if run.history is None]
    if left_out:
        section.text(f"Runs without a readable history.csv, left out here: {', '.join(left_out)}.")

    panels = [Panel(_panel_title(run), (Series("history", run.history),)) for run in runs if "loss" in run.history.columns]
    if panels:
        path = report_figures.plot_training_losses(panels, figures_dir / "training_loss.png", title="Training and validation loss")
        section.figure(Figure("Loss per epoch", path, "Each panel has its own loss axis, because the models' losses differ in scale."))

    mae_runs = [run for run in runs if {"val_mae", "val_age_mae"} & set(run.history.columns)]
    if mae_runs:
        colours = _run_colours(mae_runs, by_balance=True)
        series = [
            Series(f"{run.name}: {_model_name(run)}, balance {run.balance}", run.history, colours[run.name], BALANCE_LINE_STYLES.get(run.balance, "-."))
            for run in mae_runs
        ]
        path = report_figures.plot_validation_mae(series, figures_dir / "validation_mae.png", title="Validation MAE per epoch")
        section.figure(
            Figure(
                "Validation MAE per epoch",
                path,
                "Colour: model; line style: balancing method. M3 and M4 use the group centre.",
            )
        )


def build_document(inputs, figures_dir, *, run_paths=(), grid=None, baseline_balance="none"):
    """Build the report document and draw its figures into `figures_dir`."""
    figures_dir = pathlib.Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    document = Document(f"Comparison of {_count(len(inputs.runs), 'run')}")
    _introduction(document, inputs, run_paths, grid)
    _runs_section(document, inputs)
    _overall_section(document, inputs, figures_dir)
    _groupwise_section(document, inputs)
    _fairness_section(document, inputs)
    _age_group_section(document, inputs, figures_dir)
    _gender_section(document, inputs, figures_dir)
    _calibration_section(document, inputs, figures_dir)
    _balancing_section(document, inputs, figures_dir, baseline_balance)
    _evaluations_section(document, inputs, figures_dir)
    _training_section(document, inputs, figures_dir)
    return document


def default_out_dir():
    """Return `reports/report-<timestamp>`."""
    return pathlib.Path("reports") / f"report-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def write_report(
    run_paths=(),
    grid=None,
    out=None,
    *,
    num_resamples=metrics.BOOTSTRAP_RESAMPLES,
    seed=metrics.BOOTSTRAP_SEED,
    baseline_balance="none",
):
    """Write a comparison report of training runs.

    Args:
        run_paths: list of paths. Run folders, or folders that contain run
            folders.
        grid: path or None. A grid manifest (`grid.json`).
        out: path or None. Output folder; by default `reports/report-<timestamp>`.
        num_resamples: int. Bootstrap resamples of the MAE intervals.
        seed: int. Seed of the bootstrap.
        baseline_balance: str. Balancing method that ΔMAE subtracts.

    Returns:
        The output folder, holding `report.md`, `report.html` and
        `figures/*.png`.

    Raises:
        ReportError: no runs given, or a run, manifest or predictions table
            cannot be read.
    """
    run_paths = [pathlib.Path(path) for path in run_paths]
    grid = pathlib.Path(grid) if grid is not None else None
    inputs = read_inputs(run_paths, grid, num_resamples=num_resamples, seed=seed)

    out = pathlib.Path(out) if out is not None else default_out_dir()
    figures_dir = out / FIGURES_DIR
    # Figures of an earlier report in the same folder would otherwise linger beside the new ones.
    if (out / "report.md").is_file() and figures_dir.is_dir():
        for old_figure in figures_dir.glob("*.png"):
            old_figure.unlink()

    document = build_document(inputs, figures_dir, run_paths=run_paths, grid=grid, baseline_balance=baseline_balance)
    (out / "report.md").write_text(render_markdown(document, out), encoding="utf-8")
    (out / "report.html").write_text(render_html(document), encoding="utf-8")
    logger.info("Report of %d runs written to %s.", len(inputs.runs), out)
    return out
