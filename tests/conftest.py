"""Shared fixtures: the real UTKFace folder, a small face folder and a tiny backbone.

Tests that need real faces read the folder named by the environment variable
`FACEAGE_DATA` (a `labels.csv` with `image_name,age,gender` and an `images/`
folder). Without it they are skipped, or use synthetic portraits where the
test only needs some face images.
"""

import os
import pathlib

import pandas as pd
import pytest
import torch

from faceage_keras.labels import age_to_group
from faceage_keras.synthetic import write_synthetic_dataset

DATA_ENV_VAR = "FACEAGE_DATA"
# Overrides the number of intra-op threads torch uses in tests.
THREADS_ENV_VAR = "FACEAGE_TEST_TORCH_THREADS"

# A timm model with about 0.1 M parameters that runs at 32 px in milliseconds.
TINY_BACKBONE = "test_efficientnet"

# Faces per (age group, gender) cell in `small_face_folder`: 5 x 2 x 4 = 40.
FACES_PER_CELL = 4
SMALL_FOLDER_SEED = 0


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: end-to-end test that trains or runs a full-size backbone (deselect with -m 'not slow')"
    )
    # The tiny test models gain nothing from intra-op threads, and on a busy
    # machine the threads wait on each other. On a shared 2-core machine, one
    # fit step of a 32 px model took about 2 s with 2 threads and 0.02 s with 1.
    torch.set_num_threads(int(os.environ.get(THREADS_ENV_VAR, "1")))


def _utkface_dir_or_none():
    value = os.environ.get(DATA_ENV_VAR)
    if not value:
        return None
    path = pathlib.Path(value)
    if not (path / "labels.csv").is_file() or not (path / "images").is_dir():
        return None
    return path


@pytest.fixture(scope="session")
def utkface_dir():
    """Return the real UTKFace folder named by FACEAGE_DATA, or skip the test when it is absent."""
    value = os.environ.get(DATA_ENV_VAR)
    if not value:
        pytest.skip(f"{DATA_ENV_VAR} is not set; set it to a folder with labels.csv and images/ of UTKFace crops")
    path = _utkface_dir_or_none()
    if path is None:
        pytest.skip(f"{DATA_ENV_VAR}={value!r} is not a folder with labels.csv and images/")
    return path


@pytest.fixture(scope="session")
def utkface_labels(utkface_dir):
    """The raw rows of the real labels.csv as a DataFrame (no image checks)."""
    return pd.read_csv(utkface_dir / "labels.csv", dtype={"image_name": str})


@pytest.fixture(scope="session")
def tiny_backbone():
    """Name of a tiny timm model for fast model tests."""
    return TINY_BACKBONE


def _select_real_faces(labels):
    """Pick FACES_PER_CELL faces from every (age group, gender) cell, reproducibly."""
    labels = labels.assign(cell_group=age_to_group(labels["age"].to_numpy()))
    cells = []
    for _, cell in labels.groupby(["cell_group", "gender"], sort=True):
        cells.append(cell.sample(n=min(FACES_PER_CELL, len(cell)), random_state=SMALL_FOLDER_SEED))
    return pd.concat(cells).drop(columns="cell_group").reset_index(drop=True)


@pytest.fixture
def small_face_folder(tmp_path):
    """A data folder with labels.csv and images/ of about 40 faces across ages and genders.

    With FACEAGE_DATA set, the images are symbolic links to real UTKFace
    crops. Without it, they are synthetic portraits of 64 px.
    """
    folder = tmp_path / "faces"
    source = _utkface_dir_or_none()
    if source is None:
        return write_synthetic_dataset(folder, num_images=10 * FACES_PER_CELL, seed=SMALL_FOLDER_SEED, size=64)

    labels = pd.read_csv(source / "labels.csv", dtype={"image_name": str})
    selected = _select_real_faces(labels)
    images_dir = folder / "images"
    images_dir.mkdir(parents=True)
    for name in selected["image_name"]:
        (images_dir / name).symlink_to(source / "images" / name)
    selected.to_csv(folder / "labels.csv", index=False)
    return folder


# Faces and input size of the tiny runs that prediction tests load.
TINY_RUN_FACES = 300
TINY_RUN_IMAGE_SIZE = 32


@pytest.fixture(scope="session")
def tiny_run(utkface_dir, tmp_path_factory):
    """Return a function that trains (once per model) a run of one epoch on 300 real faces at 32 px.

    The runs use the tiny backbone, so each takes a few seconds. Tests must
    not change these folders; copy one to change it.
    """
    from faceage_keras.config import TrainConfig
    from faceage_keras.training import train

    runs = {}

    def get(model):
        if model not in runs:
            config = TrainConfig(
                model=model,
                backbone=TINY_BACKBONE,
                weights="none",
                image_size=TINY_RUN_IMAGE_SIZE,
                epochs=1,
                batch_size=32,
                limit=TINY_RUN_FACES,
                workers=1,
                learning_rate=2e-3,
            )
            runs[model] = train(config, data=utkface_dir, run_dir=tmp_path_factory.mktemp(f"{model}_run") / "run")
        return runs[model]

    return get
