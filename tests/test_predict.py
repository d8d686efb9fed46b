"""The `Predictor` API on tiny runs trained on real faces."""

import json
import shutil

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

import faceage_keras
from faceage_keras import labels
from faceage_keras.interval_calibration import CALIBRATION_FILE, load_calibration
from faceage_keras.dataset import FaceDataset
from faceage_keras.evaluation import decode_outputs
from faceage_keras.predict import FacePrediction, Predictor
from faceage_keras.trained_run import RunFolderError, read_split_images
from faceage_keras.training import BEST_MODEL_FILE

MODELS = ["m1", "m4"]
NUM_FACES = 6


@pytest.fixture(scope="module", params=MODELS)
def run_dir(request, tiny_run):
    return tiny_run(request.param)


@pytest.fixture(scope="module")
def predictor(run_dir):
    return Predictor.from_run(run_dir)


@pytest.fixture(scope="module")
def test_paths(run_dir):
    return list(read_split_images(run_dir, "test")["path"][:NUM_FACES])


def _copy_run(run_dir, destination):
    shutil.copytree(run_dir, destination, ignore=shutil.ignore_patterns(CALIBRATION_FILE))
    return destination


def _values(record):
    return {key: value for key, value in vars(record).items() if key != "source"}


def _assert_records_close(actual, expected, where):
    for key, value in _values(expected).items():
        if isinstance(value, float):
            assert getattr(actual, key) == pytest.approx(value, abs=1e-4, nan_ok=True), f"{key} differs for {where}"
        else:
            assert getattr(actual, key) == value, f"{key} differs for {where}"


def test_predictor_exported():
    assert faceage_keras.Predictor is Predictor, "faceage_keras.Predictor is not the predictor class"


def test_from_run_writes_calibration(run_dir, tmp_path):
    copy = _copy_run(run_dir, tmp_path / "run")

    predictor = Predictor.from_run(copy)

    assert (copy / CALIBRATION_FILE).is_file(), "from_run did not write calibration.json"
    num_val = len(pd.read_csv(copy / "splits" / "val.csv"))
    assert predictor.calibration.validation_faces == num_val, "the intervals were not fit on the validation split"
    assert load_calibration(copy) is not None, "the written calibration does not load"


def test_from_run_refits_for_new_model(run_dir, tmp_path):
    copy = _copy_run(run_dir, tmp_path / "run")
    Predictor.from_run(copy)
    model = keras.models.load_model(copy / BEST_MODEL_FILE)
    model.save(copy / BEST_MODEL_FILE)

    assert load_calibration(copy) is None, "a calibration for another model file was reused"


def test_from_run_without_val_images(run_dir, tmp_path):
    copy = _copy_run(run_dir, tmp_path / "run")
    info = json.loads((copy / "run.json").read_text())
    info["data_dir"] = str(tmp_path / "moved")
    (copy / "run.json").write_text(json.dumps(info))

    with pytest.raises(RunFolderError, match="--data"):
        Predictor.from_run(copy)


def test_from_run_without_model(tmp_path):
    (tmp_path / "config.json").write_text('{"model": "m2", "image_size": 32}')

    with pytest.raises(RunFolderError, match="best_model.keras is missing"):
        Predictor.from_run(tmp_path)


def test_single_inputs_agree(predictor, test_paths):
    path = test_paths[0]
    with Image.open(path) as image:
        image.load()
        from_pil = predictor.predict(image)
        from_array = predictor.predict(np.asarray(image.convert("RGB")))
    from_path = predictor.predict(path)

    assert isinstance(from_path, FacePrediction), "a single path did not give a FacePrediction"
    assert from_path.source == str(path), "the record does not name its file"
    _assert_records_close(from_pil, from_path, "a PIL image")
    _assert_records_close(from_array, from_path, "a numpy array")


def test_list_gives_frame(predictor, test_paths):
    frame = predictor.predict(test_paths)

    assert isinstance(frame, pd.DataFrame), "a list did not give a DataFrame"
    assert len(frame) == len(test_paths), "not one row per face"
    for index, path in enumerate(test_paths):
        single = predictor.predict(path)
        assert frame.loc[index, "age"] == pytest.approx(single.age, abs=1e-4), f"row {index} differs from one face"
        assert frame.loc[index, "age_group"] == single.age_group, f"row {index} has another group"


def test_matches_evaluation(predictor, run_dir):
    table = read_split_images(run_dir, "test")
    dataset = FaceDataset(table, predictor.model_name, image_size=predictor.image_size, batch_size=16)
    decoded = decode_outputs(predictor.task, predictor.model.predict(dataset, verbose=0))

    frame = predictor.predict(list(table["path"]))

    expected_age = decoded["age_pred_expected"] if "prob_group" in decoded else decoded["age_pred"]
    np.testing.assert_allclose(frame["age"], expected_age, atol=1e-3, err_msg="age differs from evaluation")
    expected_groups = [labels.AGE_GROUP_LABELS[group] for group in decoded["group_pred"]]
    assert list(frame["age_group"]) == expected_groups, "age group differs from evaluation"
    if predictor.task.predicts_gender:
        is_female = frame["gender"] == "female"
        prob_female = np.where(is_female, frame["gender_probability"], 1 - frame["gender_probability"])
        np.testing.assert_allclose(prob_female, decoded["prob_female"], atol=1e-4, err_msg="P(female) differs")
    else:
        assert frame["gender"].isna().all(), "a model without a gender head reports a gender"


def test_intervals_valid(predictor, test_paths):
    frame = predictor.predict(test_paths)

    assert (frame["age_low"] <= frame["age_high"]).all(), "an interval ends before it starts"
    assert frame["age_low"].min() >= labels.MIN_AGE, "an interval starts below 0"
    assert frame["age_high"].max() <= labels.MAX_AGE, "an interval ends above 75"
    assert frame["age_group_probability"].between(0, 1).all(), "a group probability is outside [0, 1]"


def test_tta_differs(predictor, test_paths):
    plain = predictor.predict(test_paths)
    mirrored = predictor.predict(test_paths, tta=True)

    assert not np.allclose(plain["age"], mirrored["age"]), "TTA gave the same ages as plain predictions"


def test_tta_is_mean_of_views(predictor, test_paths):
    with Image.open(test_paths[0]) as image:
        image = image.convert("RGB")
    original = predictor.predict(image)
    mirror = predictor.predict(ImageOps.mirror(image))

    averaged = predictor.predict(image, tta=True)

    # Group models give the expected age, which is linear in the group probabilities that TTA averages.
    assert averaged.age == pytest.approx((original.age + mirror.age) / 2, abs=1e-3), "TTA age is not the mean"
    if predictor.task.predicts_gender:
        female = [
            record.gender_probability if record.gender == "female" else 1 - record.gender_probability
            for record in (original, mirror, averaged)
        ]
        assert female[2] == pytest.approx((female[0] + female[1]) / 2, abs=1e-4), "TTA P(female) is not the mean"


def test_rejects_float_array(predictor):
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict(np.zeros((32, 32, 3), dtype="float32"))


def test_rejects_unknown_input(predictor):
    with pytest.raises(TypeError, match="path, a PIL image"):
        predictor.predict([3.5])
