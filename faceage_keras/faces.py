"""Face detection and eye alignment for raw photographs.

A `FaceDetector` finds faces in an RGB image and returns a `Detection` per
face: its box, score and five landmarks. `get_detector(name)` builds one by
name; `register_detector` adds another implementation. The built-in "mtcnn"
wraps `facenet_pytorch.MTCNN`, whose weights ship inside that package.

`find_faces` aligns every detected face on its eyes and crops it. With `d` the
distance between the two eye landmarks (the inter-ocular distance) in image
pixels, the steps are:

1. Rotate about the midpoint of the eyes so that the eyes are level.
2. Place the face box: a square of side `FACE_SIDE_PER_EYE_DISTANCE * d`,
   centred horizontally on the eye midpoint, with its centre
   `FACE_CENTRE_BELOW_EYES * d` below it. The two constants are the medians
   of MTCNN's boxes on 147 UTKFace crops: the side (geometric mean of box
   width and height) is 2.38 d and the centre is 0.39 d below the eyes
   (experiments/face_detection/box_constants.py).
3. Grow the face box by `margin` times its side on each of the four sides,
   so the crop's side is `(1 + 2 * margin)` face sides. `margin=0.4` gives a
   crop 1.8 face sides wide. `margin=0` crops the face box itself.
4. Resample the crop to `size` x `size` pixels.

So the eyes always land on the same pixels of the crop (see `eye_targets`):
with `margin=0.4` the inter-ocular distance is 23% of the crop's side. The
UTKFace crops themselves have the eyes 0.39 of the side apart, which is about
`margin=0.03` here.
"""

import abc
import dataclasses
import math
from collections.abc import Callable

import numpy as np
from PIL import Image

from faceage_keras.images import to_rgb

FACE_SIDE_PER_EYE_DISTANCE = 2.4
FACE_CENTRE_BELOW_EYES = 0.4
DEFAULT_DETECTOR = "mtcnn"
DEFAULT_MIN_SCORE = 0.9
FACENET_INSTALL = "pip install --no-deps facenet-pytorch==2.6.0"

# Landmark rows of `Detection.landmarks`. "Left" is the left side of the image
# for an upright face, which is the person's right.
LEFT_EYE, RIGHT_EYE, NOSE, MOUTH_LEFT, MOUTH_RIGHT = range(5)


class DetectorUnavailableError(ImportError):
    """A face detector whose package is not installed."""


class FaceDetectionError(ValueError):
    """An unknown detector name or an invalid detection or alignment option."""


@dataclasses.dataclass(frozen=True, eq=False)
class Detection:
    """One face found by a detector, in pixels of the image it was given.

    Attributes:
        box: tuple of 4 floats. `(x0, y0, x1, y1)`, left, top, right, bottom.
            It may reach past the image's edges.
        score: float. The detector's confidence, 0-1.
        landmarks: float array of shape (5, 2). `(x, y)` of the left eye, right
            eye, nose tip, left and right mouth corner.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class AlignedFace:
    """A detected face and its aligned crop.

    Attributes:
        index: int. Position among the kept faces of the image, 0 first, in
            left-to-right order of the box centres.
        box, score, landmarks: as in `Detection`, in pixels of the image.
        crop: PIL image. The aligned `size` x `size` RGB crop.
        crop_matrix: float array of shape (2, 3). The affine map from image
            pixels to crop pixels: `crop_xy = crop_matrix @ (x, y, 1)`.
    """

    index: int
    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray
    crop: Image.Image
    crop_matrix: np.ndarray


class FaceDetector(abc.ABC):
    """Finds faces in an image; subclasses wrap one detection library each."""

    name = "detector"

    @abc.abstractmethod
    def detect(self, image):
        """Return a list of `Detection`s for an RGB image (uint8 array of shape (H, W, 3))."""


def check_rgb_array(image):
    """Return `image` as a C-contiguous uint8 array of shape (H, W, 3), or raise `FaceDetectionError`."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise FaceDetectionError(
            f"A detector needs an RGB image as a uint8 array of shape (H, W, 3). "
            f"Received dtype {array.dtype} and shape {array.shape}. Convert it with faceage_keras.images.to_rgb."
        )
    return np.ascontiguousarray(array)


def _import_mtcnn():
    try:
        from facenet_pytorch import MTCNN
    except ImportError as error:
        raise DetectorUnavailableError(
            f"The mtcnn face detector needs the package facenet-pytorch, which failed to import ({error}). "
            f"Install it with: {FACENET_INSTALL} (without dependencies, because its metadata pins torch<2.3)."
        ) from error
    return MTCNN


