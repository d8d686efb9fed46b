"""Tests of `invoke report`: reading run folders and manifests, the written report and the command."""

import html.parser
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd
import invoke
import pytest
from PIL import Image

from fake_runs import write_extra_evaluation, write_fake_grid, write_fake_run
from faceage_keras import comparison, metrics
from faceage_keras.report import write_report
from faceage_keras.run_folders import ReportError, collect_runs, find_runs, load_run, read_grid_manifest

REPO = pathlib.Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXPECTED_FIGURES = (
    "scatter.png",
    "residuals.png",
    "age_calibration.png",
    "gender_reliability.png",
    "age_group_reliability.png",
    "gender_confusion.png",
    "age_group_confusion.png",
    "delta_mae_oversample.png",
    "extra_evaluations.png",
    "training_loss.png",
    "validation_mae.png",
)
EXPECTED_TABLES = (
    "Runs",
    "Test results per run",
    "MAE (years) per true age group",
    "MAE (years) by true gender",
    "Gender accuracy per true age group",
    "Largest group-wise MAE gap",
    "Age-group accuracy",
    "Age-group confusion matrix of m4-none (faces)",
    "Gender confusion (faces)",
    "Expected calibration error (ECE)",
    "ΔMAE (years): oversample − none",
    "MAE on the in-domain test set and on each extra evaluation",
    "Extra evaluations in detail",
)


class _TableParser(html.parser.HTMLParser):
    """Collect the tables of an HTML page as {caption: [row cell texts]} and every img src."""

    def __init__(self):
        super().__init__()
        self.tables = {}
        self.images = []
        self._caption = None
        self._row = None
        self._cell = None
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs).get("src", ""))
        elif tag == "caption":
            self._in_caption = True
            self._caption = ""
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "caption":
            self._in_caption = False
            self.tables[self._caption] = []
        elif tag in ("td", "th"):
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr":
            self.tables[self._caption].append(self._row)

    def handle_data(self, data):
        if self._in_caption:
            self._caption += data
        elif self._cell is not None:
            self._cell += data


def _parse_html(path):
    parser = _TableParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _row(table, first_cell):
    return next(row for row in table if row[0] == first_cell)


def _cell(table, first_cell, column):
    return _row(table, first_cell)[table[0].index(column)]


def _mae_from_csv(path):
    frame = pd.read_csv(path)
    return metrics.mean_absolute_error(frame["age_true"], frame["age_pred"])


@pytest.fixture(scope="module")
def grid_report(tmp_path_factory):
    """A report of the fake grid: M1, M2, M4 and M5, unbalanced and oversampled, one failed run."""
    root = tmp_path_factory.mktemp("grid")
    manifest = write_fake_grid(root)
    out = write_report([], manifest, root / "report", num_resamples=200)
    return root, out, _parse_html(out / "report.html")


def test_report_writes_files(grid_report):
    _, out, _ = grid_report
    assert (out / "report.md").is_file()
    assert (out / "report.html").is_file()


@pytest.mark.parametrize("name", EXPECTED_FIGURES)
def test_report_figure_is_valid_png(grid_report, name):
    _, out, _ = grid_report
    path = out / "figures" / name
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) >= 300


def test_report_html_has_every_table(grid_report):
    _, _, page = grid_report
    missing = [title for title in EXPECTED_TABLES if title not in page.tables]
    assert not missing, f"tables missing from report.html: {missing}; found {list(page.tables)}"


def test_report_html_embeds_every_figure(grid_report):
    _, _, page = grid_report
    assert len(page.images) == len(EXPECTED_FIGURES)
    assert all(src.startswith("data:image/png;base64,") for src in page.images)


def test_report_html_has_no_external_assets(grid_report):
    _, out, _ = grid_report
    text = (out / "report.html").read_text(encoding="utf-8")
    assert "http://" not in text
    assert "https://" not in text
    assert "<link" not in text


def test_report_markdown_links_existing_figures(grid_report):
    _, out, _ = grid_report
    text = (out / "report.md").read_text(encoding="utf-8")
    for name in EXPECTED_FIGURES:
        assert f"(figures/{name})" in text


def test_report_overall_mae_matches_predictions(grid_report):
    root, _, page = grid_report
    mae = _mae_from_csv(root / "runs" / "m1-none" / "test_predictions.csv")
    assert _cell(page.tables["Test results per run"], "m1-none", "MAE (years)") == f"{mae:.2f}"


