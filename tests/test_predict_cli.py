"""`invoke predict` and the batch prediction behind it, on a tiny M1 run."""

import dataclasses
import importlib.util
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pytest
from invoke import Context, Exit
from PIL import Image

from faceage_keras.photos import CSV_COLUMNS, DETECTOR_CROP_SIZE, DETECTOR_MARGIN, PhotoInputError, predict_photos
from faceage_keras.predict import Predictor
from faceage_keras.trained_run import read_split_images

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_FACES = 5


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run("m1")


@pytest.fixture(scope="module")
def predictor(run_dir):
    return Predictor.from_run(run_dir)


@pytest.fixture(scope="module")
def face_paths(run_dir):
    return [pathlib.Path(path) for path in read_split_images(run_dir, "test")["path"][:NUM_FACES]]


@pytest.fixture
def photo_folder(tmp_path, face_paths):
    """Real face crops (links), a text file and a truncated JPEG, one face in a subfolder."""
    folder = tmp_path / "photos"
    (folder / "box").mkdir(parents=True)
    for index, path in enumerate(face_paths):
        target = folder / ("box" if index == 0 else "") / path.name
        target.symlink_to(path)
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "broken.jpg").write_bytes(face_paths[0].read_bytes()[:300])
    return folder


def _invoke_predict(args, cwd, env=None):
    command = [sys.executable, "-m", "invoke", "--search-root", str(REPO), "predict", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, env=env or dict(os.environ))


def test_cli_cropped_folder(run_dir, predictor, photo_folder, face_paths, tmp_path):
    output = tmp_path / "out" / "predictions.csv"
    arguments = ["--run", str(run_dir), "--input", str(photo_folder), "--output", str(output), "--cropped"]

    result = _invoke_predict(arguments, tmp_path)

    assert result.returncode == 0, f"invoke predict failed:\n{result.stderr[-3000:]}"
    frame = pd.read_csv(output)
    assert list(frame.columns) == list(CSV_COLUMNS), "unexpected CSV columns"
    assert len(frame) == NUM_FACES, f"expected {NUM_FACES} rows, got {len(frame)}"
    assert f"box/{face_paths[0].name}" in set(frame["source"]), "the face in a subfolder is missing"
    assert (frame["face_index"] == 0).all(), "a cropped face has a face index other than 0"
    assert (frame["box_x1"] == 200).all(), "the box of a cropped face is not the whole 200 px image"
    assert (frame["model"] == "m1").all(), "the model column does not name m1"
    assert "broken.jpg" in result.stdout, "the truncated JPEG is not reported"
    assert "notes.txt" in result.stdout, "the text file is not reported"
    assert "2 file(s) skipped" in result.stdout, "the summary does not count the skipped files"

    frame = frame.set_index("source")
    by_name = {path.name: path for path in face_paths}
    rows = [frame.loc[source] for source in frame.index]
    paths = [by_name[pathlib.Path(source).name] for source in frame.index]
    images = [Image.open(path).convert("RGB") for path in paths]
    mixed = [image if index % 2 else np.asarray(image) for index, image in enumerate(images)]
    predictions = {
        "path": [predictor.predict(path) for path in paths],
        "PIL image": [predictor.predict(image) for image in images],
        "numpy array": [predictor.predict(np.asarray(image)) for image in images],
        "list of paths": list(predictor.predict(paths).itertuples()),
        "list of images and arrays": list(predictor.predict(mixed).itertuples()),
        "stacked array": list(predictor.predict(np.stack([np.asarray(image) for image in images])).itertuples()),
    }
    for kind, records in predictions.items():
        for row, record in zip(rows, records):
            assert row["age"] == pytest.approx(record.age, abs=0.006), f"age of a {kind} differs from the CLI"
            assert row["age_low"] == pytest.approx(record.age_low, abs=0.006), f"age_low of a {kind} differs"
            assert row["age_high"] == pytest.approx(record.age_high, abs=0.006), f"age_high of a {kind} differs"
            assert row["age_group"] == record.age_group, f"age group of a {kind} differs from the CLI"
            assert row["gender"] == record.gender, f"gender of a {kind} differs from the CLI"
            assert row["gender_probability"] == pytest.approx(record.gender_probability, abs=6e-5), (
                f"gender probability of a {kind} differs from the CLI"
            )


