"""Tests for `prepare_folder` and `invoke prepare`: crops, tables, image modes and bad files."""

import importlib.util
import io
import os
import pathlib
import subprocess
import sys

import invoke
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data as skimage_data

from faceage_keras import faces
from faceage_keras.prepare import prepare_folder, read_photo_labels
from faceage_keras.table import DataError, read_labels

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CROP_SIZE = 64
EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientation 6: the stored pixels must turn 90 degrees clockwise to stand upright.
ROTATE_CLOCKWISE = 6
MODE_FILES = ("gray.png", "cmyk.jpg", "wide16.png", "palette.png", "rgba.png", "exif_rotated.jpg")


def _portrait():
    """Return the astronaut's head and shoulders, 210 x 220 px, one face."""
    return Image.fromarray(skimage_data.astronaut()).crop((120, 20, 330, 240))


def _group_photo():
    """Return a photo with three faces of different sizes, the largest in the middle."""
    portrait = _portrait()
    canvas = Image.new("RGB", (760, 300), (110, 120, 130))
    canvas.paste(portrait.resize((120, 126)), (30, 90))
    canvas.paste(portrait, (260, 40))
    canvas.paste(portrait.resize((160, 168)), (560, 70))
    return canvas


def _write_mode_files(folder):
    portrait = _portrait()
    folder.mkdir(parents=True)
    portrait.convert("L").save(folder / "gray.png")
    portrait.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    wide = (np.asarray(portrait.convert("L"), dtype="uint16") * 257).astype("uint16")
    Image.fromarray(wide).save(folder / "wide16.png")
    portrait.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(folder / "palette.png")
    rgba = portrait.convert("RGBA")
    alpha = np.full(rgba.size[::-1], 255, dtype="uint8")
    alpha[:, :20] = 0
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(folder / "rgba.png")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = ROTATE_CLOCKWISE
    portrait.transpose(Image.Transpose.ROTATE_90).save(folder / "exif_rotated.jpg", exif=exif, quality=95)


def _write_photo_folder(folder):
    folder.mkdir(parents=True)
    _portrait().save(folder / "portrait.jpg", quality=95)
    _group_photo().save(folder / "group.png")
    Image.new("RGB", (300, 200), (128, 128, 128)).save(folder / "blank.png")
    buffer = io.BytesIO()
    _portrait().save(buffer, format="JPEG")
    (folder / "broken.jpg").write_bytes(buffer.getvalue()[:300])
    (folder / "notes.txt").write_text("Box 12: studio portraits, 1910-1925.\n", encoding="utf-8")
    _portrait().save(folder / "twin.jpg", quality=95)
    _portrait().save(folder / "twin.png")
    _write_mode_files(folder / "modes")
    return folder


@pytest.fixture(scope="module")
def mtcnn():
    return faces.get_detector("mtcnn")


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    return _write_photo_folder(tmp_path_factory.mktemp("photos") / "archive")


@pytest.fixture(scope="module")
def prepared(photo_folder, mtcnn, tmp_path_factory):
    output = tmp_path_factory.mktemp("prepared") / "crops"
    summary = prepare_folder(photo_folder, output, detector=mtcnn, size=CROP_SIZE, progress=False)
    return summary, output, pd.read_csv(output / "labels.csv", keep_default_na=False)


# Folder output.


def test_group_photo_writes_every_face(prepared):
    _, _, labels = prepared
    assert sorted(labels.loc[labels["source_photo"] == "group.png", "face_index"]) == [0, 1, 2]


def test_group_photo_counts_faces(prepared):
    _, _, labels = prepared
    assert set(labels.loc[labels["source_photo"] == "group.png", "faces_in_photo"]) == {3}


def test_crops_are_square_jpegs(prepared):
    _, output, labels = prepared
    for name in labels["image_name"]:
        with Image.open(output / "images" / name) as crop:
            assert (crop.format, crop.size) == ("JPEG", (CROP_SIZE, CROP_SIZE))


def test_crop_names_unique_for_shared_stem(prepared):
    _, _, labels = prepared
    twins = labels.loc[labels["source_photo"].str.startswith("twin."), "image_name"]
    assert sorted(twins) == ["twin.jpg_face0.jpg", "twin.png_face0.jpg"]


def test_crops_mirror_subfolders(prepared):
    _, _, labels = prepared
    assert "modes/gray_face0.jpg" in set(labels["image_name"])


def test_blank_photo_listed_in_no_face(prepared):
    summary, output, _ = prepared
    no_face = pd.read_csv(output / "no_face.csv")
    assert list(no_face["source_photo"]) == ["blank.png"]
    assert summary.photos_without_faces == ["blank.png"]


