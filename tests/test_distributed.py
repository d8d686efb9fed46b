"""Data-parallel training: sharded data, two DDP processes on CPU and `invoke train --nproc 2`."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest

from faceage_keras.distributed import ShardedFaceDataset
from faceage_keras.synthetic import write_synthetic_dataset
from faceage_keras.table import read_labels

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "ddp_worker.py"
TINY_BACKBONE = "test_efficientnet"


@pytest.fixture(scope="module")
def synthetic_faces(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("faces"), num_images=96, seed=3, size=64)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _loopback_env():
    # One torch thread per process: two processes with two threads each on two cores run 10-30 times slower.
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


def _weights(path):
    arrays = {}
    with h5py.File(path, "r") as file:
        file.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays


def test_shards_are_disjoint_and_equal(synthetic_faces):
    table, _ = read_labels(synthetic_faces)
    shards = [
        ShardedFaceDataset(table, "m2", rank=rank, world_size=3, training=True, image_size=32, batch_size=8)
        for rank in range(3)
    ]

    for epoch in (0, 1):
        for shard in shards:
            shard.set_epoch(epoch)
        faces = [set(shard._order.tolist()) for shard in shards]
        assert len({len(shard) for shard in shards}) == 1, "processes run different numbers of batches"
        assert sum(len(part) for part in faces) == len(set().union(*faces)), "two processes share a face"
        assert len(set().union(*faces)) == len(table) // 3 * 3, "faces beyond the remainder were left out"


def test_shard_rejects_too_few_faces(synthetic_faces):
    table, _ = read_labels(synthetic_faces)

    with pytest.raises(ValueError, match="processes"):
        ShardedFaceDataset(table.head(5), "m2", rank=0, world_size=3, training=True, image_size=32)


def test_ddp_two_processes_stay_in_step(synthetic_faces, tmp_path):
    epochs = 6
    port = _free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "1"]
    command += ["--master-addr", "127.0.0.1", "--master-port", str(port)]
    command += [str(WORKER), str(synthetic_faces), str(tmp_path), str(epochs)]

    result = subprocess.run(command, env=_loopback_env(), capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, f"torchrun failed:\n{result.stderr[-4000:]}"
    records = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    weights = [_weights(tmp_path / f"rank{rank}.weights.h5") for rank in (0, 1)]
    assert weights[0].keys() == weights[1].keys(), "the processes saved different variables"
    differing = [name for name in weights[0] if not np.array_equal(weights[0][name], weights[1][name])]
    assert not differing, f"weights differ across processes: {differing[:5]}"
    assert records[0]["batches"] == records[1]["batches"], "the processes ran different numbers of batches"
    for epoch in range(epochs):
        overlap = set(records[0]["faces"][epoch]) & set(records[1]["faces"][epoch])
        assert not overlap, f"epoch {epoch + 1}: both processes trained on {sorted(overlap)[:3]}"
    losses = records[0]["losses"]
    assert losses == records[1]["losses"], "the averaged epoch losses differ across processes"
    assert losses[-1] < 0.8 * losses[0], f"the loss did not fall: {losses}"


def test_invoke_train_two_processes(synthetic_faces, tmp_path):
    run_dir = tmp_path / "run"
    args = ["--nproc", "2", "--model", "m1", "--backbone", TINY_BACKBONE, "--weights", "none", "--image-size", "32"]
    args += ["--epochs", "2", "--batch-size", "16", "--workers", "1", "--data", str(synthetic_faces)]
    command = [sys.executable, "-m", "invoke", "--search-root", str(REPO), "train", *args, "--run-dir", str(run_dir)]

    result = subprocess.run(command, cwd=tmp_path, env=_loopback_env(), capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, f"invoke train --nproc 2 failed:\n{result.stderr[-4000:]}"
    for name in ("metrics.json", "best_model.keras", "history.csv", "test_predictions.csv", "checkpoint/state.json"):
        assert (run_dir / name).is_file(), f"the run folder lacks {name}"
    assert len(pd.read_csv(run_dir / "history.csv")) == 2, "history.csv does not have one line per epoch"
    log = (run_dir / "train.log").read_text()
    assert log.count("epoch 2/2") == 1, "train.log does not have exactly one line for epoch 2"
    assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["epochs_done"] == 2, "checkpoint epoch"