def _tasks_module():
    spec = importlib.util.spec_from_file_location("project_tasks", REPO / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "options, message",
    [
        ({"input": "photos", "output": "x.csv"}, "--run is required"),
        ({"run": "nowhere", "input": "photos", "output": "x.csv"}, "Run folder nowhere not found"),
        ({"run": "nowhere", "input": "photos", "output": "x.csv", "batch_size": "many"}, "--batch-size must be"),
    ],
    ids=["no-run", "missing-run", "bad-batch-size"],
)
def test_task_errors_exit_2(options, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tasks = _tasks_module()

    with pytest.raises(Exit) as caught:
        tasks.predict(Context(), **options)

    assert caught.value.code == 2, f"expected exit code 2, got {caught.value.code}"
    assert str(caught.value.message).startswith("error: "), "the message does not start with 'error: '"
    assert message in str(caught.value.message), f"the message does not say {message!r}"


@dataclasses.dataclass
class _Face:
    index: int
    box: tuple
    score: float
    landmarks: np.ndarray
    crop: Image.Image


class _FakeDetector:
    """Tells photos apart by width: 400 px contains two faces side by side, 300 px none, 250 px fails."""

    def find(self, image):
        if image.width == 250:
            raise RuntimeError("detector crashed")
        if image.width == 300:
            return []
        boxes = [(0, 0, 200, 200), (200, 0, 400, 200)]
        return [_Face(index, box, 0.99, np.zeros((5, 2)), image.crop(box)) for index, box in enumerate(boxes)]


@pytest.fixture
def fake_faces_module(monkeypatch):
    """Install a stand-in `faceage_keras.faces` that follows its interface."""
    module = types.ModuleType("faceage_keras.faces")
    module.calls = []

    def find_faces(image, detector="mtcnn", size=224, margin=0.4, largest_only=False, min_score=0.9):
        module.calls.append({"size": size, "margin": margin})
        return detector.find(image)

    module.get_detector = lambda name="mtcnn": _FakeDetector()
    module.find_faces = find_faces
    monkeypatch.setitem(sys.modules, "faceage_keras.faces", module)
    return module


def _two_face_photo(face_paths, path):
    photo = Image.new("RGB", (400, 200))
    for offset, face_path in zip((0, 200), face_paths):
        with Image.open(face_path) as face:
            photo.paste(face.convert("RGB"), (offset, 0))
    photo.save(path, quality=95)
    return path


def test_detection_path(fake_faces_module, predictor, face_paths, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    _two_face_photo(face_paths[:2], folder / "a_pair.png")
    Image.new("RGB", (300, 200), (128, 128, 128)).save(folder / "b_wall.png")
    _two_face_photo(face_paths[2:4], folder / "c_pair.png")

    summary = predict_photos(predictor, folder, tmp_path / "out.csv", progress=False)
    frame = pd.read_csv(tmp_path / "out.csv")

    assert summary.faces == 4, f"expected 4 faces, got {summary.faces}"
    assert summary.photos == 3, f"expected 3 photos, got {summary.photos}"
    assert summary.photos_without_faces == ["b_wall.png"], "the photo without faces is not reported"
    assert list(frame["source"]) == ["a_pair.png"] * 2 + ["c_pair.png"] * 2, "rows do not name their photos"
    assert list(frame["face_index"]) == [0, 1, 0, 1], "face indices are not numbered per photo"
    assert list(frame.loc[1, ["box_x0", "box_y0", "box_x1", "box_y1"]]) == [200, 0, 400, 200], "box not written"
    assert (frame["detection_score"] == 0.99).all(), "detection score not written"
    assert fake_faces_module.calls[0] == {"size": DETECTOR_CROP_SIZE, "margin": DETECTOR_MARGIN}, "crop not as trained"
    expected = predictor.predict(face_paths[1]).age
    assert frame.loc[1, "age"] == pytest.approx(expected, abs=0.006), "the second face was not predicted from its crop"


def test_detection_failure_skips_photo(fake_faces_module, predictor, face_paths, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (250, 250)).save(folder / "a_odd.png")
    _two_face_photo(face_paths[:2], folder / "b_pair.png")

    summary = predict_photos(predictor, folder, tmp_path / "out.csv", progress=False)

    assert summary.faces == 2, "the photo after a detection failure was not predicted"
    assert summary.skipped[0][0] == "a_odd.png", "the failed photo is not reported"
    assert "detector crashed" in summary.skipped[0][1], "the reason of the failure is not reported"


def test_detection_unavailable(monkeypatch, predictor, face_paths, tmp_path):
    monkeypatch.setitem(sys.modules, "faceage_keras.faces", None)

    with pytest.raises(PhotoInputError, match="--cropped"):
        predict_photos(predictor, face_paths[0], tmp_path / "out.csv", progress=False)
    assert not (tmp_path / "out.csv").exists(), "an output was written without detection"


def test_detector_package_missing(fake_faces_module, predictor, face_paths, tmp_path):
    def missing_detector(name="mtcnn"):
        raise ImportError("No module named 'facenet_pytorch'")

    fake_faces_module.get_detector = missing_detector

    with pytest.raises(PhotoInputError, match="facenet_pytorch.*--cropped"):
        predict_photos(predictor, face_paths[0], tmp_path / "out.csv", progress=False)


def test_cli_without_detection(run_dir, face_paths, tmp_path):
    # A facenet_pytorch package that fails to import simulates a machine without it.
    blocker = tmp_path / "blocked" / "facenet_pytorch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError(\"No module named 'facenet_pytorch'\")\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker.parent), os.environ.get("PYTHONPATH", "")])}
    output = tmp_path / "predictions.csv"

    arguments = ["--run", str(run_dir), "--input", str(face_paths[0]), "--output", str(output)]
    result = _invoke_predict(arguments, tmp_path, env=env)

    assert result.returncode == 2, f"expected exit code 2, got {result.returncode}"
    assert "--cropped" in result.stderr, f"the error does not suggest --cropped:\n{result.stderr[-2000:]}"


def test_crash_leaves_no_partial_csv(monkeypatch, predictor, photo_folder, tmp_path):
    output = tmp_path / "predictions.csv"
    output.write_text("previous results\n")
    calls = []

    def fail_second_batch(faces, tta=None):
        calls.append(len(faces))
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return Predictor.predict_faces(predictor, faces, tta=tta)

    monkeypatch.setattr(predictor, "predict_faces", fail_second_batch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        predict_photos(predictor, photo_folder, output, cropped=True, batch_size=2, progress=False)

    assert output.read_text() == "previous results\n", "a crash changed the existing output"
    left_files = sorted(path.name for path in tmp_path.iterdir())
    assert left_files == ["photos", "predictions.csv"], f"a temporary file was left: {left_files}"


def test_missing_input(predictor, tmp_path):
    with pytest.raises(PhotoInputError, match="not found"):
        predict_photos(predictor, tmp_path / "nowhere", tmp_path / "out.csv", cropped=True, progress=False)


def test_real_detector_finds_pasted_faces(predictor, face_paths, tmp_path):
    pytest.importorskip("facenet_pytorch")
    pytest.importorskip("faceage_keras.faces", reason="face detection is not part of this checkout")
    folder = tmp_path / "photos"
    folder.mkdir()
    photo = Image.new("RGB", (900, 400), (90, 90, 90))
    for left, face_path in zip((100, 550), face_paths[:2]):
        with Image.open(face_path) as face:
            photo.paste(face.convert("RGB"), (left, 100))
    photo.save(folder / "pair.jpg", quality=95)
    Image.new("RGB", (300, 300), (120, 120, 120)).save(folder / "wall.png")

    summary = predict_photos(predictor, folder, tmp_path / "out.csv", progress=False)
    frame = pd.read_csv(tmp_path / "out.csv")

    assert summary.photos_without_faces == ["wall.png"], "the plain grey image is not reported as without faces"
    assert list(frame["face_index"]) == [0, 1], f"expected two faces in pair.jpg, got {len(frame)}"
    centres = ((frame["box_x0"] + frame["box_x1"]) / 2).to_numpy()
    assert 100 < centres[0] < 300, f"the first box is centred at x = {centres[0]}, not on the left face"
    assert 550 < centres[1] < 750, f"the second box is centred at x = {centres[1]}, not on the right face"


def test_cli_fails_when_nothing_readable(run_dir, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo\n")

    arguments = ["--run", str(run_dir), "--input", str(notes), "--output", str(tmp_path / "out.csv"), "--cropped"]
    result = _invoke_predict(arguments, tmp_path)

    assert result.returncode == 1, f"expected exit code 1, got {result.returncode}:\n{result.stderr[-2000:]}"
    assert "could be read as an image" in result.stderr
