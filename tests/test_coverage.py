"""Coverage of the nominal 80% age intervals on real faces.

Each model is a tiny run of two epochs on 3,000 UTKFace faces, so its own
validation and test splits hold 300 faces each. Coverage on 300 faces has a
standard error of about sqrt(0.8 * 0.2 / 300) = 2.3 points, and the
intervals fit on 300 validation faces add about as much again, so the run's
own test split is checked only within a wide band. The 75-85% check follows
split-conformal calibration: it fits the intervals on 2,000 faces outside the
run and measures them on 2,000 more. Then the fit and the measurement each add
about 0.9 points of standard error.
"""

import importlib.util
import json
import pathlib
import shutil

import numpy as np
import pandas as pd
import pytest
from invoke import Context

from faceage_keras.config import TrainConfig
from faceage_keras.interval_calibration import CALIBRATION_FILE, coverage_report, load_calibration, write_calibration
from faceage_keras.labels import age_to_group, clip_age
from faceage_keras.splits import SPLIT_NAMES
from faceage_keras.training import train
from faceage_keras.trained_run import read_split_labels

REPO = pathlib.Path(__file__).resolve().parents[1]
RUN_FACES = 3000
HELD_OUT_FACES = 2000
SEED = 0


@pytest.fixture(scope="module", params=["m1", "m4"])
def coverage_run(request, utkface_dir, tiny_backbone, tmp_path_factory):
    config = TrainConfig(
        model=request.param,
        backbone=tiny_backbone,
        weights="none",
        image_size=32,
        epochs=2,
        batch_size=32,
        limit=RUN_FACES,
        workers=1,
        learning_rate=2e-3,
    )
    return train(config, data=utkface_dir, run_dir=tmp_path_factory.mktemp(request.param) / "run")


def _unseen_faces(run_dir, utkface_dir, utkface_labels, count):
    """Return `count` UTKFace faces outside every split of the run, with `path`, `age_clipped` and `group`."""
    used = set()
    for name in SPLIT_NAMES:
        used.update(read_split_labels(run_dir, name)["image_name"])
    unseen = utkface_labels[~utkface_labels["image_name"].isin(used)]
    unseen = unseen.sample(n=count, random_state=SEED).reset_index(drop=True)
    ages = unseen["age"].to_numpy(dtype="float64")
    return pd.DataFrame(
        {
            "path": [str(utkface_dir / "images" / name) for name in unseen["image_name"]],
            "age_clipped": clip_age(ages),
            "group": age_to_group(ages),
        }
    )


@pytest.fixture(scope="module")
def held_out_run(coverage_run, utkface_dir, utkface_labels, tmp_path_factory):
    """Return `(run_dir, test_faces)`: a copy of the run calibrated on unseen faces, and other unseen faces."""
    run_dir = tmp_path_factory.mktemp("held_out") / "run"
    shutil.copytree(coverage_run, run_dir, ignore=shutil.ignore_patterns(CALIBRATION_FILE))
    faces = _unseen_faces(run_dir, utkface_dir, utkface_labels, 2 * HELD_OUT_FACES)
    write_calibration(run_dir, val_data=faces[:HELD_OUT_FACES])
    return run_dir, faces[HELD_OUT_FACES:].reset_index(drop=True)


@pytest.mark.slow
def test_calibration_uses_given_faces(held_out_run):
    run_dir, _ = held_out_run

    calibration = load_calibration(run_dir)

    assert calibration is not None, "write_calibration wrote no readable calibration.json"
    assert calibration.validation_faces == HELD_OUT_FACES, "the intervals were not fit on the given faces"


@pytest.mark.slow
@pytest.mark.parametrize("tta", [False, True], ids=["plain", "tta"])
def test_coverage_near_nominal(held_out_run, tta):
    run_dir, test_faces = held_out_run

    report = coverage_report(run_dir, table=test_faces, tta=tta)

    assert report["faces"] == HELD_OUT_FACES, "coverage was not measured on the given faces"
    assert 0.75 <= report["coverage"] <= 0.85, f"{report['model']} covers {report['coverage']:.3f} of unseen faces"
    assert np.isclose(report["below"] + report["above"] + report["coverage"], 1.0), "shares outside do not add up"
    assert report["mean_width"] < 60, f"intervals of {report['mean_width']:.1f} years say nothing about age"


@pytest.mark.slow
def test_coverage_on_own_test_split(coverage_run):
    report = coverage_report(coverage_run)

    assert report["split"] == "test", "the default split is not the test split"
    assert report["faces"] == len(read_split_labels(coverage_run, "test")), "not measured on the run's test split"
    assert report["validation_faces"] == len(read_split_labels(coverage_run, "val")), "not fit on the val split"
    # About three standard errors of 300 test faces and 300 validation faces.
    assert 0.70 <= report["coverage"] <= 0.90, f"{report['model']} covers {report['coverage']:.3f} of its test split"


@pytest.mark.slow
def test_coverage_task_reports_speed(coverage_run, capsys):
    spec = importlib.util.spec_from_file_location("project_tasks", REPO / "tasks.py")
    tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tasks)

    tasks.interval_coverage(Context(), run=str(coverage_run), throughput_faces="40")
    report = json.loads(capsys.readouterr().out)

    assert report["faces"] == len(read_split_labels(coverage_run, "test")), "not measured on the run's test split"
    assert report["throughput_faces"] == 40, "throughput not timed on the requested number of faces"
    assert report["faces_per_second"] > 0, "no throughput measured"
