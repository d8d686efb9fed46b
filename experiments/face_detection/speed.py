"""Time `find_faces` with MTCNN on scikit-image's astronaut photo at a few sizes, one torch thread.

    PYTHONPATH=. python experiments/face_detection/speed.py [REPEATS]

Prints images per second for the 512 x 512 photo and for it resized to
1024 and 2048 px, each with and without the detector's black border, and for
the 2048 px photo detected at 1024 px (`max_detection_side`).
"""

import sys
import time

import torch
from PIL import Image
from skimage import data as skimage_data

from faceage_keras import faces


def time_find_faces(image, detector, repeats, **options):
    """Return the faces found and the images per second of `find_faces`."""
    found = faces.find_faces(image, detector, **options)
    started = time.perf_counter()
    for _ in range(repeats):
        faces.find_faces(image, detector, **options)
    return found, repeats / (time.perf_counter() - started)


def main():
    torch.set_num_threads(1)
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    photo = Image.fromarray(skimage_data.astronaut())
    for border_padding in (0.25, 0.0):
        detector = faces.MTCNNDetector(border_padding=border_padding)
        for side in (512, 1024, 2048):
            image = photo.resize((side, side), Image.Resampling.BICUBIC)
            found, rate = time_find_faces(image, detector, repeats)
            print(f"border {border_padding}: {side} x {side} px, {len(found)} face(s), {rate:.2f} images/s")

    image = photo.resize((2048, 2048), Image.Resampling.BICUBIC)
    found, rate = time_find_faces(image, faces.MTCNNDetector(), repeats, max_detection_side=1024)
    print(f"border 0.25: 2048 x 2048 px detected at 1024 px, {len(found)} face(s), {rate:.2f} images/s")


if __name__ == "__main__":
    main()
