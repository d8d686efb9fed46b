"""Tests for face detection and alignment: geometry, the MTCNN detector and pasted real faces.

The pasted-face check puts UTKFace crops at known positions, scales and
rotations onto larger canvases and measures recall, box error and the eye
error after alignment. Run it with `-s` to see the numbers. The environment
variable FACEAGE_PASTED_FACES sets the number of faces (default 36, three per
canvas).

NOTE: The reference box and eyes of a pasted face are MTCNN's own on the
unrotated crop, mapped through the paste. So the box and eye errors measure
how much scale, rotation and background move MTCNN's output. They do not
measure its error against hand-marked eyes.
"""

import math
import os
import socket
import sys
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw
from skimage import data as skimage_data

from faceage_keras import faces

PASTED_FACES_ENV_VAR = "FACEAGE_PASTED_FACES"
FACES_PER_CANVAS = 3
CANVAS_SIZE = (660, 330)
CROP_SIZE = 112
MARGIN = 0.4
UTKFACE_SIDE = 200
SCALE_RANGE = (0.55, 0.85)
MAX_ROTATION_DEGREES = 15.0
MIN_IOU = 0.5
PASTE_SEED = 7


# Geometry without a detector.


def _eye_landmarks(left_eye, right_eye):
    landmarks = np.zeros((5, 2))
    landmarks[faces.LEFT_EYE] = left_eye
    landmarks[faces.RIGHT_EYE] = right_eye
    return landmarks


def _apply(matrix, points):
    points = np.atleast_2d(np.asarray(points, dtype="float64"))
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_alignment_matrix_sends_eyes_to_targets():
    landmarks = _eye_landmarks((310.0, 420.0), (372.0, 396.0))
    matrix = faces.alignment_matrix(landmarks, size=160, margin=0.25)
    mapped = _apply(matrix, landmarks[[faces.LEFT_EYE, faces.RIGHT_EYE]])
    np.testing.assert_allclose(mapped, np.array(faces.eye_targets(160, 0.25)), atol=1e-9)


def test_eye_targets_level_and_centred():
    (left_x, left_y), (right_x, right_y) = faces.eye_targets(224, 0.4)
    assert left_y == right_y
    assert (left_x + right_x) / 2 == pytest.approx(112)


def test_eye_distance_follows_margin():
    for margin in (0.0, 0.4, 1.0):
        (left_x, _), (right_x, _) = faces.eye_targets(240, margin)
        expected = 240 / ((1 + 2 * margin) * faces.FACE_SIDE_PER_EYE_DISTANCE)
        assert right_x - left_x == pytest.approx(expected)


def test_alignment_rejects_coinciding_eyes():
    with pytest.raises(faces.FaceDetectionError, match="coincide"):
        faces.alignment_matrix(_eye_landmarks((5.0, 5.0), (5.0, 5.0)))


@pytest.mark.parametrize("size, margin", [(0, 0.4), (64.5, 0.4), (True, 0.4), (64, -0.5), (64, float("nan"))])
def test_crop_options_rejected(size, margin):
    with pytest.raises(faces.FaceDetectionError):
        faces.check_face_options(size, margin)


@pytest.mark.parametrize("scale", [0.5, 1.0, 6.0])
def test_warp_crop_maps_dot_by_matrix(scale):
    """A bright dot in a rotated, scaled image lands on the crop pixel the matrix predicts."""
    image = Image.new("RGB", (900, 700), (0, 0, 0))
    dot = np.array([412.0, 305.0])
    radius = 3 * scale
    ImageDraw.Draw(image).ellipse([*(dot - radius), *(dot + radius)], fill=(255, 255, 255))
    eye_distance = 40.0 * scale / 2
    angle = math.radians(12)
    direction = np.array([math.cos(angle), math.sin(angle)])
    landmarks = _eye_landmarks(dot - 10 * direction, dot - 10 * direction + eye_distance * direction)

    matrix = faces.alignment_matrix(landmarks, size=96, margin=0.4)
    crop = np.asarray(faces.warp_crop(image, matrix, 96).convert("L"), dtype="float64")
    rows, cols = np.nonzero(crop > 0.5 * crop.max())
    weights = crop[rows, cols]
    found = np.array([np.average(cols, weights=weights), np.average(rows, weights=weights)]) + 0.5
    expected = _apply(matrix, dot)[0]
    assert np.linalg.norm(found - expected) < 1.0


