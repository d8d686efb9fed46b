"""Experiment grids: several training runs from one TOML file, recorded in a manifest.

A grid file names the models, the balancing methods and a config file per
model, and may add settings for every run:

    name = "cpu-grid"
    models = ["m1", "m2", "m3", "m4", "m5"]
    balance = ["none", "oversample"]
    config = "cpu/{model}.toml"     # relative to the grid file's folder

    [settings]                      # optional, applied to every run
    epochs = 30

Every (model, balance) pair is one run named `<model>-unbalanced` or
`<model>-<balance>`. `run_grid` trains them in turn, goes on past a failed
run, and rewrites `grid.json` after each run, so the manifest of an
interrupted grid lists what finished.
"""

import dataclasses
import datetime
import json
import logging
import pathlib
import tomllib
import traceback

from faceage_keras.config import ConfigError, TrainConfig, load_config
from faceage_keras.models import MODEL_NAMES
from faceage_keras.training import train

logger = logging.getLogger(__name__)

MANIFEST_FILE = "grid.json"
_GRID_KEYS = {"name", "description", "models", "balance", "config", "settings"}


@dataclasses.dataclass(frozen=True)
class GridRun:
    """One run of a grid: its name, model, balancing method and config."""

    name: str
    model: str
    balance: str
    config: object


def run_name(model, balance):
    """Return the run name of a grid cell, e.g. `m4-unbalanced` or `m4-oversample`."""
    return f"{model}-{'unbalanced' if balance == 'none' else balance}"


def load_grid(path, **overrides):
    """Read a grid file and return `(name, runs)` with one `GridRun` per model and balance.

    Args:
        path: path of the grid TOML file.
        **overrides: settings that replace the file's for every run (e.g.
            `limit`, `epochs` from the command line); None values are ignored.

    Raises:
        ConfigError: for an unreadable file, unknown keys, or an invalid
            setting of any run. All runs are checked before any trains.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"Grid file not found: {path}")
    try:
        with path.open("rb") as file:
            grid = tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"Cannot parse grid file {path}: {error}") from error

    unknown = sorted(set(grid) - _GRID_KEYS)
    if unknown:
        raise ConfigError(f"Unknown key(s) {unknown} in grid file {path}. Accepted keys: {sorted(_GRID_KEYS)}")
    for key in ("models", "balance", "config"):
        if key not in grid:
            raise ConfigError(f"Grid file {path} is missing the key `{key}`.")
    models, balances = grid["models"], grid["balance"]
    if not isinstance(models, list) or not models or not isinstance(balances, list) or not balances:
        raise ConfigError(f"`models` and `balance` in {path} must be non-empty lists.")

    unknown_models = sorted(set(map(str, models)) - set(MODEL_NAMES))
    if unknown_models:
        raise ConfigError(f"Unknown model(s) {unknown_models} in grid file {path}. Expected some of {list(MODEL_NAMES)}.")
    settings = dict(grid.get("settings", {}))
    known_settings = {field.name for field in dataclasses.fields(TrainConfig)}
    unknown_settings = sorted(set(settings) - known_settings)
    if unknown_settings:
        raise ConfigError(
            f"Unknown key(s) {unknown_settings} in [settings] of grid file {path}. Accepted keys: {sorted(known_settings)}"
        )
    runs = []
    for model in models:
        config_path = path.parent / str(grid["config"]).format(model=model)
        for balance in balances:
            values = {**settings, **{key: value for key, value in overrides.items() if value is not None}}
            config = load_config(config_path, **{**values, "model": model, "balance": balance})
            runs.append(GridRun(run_name(config.model, balance), config.model, balance, config))
    return grid.get("name", path.stem), runs


def _write_manifest(path, manifest):
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    partial.replace(path)


def run_grid(grid_path, *, data=None, out_dir=None, **overrides):
    """Train every run of a grid in turn and record them in `<out_dir>/grid.json`.

    Args:
        grid_path: path of the grid TOML file.
        data: data folder, as for `training.train`.
        out_dir: folder of the grid's runs; by default `runs/<grid name>-<timestamp>`.
        **overrides: settings for every run, as for `load_grid`.

    Returns:
        `(manifest_path, failed)`: the manifest and the names of failed runs.
    """
    name, runs = load_grid(grid_path, **overrides)
    if out_dir is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out_dir = pathlib.Path("runs") / f"{name}-{stamp}"
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST_FILE

    manifest = {
        "grid": str(grid_path),
        "name": name,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "runs": [],
    }
    failed = []
    for index, run in enumerate(runs, start=1):
        logger.info("Grid %s: run %d of %d, %s.", name, index, len(runs), run.name)
        # run_dir is relative to the manifest's folder, so the grid folder can be moved.
        entry = {"name": run.name, "model": run.model, "balance": run.balance, "run_dir": run.name}
        try:
            train(run.config, data=data, run_dir=out_dir / run.name)
            entry.update(status="ok", error=None)
        except Exception as error:
            # One failed run must not cost the rest of the grid; the manifest keeps the reason.
            logger.error("Grid %s: run %s failed: %s: %s", name, run.name, type(error).__name__, error)
            logger.debug("%s", traceback.format_exc())
            entry.update(status="failed", error=f"{type(error).__name__}: {error}")
            failed.append(run.name)
        manifest["runs"].append(entry)
        _write_manifest(manifest_path, manifest)

    manifest["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    _write_manifest(manifest_path, manifest)
    return manifest_path, failed
