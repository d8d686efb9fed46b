"""Turning a folder of raw photographs into a folder of aligned face crops.

`prepare_folder` reads every file under the input folder (subfolders
included), detects and aligns the faces with `faceage_keras.faces.find_faces`
and writes:

* `images/`: one JPEG crop per face, named `<photo stem>_face<index>.jpg` in
  the photo's subfolder. The stem keeps the photo's extension
  (`<photo name>_face<index>.jpg`) when two photos of a folder share a stem.
* `labels.csv`: one row per crop with the columns of `LABEL_COLUMNS`. `age`
  and `gender` are empty unless a labels CSV of the photos is given. Once
  they are filled in, `faceage_keras.table.read_labels` reads the folder.
* `no_face.csv`: the photos in which no face was found.
* `unreadable.csv`: the files that could not be read or processed, with the
  reason.
* `unmatched_labels.csv`: with a labels CSV only, its rows that name no
  photo of the input folder.

Each CSV is written to a temporary file and renamed at the end, so an
interrupted run leaves no half-written table. Crops written before the
interruption stay in `images/`.
"""

import dataclasses
import logging
import os
import pathlib
import tempfile
import unicodedata

import pandas as pd
from tqdm import tqdm

from faceage_keras.faces import DEFAULT_DETECTOR, DEFAULT_MIN_SCORE, check_face_options, find_faces, get_detector
from faceage_keras.images import ImageReadError, load_rgb
from faceage_keras.table import IMAGES_DIR, LABELS_FILE, DataError, _read_csv

logger = logging.getLogger(__name__)

LABEL_COLUMNS = (
    "image_name",
    "age",
    "gender",
    "source_photo",
    "face_index",
    "faces_in_photo",
    "x0",
    "y0",
    "x1",
    "y1",
    "score",
)
NO_FACE_FILE = "no_face.csv"
UNREADABLE_FILE = "unreadable.csv"
UNMATCHED_LABELS_FILE = "unmatched_labels.csv"
OUTPUT_FILES = (LABELS_FILE, NO_FACE_FILE, UNREADABLE_FILE, UNMATCHED_LABELS_FILE)
JPEG_QUALITY = 95
# Files listed by name in the summary; the CSV files list all of them.
_MAX_FILES_IN_SUMMARY = 10


@dataclasses.dataclass
class PrepareSummary:
    """Counts and file lists of one `prepare_folder` run.

    Attributes:
        output_dir: pathlib.Path. The folder written.
        photos_read: int. Files decoded as images.
        faces_written: int. Crops written to `images/`.
        photos_without_faces: list of str. Photos with no face, as in
            `no_face.csv`.
        skipped: list of (str, str). `(file, reason)` for every file that
            could not be read or processed, as in `unreadable.csv`.
        labelled_photos: int. Photos that received an age or gender from the
            labels CSV.
        shared_labels: list of str. Labelled photos with more than one face,
            whose labels were copied to each face.
        unmatched_labels: list of str. Names in the labels CSV that match no
            photo.
        with_labels: bool. Whether a labels CSV was given.
    """

    output_dir: pathlib.Path
    photos_read: int = 0
    faces_written: int = 0
    photos_without_faces: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    labelled_photos: int = 0
    shared_labels: list = dataclasses.field(default_factory=list)
    unmatched_labels: list = dataclasses.field(default_factory=list)
    with_labels: bool = False

    def format(self):
        """Return the summary as lines of text for the console."""
        lines = [
            f"Photos read: {self.photos_read}.",
            f"Faces written: {self.faces_written}, in {self.output_dir / IMAGES_DIR} and {self.output_dir / LABELS_FILE}.",
            f"Photos without a face: {len(self.photos_without_faces)}"
            + (f", listed in {self.output_dir / NO_FACE_FILE}." if self.photos_without_faces else "."),
        ]
        lines.append(
            f"Files skipped: {len(self.skipped)}" + (f", listed in {self.output_dir / UNREADABLE_FILE}:" if self.skipped else ".")
        )
        for name, reason in self.skipped[:_MAX_FILES_IN_SUMMARY]:
            lines.append(f"  {name}: {reason}")
        if len(self.skipped) > _MAX_FILES_IN_SUMMARY:
            lines.append(f"  ... and {len(self.skipped) - _MAX_FILES_IN_SUMMARY} more")
        if self.with_labels:
            lines.append(f"Photos with labels carried over: {self.labelled_photos}.")
            if self.shared_labels:
                lines.append(
                    f"Labelled photos with more than one face: {len(self.shared_labels)}. Each of their faces "
                    f"got the photo's age and gender; check these rows in {LABELS_FILE}."
                )
            if self.unmatched_labels:
                lines.append(
                    f"Rows of the labels CSV that match no photo: {len(self.unmatched_labels)}, "
                    f"listed in {self.output_dir / UNMATCHED_LABELS_FILE}."
                )
        return "\n".join(lines)