def test_unreadable_files_listed_with_reason(prepared):
    _, output, _ = prepared
    unreadable = pd.read_csv(output / "unreadable.csv").set_index("file")["reason"]
    assert sorted(unreadable.index) == ["broken.jpg", "notes.txt"]
    assert "truncated" in unreadable["broken.jpg"].lower()
    assert "cannot identify image file" in unreadable["notes.txt"]


@pytest.mark.parametrize("name", MODE_FILES)
def test_image_mode_processed(prepared, name):
    _, _, labels = prepared
    assert list(labels.loc[labels["source_photo"] == f"modes/{name}", "face_index"]) == [0]


def test_exif_rotation_applied_before_detection(prepared):
    _, _, labels = prepared
    by_photo = labels.set_index("source_photo")
    upright = by_photo.loc["portrait.jpg", ["x0", "y0", "x1", "y1"]].to_numpy(dtype="float64")
    rotated = by_photo.loc["modes/exif_rotated.jpg", ["x0", "y0", "x1", "y1"]].to_numpy(dtype="float64")
    assert np.abs(upright - rotated).max() < 8


def test_summary_counts(prepared):
    summary, _, labels = prepared
    assert (summary.photos_read, summary.faces_written, len(summary.skipped)) == (11, len(labels), 2)
    assert summary.faces_written == 12


def test_summary_text_names_skipped_files(prepared):
    summary, _, _ = prepared
    text = summary.format()
    assert "Files skipped: 2" in text
    assert "notes.txt: not a readable image" in text


def test_template_needs_ages(prepared):
    _, output, _ = prepared
    with pytest.raises(DataError, match="age is missing"):
        read_labels(output)