def test_report_interval_brackets_mae(grid_report):
    _, _, page = grid_report
    table = page.tables["Test results per run"]
    mae = float(_cell(table, "m2-none", "MAE (years)"))
    low, high = (float(value) for value in _cell(table, "m2-none", "95% CI").strip("[]").split(","))
    assert low < mae < high


def test_report_group_mae_matches_predictions(grid_report):
    root, _, page = grid_report
    frame = pd.read_csv(root / "runs" / "m2-none" / "test_predictions.csv")
    by_group = metrics.groupwise_mae(frame["age_true"], frame["age_pred"])
    table = page.tables["MAE (years) per true age group"]
    assert _cell(table, "Child (<19)", "m2-none") == f"{by_group['<19']:.2f}"
    assert _cell(table, "Elderly (60+)", "m2-none") == f"{by_group['60+']:.2f}"


def test_report_group_model_has_both_estimates(grid_report):
    _, _, page = grid_report
    header = page.tables["MAE (years) per true age group"][0]
    assert "m4-none, group centre" in header
    assert "m4-none, expectation" in header


def test_report_missing_gender_is_dash_not_zero(grid_report):
    _, _, page = grid_report
    cell = _cell(page.tables["Test results per run"], "m2-none", "Gender accuracy")
    assert cell.startswith("–")
    assert cell != "0"


def test_report_missing_value_has_footnote(grid_report):
    _, out, _ = grid_report
    assert "the model has no gender head" in (out / "report.html").read_text(encoding="utf-8")


def test_report_lists_failed_run(grid_report):
    _, out, page = grid_report
    assert _cell(page.tables["Runs"], "m3-reweight", "Status").startswith("failed")
    assert "RuntimeError: out of memory" in (out / "report.html").read_text(encoding="utf-8")


def test_report_delta_matches_predictions(grid_report):
    root, _, page = grid_report
    delta = _mae_from_csv(root / "runs" / "m1-oversample" / "test_predictions.csv") - _mae_from_csv(
        root / "runs" / "m1-none" / "test_predictions.csv"
    )
    assert _cell(page.tables["ΔMAE (years): oversample − none"], "M1", "All faces") == f"{delta:+.2f}"


def test_report_extra_evaluation_side_by_side(grid_report):
    root, _, page = grid_report
    table = page.tables["MAE on the in-domain test set and on each extra evaluation"]
    in_domain = _mae_from_csv(root / "runs" / "m1-none" / "test_predictions.csv")
    historical = _mae_from_csv(root / "runs" / "m1-none" / "evaluations" / "historical" / "test_predictions.csv")
    assert _cell(table, "m1-none", "In-domain test MAE (years)") == f"{in_domain:.2f}"
    assert _cell(table, "m1-none", "historical MAE (years)") == f"{historical:.2f}"


def test_report_gender_gap_by_group(grid_report):
    root, _, page = grid_report
    frame = pd.read_csv(root / "runs" / "m5-none" / "test_predictions.csv")
    children = frame[frame["group_true"] == 0]
    accuracy = float(np.mean(children["gender_true"] == children["gender_pred"]))
    assert _cell(page.tables["Gender accuracy per true age group"], "m5-none", "Child (<19)") == f"{accuracy:.3f}"


def test_report_empty_group_is_dash(tmp_path):
    run = write_fake_run(tmp_path / "runs" / "m2-young", "m2", num_faces=30)
    frame = pd.read_csv(run / "test_predictions.csv")
    frame = frame[frame["age_true"] < 60]
    frame.to_csv(run / "test_predictions.csv", index=False)

    out = write_report([run], None, tmp_path / "report", num_resamples=50)

    page = _parse_html(out / "report.html")
    assert _cell(page.tables["MAE (years) per true age group"], "Elderly (60+)", "m2-young").startswith("–")
    assert "no test faces in this age group" in (out / "report.html").read_text(encoding="utf-8")


def test_report_twice_into_same_folder(tmp_path):
    run = write_fake_run(tmp_path / "runs" / "m1-a", "m1", num_faces=30)
    write_report([run], None, tmp_path / "report", num_resamples=20)
    (tmp_path / "report" / "figures" / "delta_mae_stale.png").write_bytes(PNG_SIGNATURE)

    write_report([run], None, tmp_path / "report", num_resamples=20)

    assert not (tmp_path / "report" / "figures" / "delta_mae_stale.png").exists()


