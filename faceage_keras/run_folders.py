"""Reading run folders, their extra evaluations and grid manifests for comparison reports.

A run folder is what `faceage_keras.training.train` writes: `config.json`,
`run.json`, `history.csv`, `metrics.json` and `test_predictions.csv`. Extra
evaluations of the same model sit in `<run>/evaluations/<label>/` with
`test_predictions.csv`, `metrics.json` and `evaluation.json`. A grid manifest
(`grid.json`) lists the runs of an experiment grid, failed ones included.
"""

import dataclasses
import json
import logging
import pathlib

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
PREDICTIONS_FILE = "test_predictions.csv"
EVALUATIONS_DIR = "evaluations"
DEFAULT_BALANCE = "none"
# Balancing methods in the order reports list them; other values come after these.
BALANCE_ORDER = ("none", "oversample", "reweight")

# Columns every predictions table must have. `gender_pred` and `prob_female`
# are absent or empty for models without a gender head, and group models add
# `age_pred_expected` and `prob_group_0` ... `prob_group_4`.
REQUIRED_PREDICTION_COLUMNS = ("age_true", "age_pred", "group_true", "group_pred", "gender_true")


class ReportError(ValueError):
    """An input of a comparison report that cannot be read: a missing run, manifest or column."""


@dataclasses.dataclass
class Evaluation:
    """An extra evaluation of a run's best model on other data or another image transform.

    Attributes:
        label: str. Name of the evaluation, e.g. `historical`.
        folder: Path. `<run>/evaluations/<label>/`.
        data: str or None. Data folder the faces came from.
        eval_transform: str or None. Image transform applied before the
            model, e.g. `historical`, or None for the plain images.
        predictions: DataFrame or None. None when the folder has no
            predictions table. `error` then gives the reason.
        error: str or None.
    """

    label: str
    folder: pathlib.Path
    data: str | None
    eval_transform: str | None
    predictions: pd.DataFrame | None
    error: str | None = None


@dataclasses.dataclass
class Run:
    """One training run of a report, finished or failed.

    Attributes:
        name: str. Unique name in the report (the manifest's name, else the
            folder name).
        folder: Path or None. The run folder; None when a manifest lists a
            failed run without one.
        model: str or None. `m1` ... `m5` from `config.json`, else the manifest.
        balance: str. `none`, `oversample`, `reweight` or another method.
        status: str. `ok` or `failed`.
        error: str or None. Why the run failed.
        config: dict. The run's `config.json`.
        info: dict. The run's `run.json`.
        metrics: dict. The run's `metrics.json`.
        predictions: DataFrame or None. Test predictions of a finished run.
        history: DataFrame or None. `history.csv`, one row per epoch.
        evaluations: list of `Evaluation`.
    """

    name: str
    folder: pathlib.Path | None
    model: str | None
    balance: str
    status: str
    error: str | None = None
    config: dict = dataclasses.field(default_factory=dict)
    info: dict = dataclasses.field(default_factory=dict)
    metrics: dict = dataclasses.field(default_factory=dict)
    predictions: pd.DataFrame | None = None
    history: pd.DataFrame | None = None
    evaluations: list = dataclasses.field(default_factory=list)

    @property
    def ok(self):
        return self.status == "ok"


def is_run_folder(path):
    """Return whether `path` is a folder written by a training run (it has a `config.json`)."""
    return (pathlib.Path(path) / CONFIG_FILE).is_file()


