"""Predictions for a photo or a folder of photos, written to a CSV with one row per face.

Without `cropped`, faces are found and aligned by `faceage_keras.faces`;
with it, each image is taken as one face. Files that do not decode as
images, and photos where detection fails, are reported and skipped.
"""

import csv
import dataclasses
import logging
import os
import pathlib
import uuid

from tqdm import tqdm

from faceage_keras.images import ImageReadError, load_rgb

logger = logging.getLogger(__name__)

CSV_COLUMNS = (
    "source",
    "face_index",
    "box_x0",
    "box_y0",
    "box_x1",
    "box_y1",
    "detection_score",
    "age",
    "age_low",
    "age_high",
    "age_group",
    "age_group_probability",
    "gender",
    "gender_probability",
    "model",
    "run",
)
# The aligned crops imitate the 200-pixel UTKFace crops the models train on:
# their eyes are about 0.39 of the side apart, which `find_faces` gives with a
# margin of 0.03. The predictor then resizes each crop to the model's input
# size, as training resized the UTKFace crops.
DETECTOR_CROP_SIZE = 200
DETECTOR_MARGIN = 0.03
DETECTOR_NAME = "mtcnn"


class PhotoInputError(ValueError):
    """An input or output path of a batch prediction that cannot be used."""


@dataclasses.dataclass
class BatchSummary:
    """Outcome of a batch prediction.

    Attributes:
        output: Path. The CSV written.
        photos: int. Image files read.
        faces: int. Rows written, one per face.
        photos_without_faces: list of str. Photos where no face was found.
        skipped: list of (str, str). Files skipped, with the reason.
    """

    output: pathlib.Path
    photos: int = 0
    faces: int = 0
    photos_without_faces: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)

    def format(self):
        """Return the summary as lines of text for the console."""
        lines = [
            f"{self.faces} face(s) found in {self.photos} photo(s); predictions written to {self.output}.",
            f"{len(self.photos_without_faces)} photo(s) without faces.",
        ]
        lines += [f"  no face: {name}" for name in self.photos_without_faces]
        lines.append(f"{len(self.skipped)} file(s) skipped.")
        lines += [f"  skipped: {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


def list_input_files(input_path):
    """Return the files to read: `input_path` itself, or every file below the folder, sorted.

    Hidden files and folders (names starting with a dot) are left out.

    Raises:
        PhotoInputError: the path does not exist or the folder contains no files.
    """
    input_path = pathlib.Path(input_path).expanduser()
    if input_path.is_file():
        return [input_path]
    if not input_path.is_dir():
        raise PhotoInputError(f"Input {input_path} not found. Pass a photo or a folder of photos.")
    files = [
        path
        for path in sorted(input_path.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(input_path).parts)
    ]
    if not files:
        raise PhotoInputError(f"Input folder {input_path} contains no files.")
    return files


def _field(record, name):
    """Read `name` from a face record that is an object with attributes or a mapping."""
    if isinstance(record, dict):
        return record[name]
    return getattr(record, name)


def _detection_unavailable(error):
    return PhotoInputError(
        f"Face detection is not available ({type(error).__name__}: {error}). Pass --cropped (cropped=True) "
        f"for images that each show one cropped face."
    )


def _import_find_faces():
    try:
        from faceage_keras.faces import find_faces
    except ImportError as error:
        raise _detection_unavailable(error) from error
    return find_faces


def load_detector(name=DETECTOR_NAME):
    """Build the face detector `name` of `faceage_keras.faces` (MTCNN by default).

    Raises:
        PhotoInputError: `faceage_keras.faces` or the detector's package is
            not installed. The message suggests `--cropped`.
    """
    try:
        from faceage_keras.faces import get_detector

        return get_detector(name)
    except ImportError as error:
        raise _detection_unavailable(error) from error


class _AtomicCsv:
    """A CSV written to a temporary file beside `path`, renamed to `path` only by `commit()`."""

    def __init__(self, path):
        self.path = path
        self.temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        self.file = open(self.temporary, "x", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.file, fieldnames=CSV_COLUMNS)
        self.writer.writeheader()

    def write_rows(self, rows):
        self.writer.writerows(rows)

    def commit(self):
        self.file.close()
        os.replace(self.temporary, self.path)

    def discard(self):
        self.file.close()
        self.temporary.unlink(missing_ok=True)


def _round(value, digits):
    return "" if value is None else round(float(value), digits)


def _rows(predictions, faces, predictor):
    run = predictor.run_dir.name if predictor.run_dir is not None else ""
    rows = []
    for prediction, face in zip(predictions, faces):
        x0, y0, x1, y1 = face["box"]
        rows.append(
            {
                "source": face["source"],
                "face_index": face["index"],
                "box_x0": _round(x0, 1),
                "box_y0": _round(y0, 1),
                "box_x1": _round(x1, 1),
                "box_y1": _round(y1, 1),
                "detection_score": _round(face["score"], 4),
                "age": _round(prediction.age, 2),
                "age_low": _round(prediction.age_low, 2),
                "age_high": _round(prediction.age_high, 2),
                "age_group": prediction.age_group,
                "age_group_probability": _round(prediction.age_group_probability, 4),
                "gender": prediction.gender or "",
                "gender_probability": _round(prediction.gender_probability, 4),
                "model": predictor.model_name,
                "run": run,
            }
        )
    return rows


def _find_faces(image, source, cropped, find_faces, detector):
    """Return the faces of one photo as dicts with source, index, box, score and crop."""
    if cropped:
        width, height = image.size
        return [{"source": source, "index": 0, "box": (0, 0, width, height), "score": None, "crop": image}]
    records = find_faces(image, detector, size=DETECTOR_CROP_SIZE, margin=DETECTOR_MARGIN)
    return [
        {
            "source": source,
            "index": int(_field(record, "index")),
            "box": tuple(_field(record, "box")),
            "score": _field(record, "score"),
            "crop": _field(record, "crop"),
        }
        for record in records
    ]


def predict_photos(
    predictor, input_path, output, *, cropped=False, tta=None, batch_size=None, detector=None, progress=True
):
    """Predict every face in a photo or a folder of photos and write one CSV row per face.

    Args:
        predictor: `Predictor`.
        input_path: path. A photo, or a folder whose files (subfolders
            included) are all tried as photos.
        output: path. CSV to write; it appears only when every photo was
            handled, so a crash leaves no half-written file.
        cropped: bool. Each image is one cropped face (face index 0, the box
            is the whole image); no detection.
        tta: bool or None. Average over each face and its mirror image; None
            takes the predictor's default.
        batch_size: int or None. Faces per forward pass; None takes the predictor's.
        detector: a detector from `load_detector`, or None to build the
            MTCNN one when `cropped` is False.
        progress: bool. Show a progress bar on the console.

    Returns:
        A `BatchSummary`.

    Raises:
        PhotoInputError: the input is missing or empty, the output is a
            folder, or face detection is not available.
    """
    files = list_input_files(input_path)
    input_root = pathlib.Path(input_path).expanduser()
    output = pathlib.Path(output).expanduser()
    if output.is_dir():
        raise PhotoInputError(
            f"Output {output} is a folder. Pass the path of a CSV file, e.g. {output / 'predictions.csv'}."
        )
    batch_size = predictor.batch_size if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise PhotoInputError(f"Batch size must be at least 1. Received: {batch_size}")

    find_faces = None
    if not cropped:
        find_faces = _import_find_faces()
        detector = load_detector() if detector is None else detector

    output.parent.mkdir(parents=True, exist_ok=True)
    summary = BatchSummary(output=output)
    table = _AtomicCsv(output)
    pending = []

    def flush():
        predictions = predictor.predict_faces([face["crop"] for face in pending], tta=tta)
        table.write_rows(_rows(predictions, pending, predictor))
        summary.faces += len(pending)
        pending.clear()

    try:
        for path in tqdm(files, desc="photos", unit="photo", disable=None if progress else True):
            source = path.name if path == input_root else path.relative_to(input_root).as_posix()
            try:
                image = load_rgb(path)
            except ImageReadError as error:
                summary.skipped.append((source, str(error)))
                continue

            try:
                faces = _find_faces(image, source, cropped, find_faces, detector)
            except Exception as error:  # noqa: BLE001 - one failing photo must not stop the batch
                # NOTE: the detector is a third-party model that can raise any
                # exception type on odd images; the photo is reported and skipped.
                logger.warning("Face detection failed on %s: %s: %s", source, type(error).__name__, error)
                summary.skipped.append((source, f"face detection failed: {type(error).__name__}: {error}"))
                continue
            summary.photos += 1
            if not faces:
                summary.photos_without_faces.append(source)
            pending.extend(faces)
            while len(pending) >= batch_size:
                overflow = pending[batch_size:]
                del pending[batch_size:]
                flush()
                pending.extend(overflow)
        if pending:
            flush()
        table.commit()
    except BaseException:
        table.discard()
        raise
    return summary
