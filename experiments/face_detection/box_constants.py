"""Measure the face-box constants of faceage_keras.faces and the effect of MTCNN's black border.

    FACEAGE_DATA=/path/to/utkface PYTHONPATH=. python experiments/face_detection/box_constants.py [CROPS]

Part 1 runs MTCNN (with its default border) on CROPS UTKFace crops (default
150) and prints the medians of the face box's side (geometric mean of width and
height) and of its centre's offset below the eye midpoint, both in
inter-ocular distances. These are `FACE_SIDE_PER_EYE_DISTANCE` and
`FACE_CENTRE_BELOW_EYES`.

Part 2 checks the border on the first 60 of those crops. Reference eyes come
from the crop pasted into the middle of a grey canvas three times its size, so
the face is far from any edge. The error of each setting is the mean distance
of its eyes on the plain crop from the reference, in inter-ocular distances.
"""

import os
import pathlib
import sys

import numpy as np
import pandas as pd
import torch
from PIL import Image

from faceage_keras import faces

SEED = 7
BORDER_CROPS = 60


def _best(detections):
    detections = [d for d in detections if d.score >= faces.DEFAULT_MIN_SCORE]
    return max(detections, key=lambda d: d.score) if detections else None


def _eyes(detection):
    return detection.landmarks[[faces.LEFT_EYE, faces.RIGHT_EYE]]


def measure_box_constants(detector, crops):
    sides, offsets = [], []
    for crop in crops:
        detection = _best(detector.detect(np.asarray(crop)))
        if detection is None:
            continue
        left, right = _eyes(detection)
        eye_distance = np.linalg.norm(right - left)
        x0, y0, x1, y1 = detection.box
        sides.append(np.sqrt((x1 - x0) * (y1 - y0)) / eye_distance)
        offsets.append(((y0 + y1) / 2 - (left[1] + right[1]) / 2) / eye_distance)
    print(
        f"box constants over {len(sides)} of {len(crops)} crops with a face: "
        f"median side {np.median(sides):.3f} IOD, median centre below eyes {np.median(offsets):.3f} IOD"
    )


def measure_border(crops):
    reference_detector = faces.MTCNNDetector(border_padding=0.0)
    references = []
    for crop in crops:
        canvas = Image.new("RGB", (3 * crop.width, 3 * crop.height), (128, 128, 128))
        canvas.paste(crop, (crop.width, crop.height))
        detection = _best(reference_detector.detect(np.asarray(canvas)))
        references.append(None if detection is None else _eyes(detection) - (crop.width, crop.height))

    for border_padding in (0.0, 0.25):
        detector = faces.MTCNNDetector(border_padding=border_padding)
        errors = []
        for crop, reference in zip(crops, references):
            detection = _best(detector.detect(np.asarray(crop)))
            if reference is None or detection is None:
                continue
            eye_distance = np.linalg.norm(reference[1] - reference[0])
            errors.append(np.linalg.norm(_eyes(detection) - reference, axis=1).mean() / eye_distance)
        print(
            f"border {border_padding}: eye error on the plain crop vs. the same face mid-canvas, {len(errors)} crops: "
            f"median {np.median(errors):.3f}, mean {np.mean(errors):.3f} IOD"
        )


def main():
    torch.set_num_threads(1)
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 150
    data = pathlib.Path(os.environ["FACEAGE_DATA"])
    names = pd.read_csv(data / "labels.csv", dtype={"image_name": str})["image_name"].sample(n=count, random_state=SEED)
    crops = [Image.open(data / "images" / name).convert("RGB") for name in names]
    measure_box_constants(faces.get_detector("mtcnn"), crops)
    measure_border(crops[:BORDER_CROPS])


if __name__ == "__main__":
    main()