def _nfc(text):
    return unicodedata.normalize("NFC", text)


def _list_files(input_dir, output_dir):
    """Return the regular files under `input_dir` in sorted order, leaving out `output_dir`."""
    output_dir = output_dir.resolve()
    files = []
    for path in input_dir.rglob("*"):
        if not path.is_file():
            continue
        resolved = path.resolve()
        if resolved == output_dir or output_dir in resolved.parents:
            continue
        files.append(path)
    return sorted(files, key=lambda path: path.relative_to(input_dir).as_posix())


def _crop_stems(relative_paths):
    """Return the crop name stem per photo: its stem, or its full name where a folder has the stem twice."""
    stem_counts = {}
    for path in relative_paths:
        key = (path.parent, _nfc(path.stem))
        stem_counts[key] = stem_counts.get(key, 0) + 1
    stems = {}
    for path in relative_paths:
        unique = stem_counts[(path.parent, _nfc(path.stem))] == 1
        stems[path] = path.with_name(path.stem if unique else path.name)
    return stems


def read_photo_labels(csv_path):
    """Read a CSV of per-photo labels: `image_name` (the photo) and `age` and/or `gender`.

    The file may use the delimiters and encodings that `read_labels` accepts.

    Returns:
        dict from the NFC-normalised photo name (a path relative to the input
        folder, with `/`) to `(age, gender)` as written, `""` where empty.

    Raises:
        DataError: the file is missing or malformed, has no image_name
            column, has neither age nor gender, or lists a photo twice.
    """
    csv_path = pathlib.Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"Labels file {csv_path} not found. Pass a CSV with image_name and age and/or gender columns.")
    frame = _read_csv(csv_path)
    columns = {}
    for column in frame.columns:
        key = str(column).strip().lower().replace(" ", "_")
        key = {"imagename": "image_name", "image": "image_name"}.get(key, key)
        if key in ("image_name", "age", "gender") and key not in columns:
            columns[key] = column
    if "image_name" not in columns or not ({"age", "gender"} & set(columns)):
        raise DataError(
            f"{csv_path} needs an image_name column (the photo's file name) and an age and/or gender column. "
            f"Found columns: {list(frame.columns)}."
        )

    names = frame[columns["image_name"]]
    ages = frame[columns["age"]] if "age" in columns else pd.Series("", index=frame.index)
    genders = frame[columns["gender"]] if "gender" in columns else pd.Series("", index=frame.index)
    labels, first_line = {}, {}
    for position, (raw_name, age, gender) in enumerate(zip(names, ages, genders)):
        line = position + 2
        if pd.isna(raw_name) or not str(raw_name).strip():
            continue
        name = _nfc(pathlib.PurePath(str(raw_name).strip()).as_posix())
        if name in labels:
            raise DataError(f"{csv_path}: photo {name!r} is listed on line {first_line[name]} and again on line {line}.")
        labels[name] = tuple("" if pd.isna(value) else str(value).strip() for value in (age, gender))
        first_line[name] = line
    return labels


def _match_labels(labels, relative_paths):
    """Return (labels per photo path, unmatched names): by relative path, else by file name if unique."""
    by_path = {_nfc(path.as_posix()): path for path in relative_paths}
    by_name = {}
    for path in relative_paths:
        by_name.setdefault(_nfc(path.name), []).append(path)

    matched, unmatched = {}, []
    for name, values in labels.items():
        if name in by_path:
            matched[by_path[name]] = values
        elif "/" not in name and len(by_name.get(name, [])) == 1:
            matched.setdefault(by_name[name][0], values)
        else:
            unmatched.append(name)
    return matched, unmatched


def _write_csv_atomically(frame, path):
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        frame.to_csv(temporary, index=False)
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise


def _save_crop(crop, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    crop.save(temporary, format="JPEG", quality=JPEG_QUALITY)
    os.replace(temporary, path)


def _check_output_dir(input_dir, output_dir, overwrite):
    if not input_dir.is_dir():
        raise DataError(f"Input folder {input_dir} not found. Pass a folder of photographs.")
    if output_dir.resolve() == input_dir.resolve():
        raise DataError(f"The output folder must differ from the input folder {input_dir}.")
    existing = [name for name in OUTPUT_FILES if (output_dir / name).exists()]
    if existing and not overwrite:
        raise DataError(
            f"{output_dir} already contains {', '.join(existing)}. Choose another output folder, "
            f"or pass --overwrite (overwrite=True) to replace them."
        )


def _reason(error):
    cause = error.__cause__
    if isinstance(error, ImageReadError) and cause is not None:
        return f"not a readable image ({type(cause).__name__}: {cause})"
    return f"{type(error).__name__}: {error}"


def prepare_folder(
    input_dir,
    output_dir,
    detector=DEFAULT_DETECTOR,
    size=224,
    margin=0.4,
    largest_only=False,
    min_score=DEFAULT_MIN_SCORE,
    max_detection_side=None,
    labels=None,
    overwrite=False,
    progress=True,
):
    """Detect, align and crop the faces of every photo under `input_dir` into `output_dir`.

    Args:
        input_dir: path. Folder of photographs; subfolders are read too.
        output_dir: path. Folder to write (see the module docstring).
        detector: `FaceDetector` or the name of one.
        size, margin, largest_only, min_score, max_detection_side: as in
            `find_faces`.
        labels: path or None. CSV of per-photo labels (`image_name`, `age`,
            `gender`) to copy onto the faces of each photo. A name matches a
            photo's path relative to `input_dir`, or its file name when that
            name occurs once in the folder.
        overwrite: bool. Replace the tables of an earlier run in
            `output_dir`. Crops of that run that this run does not write again
            stay in `images/`.
        progress: bool. Show a progress bar.

    Returns:
        `PrepareSummary`.

    Raises:
        DataError: a folder or the labels CSV is invalid, or `output_dir`
            contains an earlier run and `overwrite` is False.
        FaceDetectionError, DetectorUnavailableError: see `get_detector`.
    """
    input_dir = pathlib.Path(input_dir).expanduser()
    output_dir = pathlib.Path(output_dir).expanduser()
    check_face_options(size, margin, min_score, max_detection_side)
    _check_output_dir(input_dir, output_dir, overwrite)
    photo_labels = read_photo_labels(labels) if labels is not None else {}
    if isinstance(detector, str):
        detector = get_detector(detector)

    files = _list_files(input_dir, output_dir)
    relative_paths = [path.relative_to(input_dir) for path in files]
    crop_stems = _crop_stems(relative_paths)
    matched_labels, unmatched = _match_labels(photo_labels, relative_paths)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = PrepareSummary(output_dir=output_dir, unmatched_labels=unmatched, with_labels=labels is not None)

    rows, no_face_rows = [], []
    for path, relative in tqdm(list(zip(files, relative_paths)), desc="Photos", unit="photo", disable=not progress):
        source = relative.as_posix()
        try:
            image = load_rgb(path)
        except ImageReadError as error:
            summary.skipped.append((source, _reason(error)))
            continue
        summary.photos_read += 1

        try:
            faces = find_faces(
                image,
                detector,
                size=size,
                margin=margin,
                largest_only=largest_only,
                min_score=min_score,
                max_detection_side=max_detection_side,
            )
        except Exception as error:
            # One photo that breaks the detector must not stop an archive run.
            logger.exception("Face detection failed on %s", path)
            summary.skipped.append((source, f"face detection failed ({type(error).__name__}: {error})"))
            continue
        if not faces:
            summary.photos_without_faces.append(source)
            no_face_rows.append((source, image.width, image.height))
            continue

        age, gender = matched_labels.get(relative, ("", ""))
        if relative in matched_labels:
            summary.labelled_photos += 1
            if len(faces) > 1:
                summary.shared_labels.append(source)
        for face in faces:
            crop_name = f"{crop_stems[relative].as_posix()}_face{face.index}.jpg"
            _save_crop(face.crop, output_dir / IMAGES_DIR / crop_name)
            x0, y0, x1, y1 = (round(value, 1) for value in face.box)
            rows.append((crop_name, age, gender, source, face.index, len(faces), x0, y0, x1, y1, round(face.score, 4)))
            summary.faces_written += 1

    (output_dir / IMAGES_DIR).mkdir(exist_ok=True)
    _write_csv_atomically(pd.DataFrame(rows, columns=list(LABEL_COLUMNS)), output_dir / LABELS_FILE)
    _write_csv_atomically(pd.DataFrame(no_face_rows, columns=["source_photo", "width", "height"]), output_dir / NO_FACE_FILE)
    _write_csv_atomically(pd.DataFrame(summary.skipped, columns=["file", "reason"]), output_dir / UNREADABLE_FILE)
    if labels is not None:
        _write_csv_atomically(pd.DataFrame({"image_name": unmatched}), output_dir / UNMATCHED_LABELS_FILE)
    else:
        (output_dir / UNMATCHED_LABELS_FILE).unlink(missing_ok=True)
    logger.info("Prepared %s: %d faces from %d photos.", output_dir, summary.faces_written, summary.photos_read)
    return summary