def test_find_runs_folder_of_runs(tmp_path):
    write_fake_run(tmp_path / "b", "m2", num_faces=20, history=False)
    write_fake_run(tmp_path / "a", "m4", num_faces=20, history=False)
    runs = find_runs(tmp_path)
    assert [run.name for run in runs] == ["a", "b"]


def test_find_runs_rejects_non_run_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("no runs here")
    with pytest.raises(ReportError, match="not a run folder"):
        find_runs(tmp_path)


def test_find_runs_missing_folder(tmp_path):
    with pytest.raises(ReportError, match="not found"):
        find_runs(tmp_path / "absent")


def test_load_run_default_balance(tmp_path):
    run = load_run(write_fake_run(tmp_path / "run", "m1", num_faces=20, history=False))
    assert run.balance == "none"


def test_load_run_reads_balance(tmp_path):
    run = load_run(write_fake_run(tmp_path / "run", "m1", balance="reweight", num_faces=20, history=False))
    assert run.balance == "reweight"


def test_load_run_without_predictions_fails(tmp_path):
    folder = write_fake_run(tmp_path / "run", "m2", num_faces=20, history=False)
    (folder / "test_predictions.csv").unlink()
    run = load_run(folder)
    assert run.status == "failed"
    assert "test_predictions.csv" in run.error


def test_load_run_missing_column_raises(tmp_path):
    folder = write_fake_run(tmp_path / "run", "m2", num_faces=20, history=False)
    frame = pd.read_csv(folder / "test_predictions.csv").drop(columns="age_pred")
    frame.to_csv(folder / "test_predictions.csv", index=False)
    with pytest.raises(ReportError, match="age_pred"):
        load_run(folder)


def test_load_run_reads_extra_evaluation(tmp_path):
    folder = write_fake_run(tmp_path / "run", "m4", num_faces=20, history=False)
    write_extra_evaluation(folder, "m4", "historical", eval_transform="historical", num_faces=15)
    evaluation = load_run(folder).evaluations[0]
    assert evaluation.label == "historical"
    assert evaluation.eval_transform == "historical"
    assert len(evaluation.predictions) == 15


def _manifest(path, entries):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"grid": "grid.toml", "started": "2025-01-01T00:00:00", "runs": entries}))
    return path


def test_manifest_run_dir_relative_to_cwd(tmp_path, monkeypatch):
    write_fake_run(tmp_path / "runs" / "m1-x", "m1", num_faces=20, history=False)
    entry = {"name": "first", "model": "m1", "balance": "none", "run_dir": "runs/m1-x", "status": "ok", "error": None}
    manifest = _manifest(tmp_path / "elsewhere" / "grid.json", [entry])
    monkeypatch.chdir(tmp_path)
    _, runs = read_grid_manifest(manifest)
    assert runs[0].status == "ok"
    assert runs[0].name == "first"


def test_manifest_run_dir_relative_to_manifest(tmp_path, monkeypatch):
    write_fake_run(tmp_path / "grid" / "runs" / "m1-x", "m1", num_faces=20, history=False)
    entry = {"name": "first", "model": "m1", "balance": "none", "run_dir": "runs/m1-x", "status": "ok", "error": None}
    manifest = _manifest(tmp_path / "grid" / "grid.json", [entry])
    monkeypatch.chdir(tmp_path)
    _, runs = read_grid_manifest(manifest)
    assert runs[0].status == "ok"


def test_manifest_failed_entry(tmp_path):
    entry = {"name": "bad", "model": "m2", "balance": "oversample", "run_dir": None, "status": "failed", "error": "boom"}
    _, runs = read_grid_manifest(_manifest(tmp_path / "grid.json", [entry]))
    assert runs[0].status == "failed"
    assert runs[0].error == "boom"
    assert runs[0].balance == "oversample"


def test_manifest_missing_folder_becomes_failed(tmp_path):
    entry = {"name": "gone", "model": "m2", "balance": "none", "run_dir": "nowhere", "status": "ok", "error": None}
    _, runs = read_grid_manifest(_manifest(tmp_path / "grid.json", [entry]))
    assert runs[0].status == "failed"
    assert "nowhere" in runs[0].error