def read_predictions(path):
    """Read a `test_predictions.csv` and check its columns and ages.

    Returns a DataFrame with numeric columns. Raises `ReportError` for a
    missing column or a true or predicted age that is not a finite number.
    """
    path = pathlib.Path(path)
    try:
        frame = pd.read_csv(path, dtype={"image_name": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ReportError(f"Cannot read the predictions table {path}: {error}") from error

    missing = [column for column in REQUIRED_PREDICTION_COLUMNS if column not in frame.columns]
    if missing:
        raise ReportError(
            f"The predictions table {path} is missing the columns {missing}. "
            f"Expected a test_predictions.csv written by faceage_keras, with at least {list(REQUIRED_PREDICTION_COLUMNS)}."
        )

    for column in frame.columns:
        if column != "image_name":
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    for column in ("age_true", "age_pred"):
        invalid = ~np.isfinite(frame[column].to_numpy(dtype="float64"))
        if invalid.any():
            first_line = int(np.flatnonzero(invalid)[0]) + 2
            raise ReportError(
                f"{path}: column {column} is empty or not a number in {int(invalid.sum())} rows, the first on "
                f"line {first_line}. Every face needs a true and a predicted age in years."
            )
    return frame


def _read_json(path, *, required):
    path = pathlib.Path(path)
    if not path.is_file():
        if required:
            raise ReportError(f"{path} is missing.")
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReportError(f"Cannot parse {path} as JSON: {error}") from error
    if not isinstance(value, dict):
        raise ReportError(f"{path} must contain a JSON object, got {type(value).__name__}.")
    return value


def _read_history(path):
    if not path.is_file():
        return None
    try:
        history = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        logger.warning("Leaving out the training curves of %s, which cannot be read: %s", path, error)
        return None
    return history if len(history) else None


def read_evaluations(run_folder):
    """Read the extra evaluations in `<run_folder>/evaluations/`, sorted by folder name."""
    evaluations_dir = pathlib.Path(run_folder) / EVALUATIONS_DIR
    if not evaluations_dir.is_dir():
        return []

    evaluations = []
    for folder in sorted(path for path in evaluations_dir.iterdir() if path.is_dir()):
        description = _read_json(folder / "evaluation.json", required=False)
        predictions_path = folder / PREDICTIONS_FILE
        predictions, error = None, None
        if predictions_path.is_file():
            predictions = read_predictions(predictions_path)
        else:
            error = f"{predictions_path} is missing"
            logger.warning("Extra evaluation %s has no %s; it is listed without numbers.", folder, PREDICTIONS_FILE)
        evaluations.append(
            Evaluation(
                label=str(description.get("label") or folder.name),
                folder=folder,
                data=description.get("data"),
                eval_transform=description.get("eval_transform"),
                predictions=predictions,
                error=error,
            )
        )
    return evaluations


def load_run(folder, *, name=None, model=None, balance=None):
    """Read a run folder.

    `name`, `model` and `balance` (from a grid manifest) are used where the
    folder does not set them. A run folder without `test_predictions.csv`
    (a run that stopped before its test evaluation) becomes a failed run.

    Raises:
        ReportError: the folder has no `config.json`, or one of its files
            cannot be read.
    """
    folder = pathlib.Path(folder)
    if not is_run_folder(folder):
        raise ReportError(
            f"{folder} is not a run folder: it has no {CONFIG_FILE}. Pass a folder written by `invoke train`."
        )
    config = _read_json(folder / CONFIG_FILE, required=True)
    run = Run(
        name=name or folder.name,
        folder=folder,
        model=str(config.get("model") or model or "?").lower(),
        balance=str(config.get("balance") or balance or DEFAULT_BALANCE),
        status="ok",
        config=config,
        info=_read_json(folder / "run.json", required=False),
        metrics=_read_json(folder / "metrics.json", required=False),
        history=_read_history(folder / "history.csv"),
    )
    for key, manifest_value, run_value in (("model", model, run.model), ("balance", balance, run.balance)):
        if manifest_value is not None and str(manifest_value).lower() != run_value.lower():
            logger.warning(
                "Run %s: the manifest gives %s=%r but %s records %r. The report uses %r.",
                run.name,
                key,
                manifest_value,
                folder / CONFIG_FILE,
                run_value,
                run_value,
            )

    predictions_path = folder / PREDICTIONS_FILE
    if not predictions_path.is_file():
        run.status = "failed"
        run.error = f"{PREDICTIONS_FILE} is missing, so the run stopped before its test evaluation"
        return run
    run.predictions = read_predictions(predictions_path)
    run.evaluations = read_evaluations(folder)
    return run


def find_runs(path):
    """Read the run folder `path`, or every run folder directly inside `path`.

    Raises:
        ReportError: `path` does not exist, or is neither a run folder nor a
            folder that contains run folders.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise ReportError(f"Run folder {path} not found.")
    if is_run_folder(path):
        return [load_run(path)]
    if path.is_dir():
        folders = sorted(child for child in path.iterdir() if is_run_folder(child))
        if folders:
            return [load_run(folder) for folder in folders]
    raise ReportError(
        f"{path} is not a run folder (no {CONFIG_FILE}) and contains no run folders. "
        "Pass a folder written by `invoke train`, or a folder of such folders."
    )


def _resolve_run_dir(run_dir, manifest_path):
    """Resolve a manifest's run_dir: absolute as given, else against the manifest's folder, else the working directory."""
    path = pathlib.Path(run_dir).expanduser()
    if path.is_absolute():
        return path
    beside_manifest = manifest_path.parent / path
    return beside_manifest if beside_manifest.exists() else path


def read_grid_manifest(path):
    """Read a grid manifest and its runs.

    The manifest is a JSON object with a `runs` list. Each entry has `name`,
    `model`, `balance`, `run_dir`, `status` (`ok` or `failed`) and `error`.
    Failed entries, and entries whose folder is missing, become failed runs.

    Returns:
        `(manifest, runs)`: the manifest dict and a list of `Run`.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ReportError(f"Grid manifest {path} not found.")
    manifest = _read_json(path, required=True)
    entries = manifest.get("runs")
    if not isinstance(entries, list):
        raise ReportError(f"Grid manifest {path} must have a 'runs' list, got {type(entries).__name__}.")

    runs = []
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("name"):
            raise ReportError(f"Entry {position} of the grid manifest {path} must be an object with a 'name'.")
        name = str(entry["name"])
        status = str(entry.get("status", "ok")).lower()
        if status not in ("ok", "failed"):
            raise ReportError(f"Run {name!r} in {path} has status {status!r}; expected 'ok' or 'failed'.")
        model = entry.get("model")
        balance = entry.get("balance")
        run_dir = entry.get("run_dir")
        folder = _resolve_run_dir(run_dir, path) if run_dir else None

        if status == "ok" and folder is not None and is_run_folder(folder):
            runs.append(load_run(folder, name=name, model=model, balance=balance))
            continue
        if status == "ok":
            error = f"the manifest marks it ok, but its run folder {run_dir!r} was not found"
            logger.warning("Run %s: %s.", name, error)
        else:
            error = str(entry.get("error") or "no error message in the manifest")
        runs.append(
            Run(
                name=name,
                folder=folder,
                model=str(model).lower() if model else "?",
                balance=str(balance or DEFAULT_BALANCE),
                status="failed",
                error=error,
            )
        )
    return manifest, runs


def balance_sort_key(balance):
    """Return a sort key that puts `none`, `oversample` and `reweight` first, in that order, then the rest by name."""
    rank = BALANCE_ORDER.index(balance) if balance in BALANCE_ORDER else len(BALANCE_ORDER)
    return rank, balance


def collect_runs(run_paths=(), grid=None):
    """Read the runs of a report from run folders (or folders of them) and a grid manifest.

    A folder listed twice is read once. Names that repeat get the parent
    folder's name added. Runs are sorted by model, balancing method and name.

    Returns:
        `(manifest, runs)`: the manifest dict (empty without `grid`) and the
        list of `Run`.

    Raises:
        ReportError: no input was given, or an input cannot be read.
    """
    if not run_paths and grid is None:
        raise ReportError("No runs given. Pass --runs DIR (a run folder or a folder of them) or --grid MANIFEST.")

    manifest, runs = ({}, [])
    if grid is not None:
        manifest, runs = read_grid_manifest(grid)
    for path in run_paths:
        runs.extend(find_runs(path))

    unique = []
    seen_folders = set()
    for run in runs:
        key = run.folder.resolve() if run.folder is not None and run.folder.exists() else None
        if key is not None and key in seen_folders:
            continue
        seen_folders.add(key)
        unique.append(run)

    names = [run.name for run in unique]
    for run in unique:
        if names.count(run.name) > 1 and run.folder is not None:
            run.name = f"{run.folder.parent.name}/{run.name}"
    names = [run.name for run in unique]
    for run in unique:
        if names.count(run.name) > 1:
            raise ReportError(f"Two runs are both named {run.name!r}. Give them distinct names in the manifest.")

    unique.sort(key=lambda run: (not run.ok, run.model or "", balance_sort_key(run.balance), run.name))
    return manifest, unique