def test_filled_template_reads_as_data_folder(prepared, tmp_path):
    _, output, labels = prepared
    filled = labels.assign(age=np.arange(len(labels)) + 20, gender=["Female", "Male"] * (len(labels) // 2))
    filled.to_csv(output / "labels.csv", index=False)
    try:
        table, bad_rows = read_labels(output)
    finally:
        labels.to_csv(output / "labels.csv", index=False)
    assert (len(table), bad_rows) == (len(labels), [])


def test_no_temporary_files_left(prepared):
    _, output, _ = prepared
    assert [path.name for path in output.rglob("*.tmp")] == []


# Options.


def test_largest_only_keeps_one_face(tmp_path, mtcnn):
    photos = tmp_path / "photos"
    photos.mkdir()
    _group_photo().save(photos / "group.png")
    summary = prepare_folder(photos, tmp_path / "out", detector=mtcnn, size=CROP_SIZE, largest_only=True, progress=False)
    labels = pd.read_csv(tmp_path / "out" / "labels.csv")
    assert summary.faces_written == 1
    assert 250 < labels.loc[0, "x0"] < 420


def test_labels_carried_over(tmp_path, mtcnn):
    photos = tmp_path / "photos"
    photos.mkdir()
    _portrait().save(photos / "portrait.jpg")
    (photos / "box2").mkdir()
    _portrait().save(photos / "box2" / "studio.png")
    _group_photo().save(photos / "group.png")
    Image.new("RGB", (120, 90), (20, 20, 20)).save(photos / "unlabelled.png")
    metadata = tmp_path / "archive.csv"
    metadata.write_text(
        "ImageName;Age;Gender\nportrait.jpg;34;F\nstudio.png;61;Male\ngroup.png;40;M\nmissing.jpg;20;M\n",
        encoding="cp1252",
    )

    summary = prepare_folder(photos, tmp_path / "out", detector=mtcnn, size=CROP_SIZE, labels=metadata, progress=False)
    labels = pd.read_csv(tmp_path / "out" / "labels.csv", dtype=str, keep_default_na=False).set_index("image_name")
    assert tuple(labels.loc["portrait_face0.jpg", ["age", "gender"]]) == ("34", "F")
    assert tuple(labels.loc["box2/studio_face0.jpg", ["age", "gender"]]) == ("61", "Male")
    assert summary.shared_labels == ["group.png"]
    assert summary.unmatched_labels == ["missing.jpg"]
    assert list(pd.read_csv(tmp_path / "out" / "unmatched_labels.csv")["image_name"]) == ["missing.jpg"]


def test_labels_with_photo_twice_rejected(tmp_path):
    metadata = tmp_path / "archive.csv"
    metadata.write_text("image_name,age\na.jpg,3\nb.jpg,4\na.jpg,5\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2 and again on line 4"):
        read_photo_labels(metadata)


def test_labels_without_age_or_gender_rejected(tmp_path):
    metadata = tmp_path / "archive.csv"
    metadata.write_text("image_name,place\na.jpg,Oslo\n", encoding="utf-8")
    with pytest.raises(DataError, match="age and/or gender"):
        read_photo_labels(metadata)


def test_existing_output_needs_overwrite(tmp_path, photo_folder):
    output = tmp_path / "out"
    output.mkdir()
    (output / "labels.csv").write_text("image_name,age,gender\n", encoding="utf-8")
    with pytest.raises(DataError, match="--overwrite"):
        prepare_folder(photo_folder, output, progress=False)


def test_output_inside_input_not_read(tmp_path, mtcnn):
    photos = tmp_path / "photos"
    photos.mkdir()
    _portrait().save(photos / "portrait.jpg")
    prepare_folder(photos, photos / "crops", detector=mtcnn, size=CROP_SIZE, progress=False)
    summary = prepare_folder(photos, photos / "crops", detector=mtcnn, size=CROP_SIZE, overwrite=True, progress=False)
    assert summary.photos_read == 1


class _InterruptingDetector(faces.FaceDetector):
    """Finds one face on the first image and stops the run, like Ctrl+C, on the second."""

    def __init__(self):
        self.calls = 0

    def detect(self, image):
        self.calls += 1
        if self.calls > 1:
            raise KeyboardInterrupt
        landmarks = np.array([[40.0, 50.0], [70.0, 50.0], [55.0, 65.0], [45.0, 80.0], [65.0, 80.0]])
        return [faces.Detection(box=(20.0, 20.0, 90.0, 110.0), score=0.99, landmarks=landmarks)]


def test_interrupted_run_keeps_old_labels(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (120, 120), (90, 60, 40)).save(photos / name)
    output = tmp_path / "out"
    output.mkdir()
    (output / "labels.csv").write_text("image_name,age,gender\nold.jpg,30,F\n", encoding="utf-8")

    with pytest.raises(KeyboardInterrupt):
        prepare_folder(photos, output, detector=_InterruptingDetector(), overwrite=True, progress=False)
    assert (output / "labels.csv").read_text(encoding="utf-8") == "image_name,age,gender\nold.jpg,30,F\n"
    assert [path.name for path in output.rglob("*.tmp")] == []


class _FailingDetector(faces.FaceDetector):
    """Raises on images 50 px wide, finds nothing elsewhere."""

    def detect(self, image):
        if image.shape[1] == 50:
            raise RuntimeError("stage 2 received an empty batch")
        return []


def test_detector_failure_skips_one_photo(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (50, 40)).save(photos / "odd.png")
    Image.new("RGB", (80, 40)).save(photos / "plain.png")
    summary = prepare_folder(photos, tmp_path / "out", detector=_FailingDetector(), progress=False)
    assert summary.photos_without_faces == ["plain.png"]
    assert summary.skipped == [("odd.png", "face detection failed (RuntimeError: stage 2 received an empty batch)")]


# Command line.


def _invoke(*arguments):
    return subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT), "prepare", *arguments],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_invoke_prepare_end_to_end(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    _group_photo().save(photos / "group.jpg")
    Image.new("RGB", (200, 200), (250, 250, 250)).save(photos / "empty.png")
    (photos / "readme.txt").write_text("scanned 2024\n", encoding="utf-8")
    output = tmp_path / "crops"

    result = _invoke(
        "--input", str(photos), "--output", str(output), "--size", "96", "--margin", "0.3", "--max-detection-side", "600"
    )
    assert result.returncode == 0, result.stderr
    assert "Faces written: 3" in result.stdout
    assert "Photos without a face: 1" in result.stdout
    assert "readme.txt: not a readable image" in result.stdout
    assert len(list((output / "images").glob("*.jpg"))) == 3


@pytest.fixture(scope="module")
def tasks_module():
    spec = importlib.util.spec_from_file_location("tasks", REPO_ROOT / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "options, message",
    [
        ({"input": "nowhere"}, "error: Input folder"),
        ({"margin": "wide"}, "error: --margin must be a number"),
        ({"size": "0"}, "error: size must be a whole number"),
        ({"detector": "haar"}, "error: Unknown face detector 'haar'"),
        ({"max_detection_side": "16"}, "error: max_detection_side must be a whole number"),
        ({"max_detection_side": "large"}, "error: --max-detection-side must be"),
    ],
)
def test_prepare_task_error_exits(tasks_module, tmp_path, options, message):
    (tmp_path / "photos").mkdir()
    arguments = {"input": str(tmp_path / "photos"), "output": str(tmp_path / "crops"), **options}
    if options.get("input"):
        arguments["input"] = str(tmp_path / options["input"])
    with pytest.raises(invoke.Exit) as raised:
        tasks_module.prepare(invoke.Context(), **arguments)
    assert raised.value.code == 2
    assert raised.value.message.startswith(message)
