"""Validation at the boundaries: CSV files, image files, config values and command-line options."""

import struct
import unicodedata

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from faceage_keras import images as images_module
from faceage_keras.config import ConfigError, TrainConfig, load_config
from faceage_keras.dataset import FaceDataset
from faceage_keras.images import ImageReadError, load_rgb
from faceage_keras.splits import split_table
from faceage_keras.table import DataError, read_labels
from faceage_keras.training import train


def _data_folder(tmp_path, csv_bytes, image_names=("a.jpg", "b.jpg", "c.jpg")):
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    for index, name in enumerate(image_names):
        Image.new("RGB", (32, 32), (40 * index, 80, 120)).save(folder / "images" / name)
    (folder / "labels.csv").write_bytes(csv_bytes)
    return folder


def test_duplicate_image_is_bad_row(tmp_path):
    folder = _data_folder(tmp_path, b"image_name,age,gender\na.jpg,30,Male\nb.jpg,40,Female\na.jpg,31,Male\n")

    with pytest.raises(DataError) as error:
        read_labels(folder)

    assert "line 4" in str(error.value), "the duplicate row's line is not named"
    assert "also on line 2" in str(error.value), "the first occurrence is not named"


def test_duplicate_image_skipped_keeps_first(tmp_path):
    folder = _data_folder(tmp_path, b"image_name,age,gender\na.jpg,30,Male\nb.jpg,40,Female\na.jpg,31,Male\n")

    table, bad_rows = read_labels(folder, skip_bad_rows=True)

    assert list(table["image_name"]) == ["a.jpg", "b.jpg"], "the duplicate was not dropped"
    assert table.loc[0, "age"] == 30, "the first occurrence was not kept"
    assert [row.line for row in bad_rows] == [4], "the dropped row is not reported"


def test_line_numbers_count_blank_lines(tmp_path):
    folder = _data_folder(tmp_path, b"image_name,age,gender\na.jpg,30,Male\n\n\nmissing.jpg,40,Female\n")

    with pytest.raises(DataError, match="line 5"):
        read_labels(folder)


def test_blank_lines_are_not_bad_rows(tmp_path):
    folder = _data_folder(tmp_path, b"image_name,age,gender\na.jpg,30,Male\n\nb.jpg,40,Female\n")

    table, bad_rows = read_labels(folder)

    assert len(table) == 2, "blank lines changed the number of faces"
    assert bad_rows == [], "blank lines were reported as bad rows"


def test_windows_1252_csv_reads(tmp_path):
    name = "Müller_1921.jpg"
    folder = _data_folder(tmp_path, f"image_name;age;gender\n{name};52;M\n".encode("cp1252"), image_names=[name])

    table, _ = read_labels(folder)

    assert table.loc[0, "image_name"] == name, "the umlaut in the file name was not decoded"


def test_utf16_csv_reads(tmp_path):
    folder = _data_folder(tmp_path, "image_name\tage\tgender\na.jpg\t30\tF\n".encode("utf-16"))

    table, _ = read_labels(folder)

    assert table.loc[0, "gender"] == 1, "the UTF-16, tab-separated row was not read"


def test_nfd_file_name_matches_nfc_label(tmp_path):
    nfc_name = unicodedata.normalize("NFC", "José.jpg")
    nfd_name = unicodedata.normalize("NFD", "José.jpg")
    folder = _data_folder(tmp_path, f"image_name,age,gender\n{nfc_name},40,Male\n".encode(), image_names=[nfd_name])

    table, _ = read_labels(folder)

    assert table.loc[0, "path"].endswith(nfd_name), "the file stored under the other Unicode form was not found"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"image_name,age,gender\na.jpg,30,Male,extra\n", "not a valid CSV"),
    ],
    ids=["empty", "extra-field"],
)
def test_malformed_csv_raises_data_error(tmp_path, content, message):
    folder = _data_folder(tmp_path, content)

    with pytest.raises(DataError, match=message):
        read_labels(folder)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("../outside.jpg,30,Male", "must be a path inside images/"),
        ("a.jpg,1e3,Male", "above 130 years"),
        ("a.jpg,30,", "gender is missing"),
    ],
    ids=["path-traversal", "implausible-age", "missing-gender"],
)
def test_bad_row_reason(tmp_path, row, reason):
    folder = _data_folder(tmp_path, f"image_name,age,gender\n{row}\nb.jpg,40,Female\n".encode())
    Image.new("RGB", (32, 32)).save(tmp_path / "outside.jpg")

    _, bad_rows = read_labels(folder, skip_bad_rows=True)

    assert len(bad_rows) == 1, f"expected one bad row, got {bad_rows}"
    assert reason in bad_rows[0].reason, f"reason {bad_rows[0].reason!r} lacks {reason!r}"