class MTCNNDetector(FaceDetector):
    """The MTCNN detector of facenet-pytorch, with its bundled P-, R- and O-net weights.

    Args:
        min_face_size: int. Smallest face to search for, in pixels.
        thresholds: 3 floats. Score thresholds of MTCNN's three stages.
        device: str. Torch device, e.g. "cpu" or "cuda".
        border_padding: float. Black border added on every side before
            detection, as a fraction of the image's longer side.
    """

    name = "mtcnn"

    def __init__(self, min_face_size=20, thresholds=(0.6, 0.7, 0.7), device="cpu", border_padding=0.25):
        if min_face_size < 12:
            raise FaceDetectionError(f"min_face_size must be at least 12 pixels (MTCNN's input). Received: {min_face_size}")
        if border_padding < 0:
            raise FaceDetectionError(f"border_padding must be 0 or more. Received: {border_padding}")
        mtcnn_class = _import_mtcnn()
        self.min_face_size = int(min_face_size)
        self.border_padding = float(border_padding)
        self._mtcnn = mtcnn_class(
            keep_all=True,
            select_largest=False,
            min_face_size=self.min_face_size,
            thresholds=list(thresholds),
            device=device,
        )

    def detect(self, image):
        image = check_rgb_array(image)
        height, width = image.shape[:2]

        # NOTE: facenet-pytorch 2.6.0 resizes only the part of a candidate box
        # that lies inside the image for its second and third stage, so faces
        # that touch the border get boxes and landmarks off by up to half the
        # inter-ocular distance. A black border, as in the original MTCNN,
        # avoids that. On 60 UTKFace crops, 0.25 of the longer side brought the
        # median eye error from 0.27 to 0.02 inter-ocular distances
        # (experiments/face_detection/box_constants.py).
        padding = math.ceil(self.border_padding * max(height, width))
        if padding:
            image = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
        if min(image.shape[:2]) < self.min_face_size:
            return []

        boxes, scores, points = self._mtcnn.detect(image, landmarks=True)
        if boxes is None:
            return []
        detections = []
        for box, score, landmarks in zip(boxes, scores, points):
            box = np.asarray(box, dtype="float64") - padding
            detections.append(
                Detection(
                    box=tuple(float(value) for value in box),
                    score=float(score),
                    landmarks=np.asarray(landmarks, dtype="float64") - padding,
                )
            )
        return detections


_DETECTORS: dict[str, Callable[..., FaceDetector]] = {"mtcnn": MTCNNDetector}


def register_detector(name, factory):
    """Make `get_detector(name, **options)` return `factory(**options)`."""
    _DETECTORS[name.strip().lower()] = factory


def detector_names():
    """Return the names `get_detector` accepts, sorted."""
    return sorted(_DETECTORS)


def get_detector(name=DEFAULT_DETECTOR, **options):
    """Build the face detector registered under `name` (case-insensitive) with `options`.

    Raises:
        FaceDetectionError: no detector has that name.
        DetectorUnavailableError: the detector's package is not installed.
    """
    key = str(name).strip().lower()
    if key not in _DETECTORS:
        raise FaceDetectionError(f"Unknown face detector {name!r}. Available: {', '.join(detector_names())}.")
    return _DETECTORS[key](**options)