def test_warp_crop_outside_image_is_black():
    image = Image.new("RGB", (100, 100), (200, 200, 200))
    landmarks = _eye_landmarks((2.0, 50.0), (22.0, 50.0))
    crop = np.asarray(faces.warp_crop(image, faces.alignment_matrix(landmarks, 64, 0.4), 64))
    assert crop[10:50, :5].max() == 0
    assert crop[10:50, -5:].min() == 200


# Registry and installation.


def test_get_detector_unknown_name():
    with pytest.raises(faces.FaceDetectionError, match="Available: mtcnn"):
        faces.get_detector("haar")


def test_register_detector_adds_a_name(monkeypatch):
    monkeypatch.setattr(faces, "_DETECTORS", dict(faces._DETECTORS))

    class NoFaces(faces.FaceDetector):
        name = "none"

        def detect(self, image):
            return []

    faces.register_detector("None", NoFaces)
    assert isinstance(faces.get_detector("none"), NoFaces)


def test_missing_facenet_names_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    with pytest.raises(faces.DetectorUnavailableError, match=r"pip install --no-deps facenet-pytorch==2\.6\.0"):
        faces.get_detector("mtcnn")


def test_mtcnn_needs_no_network(monkeypatch):
    """Building MTCNN and detecting must not open a connection: its weights ship with the package."""

    def reject_connection(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", reject_connection)
    monkeypatch.setattr(socket, "create_connection", reject_connection)
    detector = faces.MTCNNDetector()
    assert len(detector.detect(skimage_data.astronaut())) == 1


def test_detect_rejects_float_image(mtcnn):
    with pytest.raises(faces.FaceDetectionError, match="uint8"):
        mtcnn.detect(np.zeros((64, 64, 3), dtype="float32"))


def test_detect_tiny_image_finds_nothing(mtcnn):
    assert mtcnn.detect(np.zeros((5, 7, 3), dtype="uint8")) == []


# Real photographs.


@pytest.fixture(scope="module")
def mtcnn():
    return faces.get_detector("mtcnn")


def test_astronaut_has_one_face(mtcnn):
    assert len(faces.find_faces(skimage_data.astronaut(), mtcnn)) == 1


def test_astronaut_crop_has_requested_size(mtcnn):
    (face,) = faces.find_faces(skimage_data.astronaut(), mtcnn, size=80)
    assert face.crop.size == (80, 80)


def test_astronaut_eyes_land_on_targets(mtcnn):
    (face,) = faces.find_faces(skimage_data.astronaut(), mtcnn, size=224, margin=0.4)
    eyes = _apply(face.crop_matrix, face.landmarks[[faces.LEFT_EYE, faces.RIGHT_EYE]])
    np.testing.assert_allclose(eyes, np.array(faces.eye_targets(224, 0.4)), atol=1e-6)


@pytest.mark.parametrize("photo", ["coffee", "rocket"])
def test_photo_without_people_has_no_face(mtcnn, photo):
    assert faces.find_faces(getattr(skimage_data, photo)(), mtcnn) == []


def test_find_faces_orders_left_to_right(mtcnn):
    astronaut = Image.fromarray(skimage_data.astronaut()).crop((120, 20, 330, 240))
    canvas = Image.new("RGB", (700, 300), (90, 90, 90))
    canvas.paste(astronaut.resize((150, 157)), (480, 60))
    canvas.paste(astronaut, (20, 40))
    found = faces.find_faces(canvas, mtcnn)
    centres = [(face.box[0] + face.box[2]) / 2 for face in found]
    assert [face.index for face in found] == [0, 1]
    assert centres[0] < centres[1]


def test_largest_only_keeps_largest(mtcnn):
    astronaut = Image.fromarray(skimage_data.astronaut()).crop((120, 20, 330, 240))
    canvas = Image.new("RGB", (700, 300), (90, 90, 90))
    canvas.paste(astronaut.resize((150, 157)), (20, 60))
    canvas.paste(astronaut, (400, 40))
    (face,) = faces.find_faces(canvas, mtcnn, largest_only=True)
    assert face.box[0] > 350


def test_max_detection_side_keeps_full_scale_boxes(mtcnn):
    large = Image.fromarray(skimage_data.astronaut()).resize((1024, 1024), Image.Resampling.BICUBIC)
    (full,) = faces.find_faces(large, mtcnn)
    (shrunk,) = faces.find_faces(large, mtcnn, max_detection_side=512)
    assert np.abs(np.subtract(full.box, shrunk.box)).max() < 12
    assert np.abs(full.landmarks - shrunk.landmarks).max() < 6


def test_max_detection_side_rejects_tiny_value():
    with pytest.raises(faces.FaceDetectionError, match="max_detection_side"):
        faces.check_face_options(max_detection_side=8)


# Pasted UTKFace crops.


def _paste_matrix(scale, degrees, centre):
    """Return the (2, 3) map from UTKFace crop pixels to canvas pixels."""
    angle = math.radians(degrees)
    linear = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    shift = np.asarray(centre) - linear @ np.array([UTKFACE_SIDE / 2, UTKFACE_SIDE / 2])
    return np.column_stack([linear, shift])


def _paste(canvas, face, matrix):
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    warped = face.transform(canvas.size, Image.Transform.AFFINE, tuple(inverse.ravel()), Image.Resampling.BICUBIC)
    mask = Image.new("L", face.size, 255).transform(canvas.size, Image.Transform.AFFINE, tuple(inverse.ravel()))
    canvas.paste(warped, mask=mask)


def _background(rng, index):
    width, height = CANVAS_SIZE
    if index % 2 == 0:
        return Image.new("RGB", CANVAS_SIZE, tuple(int(value) for value in rng.integers(40, 220, size=3)))
    noise = rng.normal(128, 45, size=(height, width, 3)).clip(0, 255).astype("uint8")
    return Image.fromarray(noise, mode="RGB")


def _box_iou(first, second):
    width = max(0.0, min(first[2], second[2]) - max(first[0], second[0]))
    height = max(0.0, min(first[3], second[3]) - max(first[1], second[1]))
    intersection = width * height
    area = (first[2] - first[0]) * (first[3] - first[1]) + (second[2] - second[0]) * (second[3] - second[1])
    return intersection / (area - intersection)


def _inside_square(point, matrix):
    """Whether a canvas point lies inside the pasted UTKFace square."""
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    x, y = _apply(inverse, point)[0]
    return 0 <= x <= UTKFACE_SIDE and 0 <= y <= UTKFACE_SIDE


@pytest.fixture(scope="module")
def pasted_faces_result(utkface_dir, mtcnn):
    """Detect and align pasted UTKFace crops; return per-face measurements and the run's totals."""
    count = int(os.environ.get(PASTED_FACES_ENV_VAR, "36"))
    labels = pd.read_csv(utkface_dir / "labels.csv", dtype={"image_name": str})
    rng = np.random.default_rng(PASTE_SEED)
    names = labels["image_name"].sample(n=count, random_state=PASTE_SEED).tolist()

    # Ground truth: MTCNN on the unrotated crop, mapped through the paste.
    truths = []
    for name in names:
        crop = Image.open(utkface_dir / "images" / name).convert("RGB")
        detections = mtcnn.detect(np.asarray(crop))
        if detections:
            truths.append((crop, max(detections, key=lambda d: d.score)))

    cell_width = CANVAS_SIZE[0] / FACES_PER_CANVAS
    rows, detection_seconds, canvases, false_positives = [], 0.0, 0, 0
    for start in range(0, len(truths), FACES_PER_CANVAS):
        canvas = _background(rng, canvases)
        pasted = []
        for slot, (crop, truth) in enumerate(truths[start : start + FACES_PER_CANVAS]):
            scale = rng.uniform(*SCALE_RANGE)
            degrees = rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES)
            reach = scale * UTKFACE_SIDE * (abs(math.cos(math.radians(degrees))) + abs(math.sin(math.radians(degrees)))) / 2
            centre = (
                slot * cell_width + rng.uniform(reach, cell_width - reach),
                rng.uniform(reach, CANVAS_SIZE[1] - reach),
            )
            matrix = _paste_matrix(scale, degrees, centre)
            _paste(canvas, crop, matrix)
            pasted.append((truth, matrix, scale, degrees))

        started = time.perf_counter()
        found = faces.find_faces(canvas, mtcnn, size=CROP_SIZE, margin=MARGIN)
        detection_seconds += time.perf_counter() - started
        canvases += 1

        used = set()
        for truth, matrix, scale, degrees in pasted:
            box_centre = _apply(matrix, [(truth.box[0] + truth.box[2]) / 2, (truth.box[1] + truth.box[3]) / 2])[0]
            half = scale * np.array([truth.box[2] - truth.box[0], truth.box[3] - truth.box[1]]) / 2
            true_box = (*(box_centre - half), *(box_centre + half))
            candidates = [
                (index, face)
                for index, face in enumerate(found)
                if _inside_square([(face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2], matrix)
            ]
            row = {"scale": scale, "degrees": degrees, "iou": 0.0, "centre_error": np.nan, "eye_error": np.nan}
            if candidates:
                index, face = max(candidates, key=lambda item: _box_iou(item[1].box, true_box))
                used.add(index)
                true_eyes = _apply(matrix, truth.landmarks[[faces.LEFT_EYE, faces.RIGHT_EYE]])
                eyes_in_crop = _apply(face.crop_matrix, true_eyes)
                targets = np.array(faces.eye_targets(CROP_SIZE, MARGIN))
                target_distance = targets[1, 0] - targets[0, 0]
                found_centre = np.array([(face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2])
                row.update(
                    iou=_box_iou(face.box, true_box),
                    centre_error=np.linalg.norm(found_centre - box_centre) / math.sqrt(4 * half[0] * half[1]),
                    eye_error=np.linalg.norm(eyes_in_crop - targets, axis=1).mean() / target_distance,
                )
            rows.append(row)
        false_positives += len(found) - len(used)

    measurements = pd.DataFrame(rows)
    detected = measurements["iou"] >= MIN_IOU
    totals = {
        "faces": len(measurements),
        "canvases": canvases,
        "recall": float(detected.mean()),
        "mean_iou": float(measurements.loc[detected, "iou"].mean()),
        "mean_centre_error": float(measurements.loc[detected, "centre_error"].mean()),
        "mean_eye_error": float(measurements.loc[detected, "eye_error"].mean()),
        "p90_eye_error": float(measurements.loc[detected, "eye_error"].quantile(0.9)),
        "false_positives": false_positives,
        "canvases_per_second": canvases / detection_seconds,
        "ground_truth_misses": count - len(truths),
    }
    print(
        f"\npasted faces: {totals['faces']} faces on {canvases} canvases of {CANVAS_SIZE[0]}x{CANVAS_SIZE[1]} px, "
        f"scale {SCALE_RANGE[0]}-{SCALE_RANGE[1]} of {UTKFACE_SIDE} px, rotation +-{MAX_ROTATION_DEGREES:.0f} deg; "
        f"recall (IoU >= {MIN_IOU}) {totals['recall']:.3f}, mean IoU {totals['mean_iou']:.3f}, "
        f"mean box-centre error {totals['mean_centre_error']:.3f} box sides, "
        f"mean eye error {totals['mean_eye_error']:.3f} (90th percentile {totals['p90_eye_error']:.3f}) "
        f"inter-ocular distances, false positives {false_positives}, "
        f"{totals['canvases_per_second']:.2f} canvases/s, crops without a ground-truth face {totals['ground_truth_misses']}"
    )
    return measurements, totals


def test_pasted_faces_recall(pasted_faces_result):
    _, totals = pasted_faces_result
    assert totals["recall"] >= 0.9


def test_pasted_faces_box_iou(pasted_faces_result):
    _, totals = pasted_faces_result
    assert totals["mean_iou"] >= 0.7


def test_pasted_faces_eye_error(pasted_faces_result):
    _, totals = pasted_faces_result
    assert totals["mean_eye_error"] <= 0.1


def test_pasted_faces_few_false_positives(pasted_faces_result):
    _, totals = pasted_faces_result
    assert totals["false_positives"] <= totals["canvases"] // 4