def test_exif_parse_error_is_image_read_error(tmp_path, monkeypatch):
    path = tmp_path / "face.jpg"
    Image.new("RGB", (32, 32)).save(path)

    def broken_exif(image):
        raise struct.error("required argument is not an integer")

    monkeypatch.setattr(images_module.ImageOps, "exif_transpose", broken_exif)

    with pytest.raises(ImageReadError, match="required argument is not an integer"):
        load_rgb(path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": "1"}, "must be of type int"),
        ({"limit": 20.7}, "must be of type int"),
        ({"freeze_backbone": "no"}, "must be of type bool"),
        ({"learning_rate": -1.0}, "must be positive"),
        ({"seed": -1}, "seed"),
        ({"dropout": 1.5}, "dropout"),
        ({"image_size": 8}, "image_size"),
        ({"lr_step_factor": -5.0}, "lr_step_factor"),
        ({"momentum": 5.0}, "momentum"),
        ({"early_stopping_patience": -1}, "early_stopping_patience"),
        ({"global_clipnorm": -1.0}, "global_clipnorm"),
        ({"backbone": "resnet18"}, "fits only backbone"),
    ],
    ids=lambda value: str(value),
)
def test_invalid_setting_raises_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, **overrides)


def test_zero_clipnorm_disables_clipping():
    config = TrainConfig(global_clipnorm=0.0)

    assert config.global_clipnorm is None, "global_clipnorm = 0 did not disable clipping"


def test_toml_syntax_error_raises_config_error(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("model = m2\n")

    with pytest.raises(ConfigError, match="Cannot parse"):
        load_config(path)


def test_training_drops_last_batch_of_one():
    table = pd.DataFrame(
        {"path": ["x"] * 9, "age_clipped": np.full(9, 30.0), "gender": np.zeros(9, "int64"), "group": np.full(9, 2)}
    )

    training = FaceDataset(table, "m2", image_size=32, batch_size=4, training=True)
    evaluation = FaceDataset(table, "m2", image_size=32, batch_size=4)

    assert len(training) == 2, "a training batch of one face was kept"
    assert len(evaluation) == 3, "evaluation must keep every face"


def test_train_repeats_with_threaded_workers(small_face_folder, tmp_path):
    histories = []
    for attempt in (1, 2):
        config = TrainConfig(
            model="m2", backbone="test_efficientnet", weights="none", image_size=32, epochs=2, batch_size=8, workers=2
        )
        run_dir = train(config, data=small_face_folder, run_dir=tmp_path / f"attempt{attempt}")
        histories.append(pd.read_csv(run_dir / "history.csv"))

    np.testing.assert_allclose(
        histories[0]["loss"], histories[1]["loss"], rtol=1e-5, err_msg="two runs with the same seed differ"
    )


def test_duplicate_spellings_of_one_file(tmp_path):
    nfc_name = unicodedata.normalize("NFC", "Müller.jpg")
    nfd_name = unicodedata.normalize("NFD", "Müller.jpg")
    rows = f"image_name,age,gender\n{nfc_name},30,Male\n./{nfc_name},30,Male\n{nfd_name},30,Male\nb.jpg,40,Female\n"
    folder = _data_folder(tmp_path, rows.encode(), image_names=[nfc_name, "b.jpg"])

    table, bad_rows = read_labels(folder, skip_bad_rows=True)

    assert len(table) == 2, f"the same file was kept under several spellings: {list(table['image_name'])}"
    assert [row.line for row in bad_rows] == [3, 4], f"bad rows are {bad_rows}"


def test_too_long_file_name_is_bad_row(tmp_path):
    long_name = "a" * 300 + ".jpg"
    folder = _data_folder(tmp_path, f"image_name,age,gender\n{long_name},30,Male\nb.jpg,40,Female\n".encode())

    _, bad_rows = read_labels(folder, skip_bad_rows=True)

    assert [row.line for row in bad_rows] == [2], f"bad rows are {bad_rows}"
    assert "not a valid file name" in bad_rows[0].reason, f"reason is {bad_rows[0].reason!r}"


def test_whitespace_line_is_blank(tmp_path):
    folder = _data_folder(tmp_path, b"image_name,age,gender\na.jpg,30,Male\n   \nb.jpg,40,Female\n")

    table, bad_rows = read_labels(folder)

    assert len(table) == 2, "a line of spaces changed the number of faces"
    assert bad_rows == [], "a line of spaces was reported as a bad row"


@pytest.mark.parametrize(
    ("augment", "message"),
    [
        ({"brightness": "strong"}, "brightness"),
        ({"brightness": 3.0}, "brightness"),
        ({"rotation_degrees": -30.0}, "rotation_degrees"),
        ({"crop_scale": "ab"}, "crop_scale"),
        ({"crop_scale": [0.9, 0.5]}, "crop_scale"),
        (3, "augment"),
    ],
    ids=lambda value: str(value),
)
def test_invalid_augment_raises_config_error(augment, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, augment=augment)


def test_batch_size_one_raises_config_error():
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(None, batch_size=1)


def test_too_few_faces_raises_data_error():
    table = pd.DataFrame(
        {"image_name": [f"{index}.jpg" for index in range(5)], "age": [30.0] * 5, "gender": [0] * 5, "group": [2] * 5}
    )

    # 20% of five faces is one face, which cannot be both validation and test.
    with pytest.raises(DataError, match="at least 6 faces"):
        split_table(table)


def test_run_dir_with_only_failed_log_is_reused(small_face_folder, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "train.log").write_text("an earlier run failed here\n")
    config = TrainConfig(model="m4", backbone="test_efficientnet", weights="none", image_size=32, epochs=1, batch_size=8)

    train(config, data=small_face_folder, run_dir=run_dir)

    assert (run_dir / "metrics.json").is_file(), "the run did not complete in the reused folder"
