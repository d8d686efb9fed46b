"""TFDS face data sets: the builders, `invoke data build` and reading them back like the source folder."""

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from faceage_keras import tfds_faces
from faceage_keras.config import TrainConfig
from faceage_keras.dataset import FaceDataset
from faceage_keras.sources import load_face_table, parse_tfds_spec, resolve_data
from faceage_keras.splits import split_table
from faceage_keras.synthetic import write_synthetic_dataset
from faceage_keras.table import DataError, read_labels
from faceage_keras.training import resolve_data_dir, train

REPO = pathlib.Path(__file__).resolve().parents[1]
IMAGE_SIZE = 32
SEED = 7
# Few distinct ages, so that every whole-year age has at least two faces and survives `split_table`.
ARCHIVE_AGES = (4, 4.5, 23, 23, 34.5, 47, 61, 88)
NUM_ARCHIVE_FACES = 36
# Every 600th UTKFace name in sorted order, about 36 faces of all ages.
UTKFACE_STRIDE = 600
IRREGULAR_UTKFACE_NAME = "39_1_20170116174525125.jpg.chip.jpg"


def _utkface_module():
    tfds_faces.load_builder_class("utkface")
    return sys.modules["utkface_dataset_builder"]


def _write_archive(folder):
    """Write a portrait archive with a shuffled, archive-style labels.csv and some awkward rows.

    The CSV lists the faces out of name order, spells the header ImageName,
    Age, Gender, gives a group for some rows, has a non-ASCII file name, a
    grayscale image, a blank line and a row whose image is missing.
    """
    write_synthetic_dataset(folder, num_images=NUM_ARCHIVE_FACES, seed=0, size=48)
    labels = pd.read_csv(folder / "labels.csv", dtype=str)
    images_dir = folder / "images"

    (images_dir / labels.loc[3, "image_name"]).rename(images_dir / "Porträt Ærø 3.png")
    labels.loc[3, "image_name"] = "Porträt Ærø 3.png"
    with Image.open(images_dir / labels.loc[5, "image_name"]) as image:
        image.convert("L").save(images_dir / labels.loc[5, "image_name"])

    labels["age"] = [str(ARCHIVE_AGES[index % len(ARCHIVE_AGES)]) for index in range(len(labels))]
    labels["group"] = ["19-29" if index % 3 == 0 else "" for index in range(len(labels))]
    labels = labels.sample(frac=1.0, random_state=1).reset_index(drop=True)

    rows = [f"{row.image_name},{row.age},{row.gender},{row.group}" for row in labels.itertuples()]
    rows.insert(10, ",,,")
    rows.insert(20, "missing_face.png,30,Male,")
    text = "ImageName,Age,Gender,Group\n" + "\n".join(rows) + "\n"
    (folder / "labels.csv").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A portrait archive folder and its TFDS build: `(folder, data_dir, build result)`."""
    root = tmp_path_factory.mktemp("archive")
    folder = _write_archive(root / "archive")
    data_dir = root / "tfds"
    result = tfds_faces.build_dataset("portrait_archive", folder, data_dir=data_dir)
    return folder, data_dir, result


@pytest.fixture(scope="module")
def utkface_copy(utkface_dir, tmp_path_factory):
    """About 36 real UTKFace crops with a labels.csv in name order, and their TFDS build."""
    root = tmp_path_factory.mktemp("utkface")
    labels = pd.read_csv(utkface_dir / "labels.csv", dtype=str, keep_default_na=False)
    labels = labels.sort_values("image_name").reset_index(drop=True)
    chosen = labels.iloc[::UTKFACE_STRIDE]
    chosen = pd.concat([chosen, labels[labels["image_name"] == IRREGULAR_UTKFACE_NAME]])
    chosen = chosen.drop_duplicates("image_name").sort_values("image_name")

    folder = root / "utkface"
    (folder / "images").mkdir(parents=True)
    for name in chosen["image_name"]:
        shutil.copy(utkface_dir / "images" / name, folder / "images" / name)
    chosen.to_csv(folder / "labels.csv", index=False)
    result = tfds_faces.build_dataset("utkface", folder, data_dir=root / "tfds")
    return folder, result


def _assert_same_tables(folder_table, tfds_table):
    columns = ["image_name", "age", "gender", "group", "line", "age_clipped"]
    pd.testing.assert_frame_equal(folder_table[columns], tfds_table[columns])


def _assert_same_batches(folder_table, tfds_table):
    """Assert that both tables give the same splits and identical training and validation batches."""
    folder_splits = split_table(folder_table, seed=SEED)
    tfds_splits = split_table(tfds_table, seed=SEED)
    for name in ("train", "val"):
        assert list(folder_splits[name]["image_name"]) == list(tfds_splits[name]["image_name"]), f"{name} split differs"
        options = {"image_size": IMAGE_SIZE, "batch_size": 8, "training": name == "train", "seed": SEED}
        folder_data = FaceDataset(folder_splits[name], "m1", **options)
        tfds_data = FaceDataset(tfds_splits[name], "m1", **options)
        assert len(folder_data) == len(tfds_data), f"{name}: different number of batches"
        for index in range(len(folder_data)):
            folder_images, folder_targets = folder_data[index]
            tfds_images, tfds_targets = tfds_data[index]
            np.testing.assert_array_equal(folder_images, tfds_images, err_msg=f"{name} batch {index}: images")
            assert folder_targets.keys() == tfds_targets.keys(), f"{name} batch {index}: target names"
            for key in folder_targets:
                np.testing.assert_array_equal(
                    folder_targets[key], tfds_targets[key], err_msg=f"{name} batch {index}: target {key}"
                )


# The UTKFace file-name parser.


@pytest.mark.parametrize(
    "name, expected",
    [
        ("24_0_1_20170116220224657.jpg.chip.jpg", (24, 0)),
        ("1_1_2_20161219203650636.jpg.chip.jpg", (1, 1)),
        ("116_1_0_20170120134921760.jpg.chip.jpg", (116, 1)),
        ("39_1_20170116174525125.jpg.chip.jpg", (39, 1)),
        ("55_0_0_20170116232725357jpg.chip.jpg", (55, 0)),
        ("24_0_1_20170116220224657 .jpg.chip.jpg", (24, 0)),
        ("30_1_0_Zoë_Ærø.jpg", (30, 1)),
    ],
)
def test_parse_name_valid(name, expected):
    assert _utkface_module().parse_name(name) == expected


@pytest.mark.parametrize(
    "name, reason",
    [
        ("face.jpg", "does not have the form"),
        ("30_1.jpg", "does not have the form"),
        ("abc_0_0_20170116220224657.jpg.chip.jpg", "age field 'abc'"),
        ("_0_0_20170116220224657.jpg.chip.jpg", "age field ''"),
        ("٣٥_0_0_20170116220224657.jpg.chip.jpg", "age field '٣٥'"),
        ("３５_0_0_20170116220224657.jpg.chip.jpg", "age field '３５'"),
        ("-3_0_0_20170116220224657.jpg.chip.jpg", "age field '-3'"),
        ("200_0_0_20170116220224657.jpg.chip.jpg", "above 130"),
        ("30_2_0_20170116220224657.jpg.chip.jpg", "gender field '2'"),
        ("30_f_0_20170116220224657.jpg.chip.jpg", "gender field 'f'"),
        ("Porträt_1_0_x.jpg", "age field 'Porträt'"),
    ],
)
def test_parse_name_invalid(name, reason):
    with pytest.raises(ValueError, match=reason):
        _utkface_module().parse_name(name)


def test_standard_name_form():
    module = _utkface_module()

    assert module.is_standard_name("24_0_1_20170116220224657.jpg.chip.jpg"), "a standard name was not recognised"
    assert not module.is_standard_name(IRREGULAR_UTKFACE_NAME), "a name without race was taken as standard"


# Specs and data folders.


def test_parse_tfds_spec():
    assert parse_tfds_spec("tfds:utkface") == ("utkface", None)
    assert parse_tfds_spec("tfds:portrait_archive:1.2.0") == ("portrait_archive", "1.2.0")


@pytest.mark.parametrize("spec", ["tfds:", "tfds:UTKFace", "tfds:utkface:1.0", "tfds:utkface:1.0.0:x", "tfds:a/b"])
def test_parse_tfds_spec_invalid(spec):
    with pytest.raises(DataError, match="Expected tfds:NAME"):
        parse_tfds_spec(spec)


def test_unbuilt_spec_raises(tmp_path):
    with pytest.raises(DataError, match="invoke data build --dataset utkface"):
        resolve_data("tfds:utkface", tfds_data_dir=tmp_path)


def test_spec_uses_tfds_data_dir(archive, monkeypatch):
    _, data_dir, result = archive
    monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))

    assert resolve_data_dir("tfds:portrait_archive") == (result.path, False)
    assert resolve_data("tfds:portrait_archive:1.0.0") == result.path


def test_unbuilt_version_raises(archive):
    _, data_dir, _ = archive
    with pytest.raises(DataError, match="version 9.9.9"):
        resolve_data("tfds:portrait_archive:9.9.9", tfds_data_dir=data_dir)


# Portrait archive: the TFDS route matches the folder route.


def test_archive_build_records_skipped_rows(archive):
    _, _, result = archive

    assert result.num_faces == NUM_ARCHIVE_FACES, "the build did not keep every valid face"
    assert [row.image_name for row in result.skipped_rows] == ["missing_face.png"], "the bad row was not recorded"


def test_archive_tables_match(archive):
    folder, data_dir, result = archive
    folder_table, folder_bad_rows = read_labels(folder, skip_bad_rows=True)

    tfds_table, tfds_bad_rows = load_face_table(result.path, skip_bad_rows=True)

    _assert_same_tables(folder_table, tfds_table)
    assert tfds_bad_rows == folder_bad_rows, "the skipped rows differ"
    for row in tfds_table.itertuples():
        assert row.image_bytes == (folder / "images" / row.image_name).read_bytes(), f"{row.image_name}: bytes differ"


def test_archive_limit_matches(archive):
    folder, _, result = archive
    options = {"skip_bad_rows": True, "limit": 15, "seed": 3}
    folder_table, folder_bad_rows = read_labels(folder, **options)

    tfds_table, tfds_bad_rows = load_face_table(result.path, **options)

    _assert_same_tables(folder_table, tfds_table)
    assert tfds_bad_rows == folder_bad_rows, "the skipped rows met before the limit differ"


def test_archive_batches_match(archive):
    folder, _, result = archive
    folder_table, _ = read_labels(folder, skip_bad_rows=True)
    tfds_table, _ = load_face_table(result.path, skip_bad_rows=True)

    _assert_same_batches(folder_table, tfds_table)


def test_archive_bad_rows_raise(archive):
    _, _, result = archive
    with pytest.raises(DataError, match="--skip-bad-rows"):
        load_face_table(result.path)


# UTKFace: the TFDS route from file names matches the folder route from labels.csv.


def test_utkface_tables_match(utkface_copy):
    folder, result = utkface_copy
    folder_table, _ = read_labels(folder)

    tfds_table, bad_rows = load_face_table(result.path)

    _assert_same_tables(folder_table, tfds_table)
    assert bad_rows == [], "a build from valid names skipped rows"
    assert IRREGULAR_UTKFACE_NAME in set(tfds_table["image_name"]), "the name without race field was dropped"


def test_utkface_batches_match(utkface_copy):
    folder, result = utkface_copy
    folder_table, _ = read_labels(folder)
    tfds_table, _ = load_face_table(result.path)

    _assert_same_batches(folder_table, tfds_table)


def test_utkface_skips_bad_names(tmp_path):
    images_dir = tmp_path / "crops"
    images_dir.mkdir()
    for name in ("23_1_0_20170116174525125.jpg.chip.jpg", "31_0_3_20170116174525126.jpg.chip.jpg"):
        Image.new("RGB", (20, 20), (90, 60, 40)).save(images_dir / name)
    Image.new("RGB", (20, 20)).save(images_dir / "Großvater_0_0_x.jpg")
    (images_dir / "40_1_0_20170116174525127.jpg.chip.jpg").write_bytes(b"not a JPEG")
    (images_dir / "notes.txt").write_text("not an image")

    result = tfds_faces.build_dataset("utkface", images_dir, data_dir=tmp_path / "tfds")

    assert result.num_faces == 2, "valid crops were not all kept"
    skipped = {row.image_name: row.reason for row in result.skipped_rows}
    assert set(skipped) == {"Großvater_0_0_x.jpg", "40_1_0_20170116174525127.jpg.chip.jpg"}, "wrong rows skipped"
    assert "Cannot decode" in skipped["40_1_0_20170116174525127.jpg.chip.jpg"], "the decode error was not recorded"


# Building: reruns, other sources and interruptions.


def test_rebuild_does_nothing(archive, caplog):
    folder, data_dir, result = archive
    times = {path: path.stat().st_mtime_ns for path in result.path.iterdir()}

    with caplog.at_level("INFO", logger="faceage_keras"):
        again = tfds_faces.build_dataset("portrait_archive", folder, data_dir=data_dir)

    assert not again.built, "a finished build was built again"
    assert again.num_faces == result.num_faces, "the rerun reported another number of faces"
    assert "Nothing to do" in caplog.text, "the rerun did not say that it did nothing"
    assert {path: path.stat().st_mtime_ns for path in result.path.iterdir()} == times, "files were rewritten"


def test_rebuild_from_other_source_raises(archive, tmp_path):
    _, data_dir, _ = archive
    other = write_synthetic_dataset(tmp_path / "other", num_images=6, seed=1, size=32)

    with pytest.raises(DataError, match="was built from"):
        tfds_faces.build_dataset("portrait_archive", other, data_dir=data_dir)


_KILLED_BUILD = textwrap.dedent(
    """
    import os, signal, sys
    from faceage_keras import tfds_faces

    make_example = tfds_faces.face_example
    count = 0

    def make_example_then_die(**fields):
        global count
        count += 1
        if count == 10:
            os.kill(os.getpid(), signal.SIGKILL)
        return make_example(**fields)

    tfds_faces.face_example = make_example_then_die
    tfds_faces.build_dataset("portrait_archive", sys.argv[1], data_dir=sys.argv[2])
    """
)


def test_killed_build_is_not_read(archive, tmp_path):
    folder, _, finished = archive
    data_dir = tmp_path / "tfds"
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_BUILD, str(folder), str(data_dir)], env=env, capture_output=True, timeout=300
    )

    assert killed.returncode == -9, f"the build was not killed:\n{killed.stderr.decode()[-2000:]}"
    assert list((data_dir / "portrait_archive").glob("incomplete.*")), "the killed build left no temporary folder"
    assert not (data_dir / "portrait_archive" / "1.0.0").exists(), "a killed build left a version folder"
    with pytest.raises(DataError, match="not built"):
        load_face_table("tfds:portrait_archive", tfds_data_dir=data_dir, skip_bad_rows=True)

    rebuilt = tfds_faces.build_dataset("portrait_archive", folder, data_dir=data_dir)

    assert rebuilt.built, "the rerun after a killed build did not build"
    assert rebuilt.num_faces == finished.num_faces, "the rebuilt data set is incomplete"


def test_invoke_data_build(tmp_path):
    folder = write_synthetic_dataset(tmp_path / "archive", num_images=8, seed=2, size=32)
    command = [sys.executable, "-m", "invoke", "--search-root", str(REPO), "data", "build"]
    command += ["--dataset", "portrait_archive", "--manual-dir", str(folder), "--data-dir", str(tmp_path / "tfds")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    assert first.returncode == 0, f"invoke data build failed:\n{first.stderr[-3000:]}"
    assert "Built portrait_archive 1.0.0: 8 faces" in first.stdout, f"no summary line:\n{first.stdout}"
    assert "Building portrait_archive 1.0.0" in first.stderr, f"no progress log:\n{first.stderr[-3000:]}"
    assert second.returncode == 0, f"the rerun failed:\n{second.stderr[-3000:]}"
    assert "Nothing to do" in second.stdout, f"the rerun did not say that it did nothing:\n{second.stdout}"


def test_unknown_builder_raises(tmp_path):
    with pytest.raises(DataError, match="Available builders: \\['portrait_archive', 'utkface'\\]"):
        tfds_faces.build_dataset("celebrities", tmp_path, data_dir=tmp_path / "tfds")


# Training on a TFDS data set.


@pytest.mark.slow
def test_train_on_tfds_spec(archive, monkeypatch, tmp_path):
    folder, data_dir, _ = archive
    monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))
    config = TrainConfig(
        model="m2", backbone="test_efficientnet", weights="none", image_size=IMAGE_SIZE, epochs=1, batch_size=16,
        skip_bad_rows=True, workers=1,
    )

    run_dir = train(config, data="tfds:portrait_archive", run_dir=tmp_path / "run")

    expected = split_table(read_labels(folder, skip_bad_rows=True)[0], seed=config.seed)
    for name in ("train", "val", "test"):
        saved = pd.read_csv(run_dir / "splits" / f"{name}.csv", dtype={"image_name": str})
        assert list(saved["image_name"]) == list(expected[name]["image_name"]), f"{name} split differs from the folder's"
    assert (run_dir / "skipped_rows.csv").is_file(), "the rows left out at build time were not listed"
    assert (run_dir / "metrics.json").is_file(), "the run wrote no metrics.json"