def check_face_options(size=224, margin=0.4, min_score=DEFAULT_MIN_SCORE, max_detection_side=None):
    """Raise `FaceDetectionError` unless the options of `find_faces` are valid."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise FaceDetectionError(f"size must be a whole number of pixels, 1 or more. Received: {size!r}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin <= -0.5:
        raise FaceDetectionError(
            f"margin must be a number above -0.5 (a fraction of the face box added on each side). Received: {margin!r}"
        )
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not 0 <= min_score <= 1:
        raise FaceDetectionError(f"min_score must be a number from 0 to 1. Received: {min_score!r}")
    if max_detection_side is not None and (
        isinstance(max_detection_side, bool) or not isinstance(max_detection_side, (int, np.integer)) or max_detection_side < 32
    ):
        raise FaceDetectionError(
            f"max_detection_side must be a whole number of pixels, 32 or more, or None. Received: {max_detection_side!r}"
        )


def _crop_side_per_eye_distance(margin):
    return (1 + 2 * margin) * FACE_SIDE_PER_EYE_DISTANCE


def eye_targets(size=224, margin=0.4):
    """Return the crop pixels `(left_eye_xy, right_eye_xy)` where alignment puts the eyes."""
    check_face_options(size, margin)
    eye_distance = size / _crop_side_per_eye_distance(margin)
    centre = size / 2
    eye_y = centre - FACE_CENTRE_BELOW_EYES * eye_distance
    return (centre - eye_distance / 2, eye_y), (centre + eye_distance / 2, eye_y)


def alignment_matrix(landmarks, size=224, margin=0.4):
    """Return the (2, 3) affine map from image pixels to the aligned crop of a face.

    The map is a rotation about the eye midpoint, a uniform scale and a shift
    that send the two eyes of `landmarks` to `eye_targets(size, margin)`.

    Raises:
        FaceDetectionError: the two eye landmarks coincide.
    """
    check_face_options(size, margin)
    landmarks = np.asarray(landmarks, dtype="float64")
    left_eye, right_eye = landmarks[LEFT_EYE], landmarks[RIGHT_EYE]
    eye_vector = right_eye - left_eye
    eye_distance = float(np.hypot(*eye_vector))
    if eye_distance < 1e-6:
        raise FaceDetectionError(f"The eye landmarks coincide at {tuple(left_eye)}; the face cannot be aligned.")

    scale = size / (_crop_side_per_eye_distance(margin) * eye_distance)
    cos, sin = eye_vector / eye_distance
    rotation = scale * np.array([[cos, sin], [-sin, cos]])
    target_left, target_right = eye_targets(size, margin)
    target_midpoint = (np.asarray(target_left) + np.asarray(target_right)) / 2
    shift = target_midpoint - rotation @ ((left_eye + right_eye) / 2)
    return np.column_stack([rotation, shift])


def _invert_affine(matrix):
    linear_inverse = np.linalg.inv(matrix[:, :2])
    return np.column_stack([linear_inverse, -linear_inverse @ matrix[:, 2]])


def warp_crop(image, matrix, size):
    """Resample the `size` x `size` crop that the affine `matrix` (image -> crop pixels) selects from a PIL image.

    Parts of the crop outside the image are black. When the crop shrinks the
    image by 2x or more, the image region is first reduced by box averaging
    to leave less than 2x for the bicubic resampling, which does not
    low-pass filter by itself.
    """
    to_image = _invert_affine(np.asarray(matrix, dtype="float64"))
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype="float64")
    corners_in_image = corners @ to_image.T
    x0, y0 = np.floor(corners_in_image.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(corners_in_image.max(axis=0)).astype(int) + 2
    region = image.crop((int(x0), int(y0), int(x1), int(y1)))

    image_pixels_per_crop_pixel = math.sqrt(abs(np.linalg.det(to_image[:, :2])))
    factor = max(1, int(image_pixels_per_crop_pixel))
    if factor > 1:
        region = region.reduce(factor)

    # Image.transform wants the map from output pixels to input pixels, here
    # from crop pixels into the (reduced) region.
    to_region = to_image.copy()
    to_region[:, 2] -= (x0, y0)
    to_region /= factor
    return region.transform((size, size), Image.Transform.AFFINE, tuple(to_region.ravel()), Image.Resampling.BICUBIC)


def _as_rgb_image(image):
    if isinstance(image, Image.Image):
        return to_rgb(image)
    return Image.fromarray(check_rgb_array(image), mode="RGB")


def _detect(detector, image, max_detection_side):
    """Run `detector` on a PIL image, shrunk to `max_detection_side` first if it is larger."""
    if max_detection_side is None or max(image.size) <= max_detection_side:
        return detector.detect(np.asarray(image))

    factor = max(image.size) / max_detection_side
    small_size = (max(1, round(image.width / factor)), max(1, round(image.height / factor)))
    small = image.resize(small_size, Image.Resampling.BILINEAR)
    to_full = np.array([image.width / small_size[0], image.height / small_size[1]])
    detections = []
    for detection in detector.detect(np.asarray(small)):
        corners = np.asarray(detection.box, dtype="float64").reshape(2, 2) * to_full
        detections.append(
            Detection(
                box=tuple(float(value) for value in corners.ravel()),
                score=detection.score,
                landmarks=np.asarray(detection.landmarks) * to_full,
            )
        )
    return detections


def find_faces(
    image,
    detector=DEFAULT_DETECTOR,
    size=224,
    margin=0.4,
    largest_only=False,
    min_score=DEFAULT_MIN_SCORE,
    max_detection_side=None,
):
    """Detect the faces of one image and return their aligned crops.

    Args:
        image: PIL image of any mode (EXIF orientation is applied and it is
            converted to RGB) or a uint8 RGB array of shape (H, W, 3).
        detector: `FaceDetector`, or the name of one for `get_detector`. Pass
            a built detector when calling this for many images, because
            building one loads its weights.
        size: int. Side of the square crops in pixels.
        margin: float. Fraction of the face box's side added on each side of
            it before cropping (see the module docstring).
        largest_only: bool. Keep only the face with the largest box.
        min_score: float. Drop detections with a lower score.
        max_detection_side: int or None. Detect on a copy of the image
            shrunk to this longer side in pixels, if it is larger, and crop
            from the full image. Detection time grows with the pixel count,
            so this speeds up large scans, but faces smaller than the
            detector's minimum in the shrunk copy are missed.

    Returns:
        A list of `AlignedFace`, left to right, indexed from 0. It is empty
        when no face scores at least `min_score`.
    """
    check_face_options(size, margin, min_score, max_detection_side)
    if isinstance(detector, str):
        detector = get_detector(detector)

    rgb = _as_rgb_image(image)
    detections = [d for d in _detect(detector, rgb, max_detection_side) if d.score >= min_score]
    if largest_only and detections:
        detections = [max(detections, key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))]
    detections.sort(key=lambda d: ((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2))

    faces = []
    for index, detection in enumerate(detections):
        matrix = alignment_matrix(detection.landmarks, size, margin)
        faces.append(
            AlignedFace(
                index=index,
                box=detection.box,
                score=detection.score,
                landmarks=detection.landmarks,
                crop=warp_crop(rgb, matrix, size),
                crop_matrix=matrix,
            )
        )
    return faces