def test_manifest_without_runs_list_raises(tmp_path):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"grid": "x"}))
    with pytest.raises(ReportError, match="'runs' list"):
        read_grid_manifest(path)


def test_collect_runs_reads_folder_once(tmp_path):
    folder = write_fake_run(tmp_path / "run", "m2", num_faces=20, history=False)
    _, runs = collect_runs([folder, tmp_path / "run"])
    assert len(runs) == 1


def test_collect_runs_renames_duplicates(tmp_path):
    write_fake_run(tmp_path / "a" / "run", "m2", num_faces=20, history=False)
    write_fake_run(tmp_path / "b" / "run", "m2", num_faces=20, history=False)
    _, runs = collect_runs([tmp_path / "a", tmp_path / "b"])
    assert sorted(run.name for run in runs) == ["a/run", "b/run"]


def test_collect_runs_without_input_raises():
    with pytest.raises(ReportError, match="No runs given"):
        collect_runs([], None)


def _invoke_report(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "invoke", "--search-root", str(REPO), "report", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_invoke_report_end_to_end(tmp_path):
    write_fake_run(tmp_path / "runs" / "m1-none", "m1", balance="none", num_faces=40)
    write_fake_run(tmp_path / "runs" / "m1-oversample", "m1", balance="oversample", num_faces=40, seed=1)

    result = _invoke_report(["--runs", "runs", "--out", "out", "--resamples", "50"], tmp_path)

    assert result.returncode == 0, f"invoke report failed:\n{result.stderr[-3000:]}"
    assert (tmp_path / "out" / "report.html").is_file()
    assert (tmp_path / "out" / "report.md").is_file()
    assert (tmp_path / "out" / "figures" / "delta_mae_oversample.png").is_file()


def test_invoke_report_rejects_non_run_folder(tmp_path):
    (tmp_path / "empty").mkdir()

    result = _invoke_report(["--runs", "empty", "--out", "out"], tmp_path)

    assert result.returncode == 2, f"expected exit code 2, got {result.returncode}:\n{result.stderr[-2000:]}"
    assert "error:" in result.stderr
    assert "not a run folder" in result.stderr
    assert "Traceback" not in result.stderr


def _tasks_module():
    spec = importlib.util.spec_from_file_location("faceage_tasks", REPO / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("manifest_text", "expected"),
    [
        (None, "No runs given"),
        ("{not json", "Cannot parse"),
        ('{"grid": "x"}', "'runs' list"),
        ('{"runs": [{"name": "a", "status": "done"}]}', "expected 'ok' or 'failed'"),
    ],
)
def test_report_task_input_error_exit_code(tmp_path, manifest_text, expected):
    grid = None
    if manifest_text is not None:
        grid = tmp_path / "grid.json"
        grid.write_text(manifest_text)

    with pytest.raises(invoke.Exit) as caught:
        _tasks_module().report(invoke.Context(), grid=None if grid is None else str(grid), out=str(tmp_path / "out"))

    assert caught.value.code == 2
    assert caught.value.message.startswith("error: ")
    assert expected in caught.value.message
    assert "\n" not in caught.value.message
    assert not (tmp_path / "out").exists()


def test_report_task_missing_manifest_exit_code(tmp_path):
    with pytest.raises(invoke.Exit) as caught:
        _tasks_module().report(invoke.Context(), grid=str(tmp_path / "absent.json"))
    assert caught.value.code == 2
    assert "not found" in caught.value.message


def test_balance_deltas_oversample_before_reweight(tmp_path):
    for balance, seed in (("reweight", 1), ("none", 0), ("oversample", 2)):
        write_fake_run(tmp_path / f"m2-{balance}", "m2", balance=balance, num_faces=30, seed=seed, history=False)
    _, runs = collect_runs([tmp_path])
    summaries = {run.name: comparison.summarize_predictions_table(run.predictions, num_resamples=10) for run in runs}

    deltas = comparison.balance_deltas(runs, summaries)

    assert [delta.method for delta in deltas] == ["oversample", "reweight"]
    assert [delta.baseline for delta in deltas] == ["none", "none"]
    reweight_mae = summaries["m2-reweight"].ages[0].mae - summaries["m2-none"].ages[0].mae
    assert deltas[1].values[0, -1] == pytest.approx(reweight_mae)
