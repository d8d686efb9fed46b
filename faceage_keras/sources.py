"""Face sources: a data folder, or a face data set built with TFDS.

Training and evaluation name their data in one of three ways:

* a data folder with `labels.csv` and `images/` (see `faceage_keras.table`);
* `tfds:NAME` or `tfds:NAME:VERSION`, a data set that `invoke data build`
  wrote into `$TFDS_DATA_DIR` (default `~/tensorflow_datasets`). Without a
  version, the newest built version is used;
* the folder of one built version, `<data_dir>/<NAME>/<VERSION>`, for a data
  set in another TFDS data folder.

`load_face_table` returns the same table for a data folder and for a TFDS data
set built from it. Rows come in the folder's order, and `limit` selects the
same faces, so the same seed gives the same splits. Rows from TFDS also carry
the image file bytes (`image_bytes`), which `FaceDataset` decodes in place of
reading `path`.
"""

import logging
import pathlib
import re

import numpy as np
import pandas as pd

from faceage_keras import tfds_faces
from faceage_keras.labels import clip_age
from faceage_keras.table import DataError, read_labels

logger = logging.getLogger(__name__)

TFDS_PREFIX = "tfds:"
TABLE_COLUMNS = ["image_name", "path", "age", "gender", "group", "line", "age_clipped", "image_bytes"]
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_VERSION = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+")
_DATASET_INFO_FILE = "dataset_info.json"
# Records read per call from the array_record files.
_READ_CHUNK = 512
# Rows listed in a message about bad rows. The rest are counted.
_MAX_ROWS_IN_MESSAGE = 10


def is_tfds_spec(data):
    """Return True when `data` is written `tfds:...`."""
    return str(data).startswith(TFDS_PREFIX)


def parse_tfds_spec(spec):
    """Return `(name, version)` from `tfds:NAME` or `tfds:NAME:VERSION`, with `version` None when not given.

    Raises:
        DataError: `spec` is not of that form.
    """
    parts = str(spec)[len(TFDS_PREFIX) :].split(":")
    valid = (
        len(parts) <= 2
        and _NAME.fullmatch(parts[0]) is not None
        and (len(parts) == 1 or _VERSION.fullmatch(parts[1]) is not None)
    )
    if not valid:
        raise DataError(
            f"Invalid TFDS data set {spec!r}. Expected tfds:NAME or tfds:NAME:VERSION, "
            f"e.g. tfds:utkface or tfds:utkface:1.0.0."
        )
    return parts[0], parts[1] if len(parts) == 2 else None


def is_tfds_folder(path):
    """Return True when `path` is the folder of one built TFDS data set version."""
    return (pathlib.Path(path) / _DATASET_INFO_FILE).is_file()


def _version_key(version):
    return tuple(int(part) for part in version.split("."))


def built_versions(dataset_dir):
    """Return the complete versions in `<data_dir>/<name>`, oldest first (interrupted builds are not listed)."""
    dataset_dir = pathlib.Path(dataset_dir)
    if not dataset_dir.is_dir():
        return []
    versions = [path.name for path in dataset_dir.iterdir() if _VERSION.fullmatch(path.name) and is_tfds_folder(path)]
    return sorted(versions, key=_version_key)


def resolve_data(data, *, tfds_data_dir=None):
    """Return the folder that `data` names: a data folder as given, or the version folder of a TFDS spec.

    Args:
        data: path or str. A data folder, a TFDS version folder, or `tfds:NAME[:VERSION]`.
        tfds_data_dir: path or None. TFDS data folder for a spec; None means
            `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`.

    Raises:
        DataError: the spec is invalid, or that data set (version) is not built.
    """
    if not is_tfds_spec(data):
        return pathlib.Path(data).expanduser()

    name, version = parse_tfds_spec(data)
    data_dir = pathlib.Path(tfds_data_dir).expanduser() if tfds_data_dir else tfds_faces.default_data_dir()
    versions = built_versions(data_dir / name)
    how_to_build = (
        f"Build it with `invoke data build --dataset {name} --manual-dir SOURCE --data-dir {data_dir}`, "
        f"or set {tfds_faces.DATA_DIR_ENV_VARIABLE} to the data folder where it was built."
    )
    if not versions:
        raise DataError(f"{data}: the data set {name!r} is not built in {data_dir}. {how_to_build}")
    if version is None:
        version = versions[-1]
    elif version not in versions:
        raise DataError(
            f"{data}: version {version} of {name!r} is not built in {data_dir}. Built versions: {versions}. "
            f"{how_to_build}"
        )
    return data_dir / name / version


def _open_train_split(version_dir):
    import tensorflow_datasets as tfds

    # The version folder is resolved already, so the data set is opened from it
    # (as `tfds.data_source` does for a name) without importing builder code.
    builder = tfds.builder_from_directory(version_dir)
    missing = [name for name in tfds_faces.FEATURE_NAMES if name not in builder.info.features]
    if missing:
        raise DataError(
            f"{version_dir} is not a face data set: it lacks the feature(s) {missing}. "
            f"Build face data sets with `invoke data build`."
        )
    if tfds_faces.SPLIT not in builder.info.splits:
        raise DataError(f"{version_dir} has no {tfds_faces.SPLIT!r} split. Build it with `invoke data build`.")
    try:
        source = builder.as_data_source(split=tfds_faces.SPLIT, decoders={"image": tfds.decode.SkipDecoding()})
    except NotImplementedError as error:
        raise DataError(
            f"{version_dir} cannot be read without TensorFlow: it is not in {tfds_faces.FILE_FORMAT} format. "
            f"Build it with `invoke data build`."
        ) from error
    return builder, source


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _read_records(version_dir):
    """Return the faces of a built data set as a DataFrame in source order, and the builder."""
    with tfds_faces.absl_warnings_only():
        builder, source = _open_train_split(version_dir)
        records = []
        for start in range(0, len(source), _READ_CHUNK):
            records.extend(source.__getitems__(list(range(start, min(start + _READ_CHUNK, len(source))))))

    frame = pd.DataFrame(
        {
            "image_name": [_text(record["image_name"]) for record in records],
            "age": np.array([record["age"] for record in records], dtype="float64"),
            "gender": np.array([record["gender"] for record in records], dtype="int64"),
            "group": np.array([record["group"] for record in records], dtype="int64"),
            "line": np.array([record["line"] for record in records], dtype="int64"),
            "image_bytes": [bytes(record["image"]) for record in records],
        }
    )
    return frame.sort_values("line", kind="stable").reset_index(drop=True), builder


def _replay_limit(frame, bad_rows, source_rows, limit, seed):
    """Select the rows `read_labels(..., limit=limit, seed=seed)` selects from the source folder.

    `read_labels` shuffles the row positions of `labels.csv` and keeps the
    first `limit` valid rows, so the same shuffle over the stored lines keeps
    the same faces in the same order, and meets the same bad rows on the way.
    NOTE: when an image is listed twice, the build kept its first line, but
    `read_labels` with `limit` keeps whichever line the shuffle meets first.
    """
    position_of_line = {int(line): position for position, line in enumerate(frame["line"])}
    bad_row_of_line = {row.line: row for row in bad_rows}
    positions, met_bad_rows = [], []
    for index in np.random.default_rng(seed).permutation(source_rows):
        if len(positions) >= limit:
            break
        line = int(index) + 2
        if line in position_of_line:
            positions.append(position_of_line[line])
        elif line in bad_row_of_line:
            met_bad_rows.append(bad_row_of_line[line])
    return frame.iloc[positions].reset_index(drop=True), sorted(met_bad_rows, key=lambda row: row.line)


def _format_bad_rows(bad_rows):
    lines = [f"  line {row.line} ({row.image_name!r}): {row.reason}" for row in bad_rows[:_MAX_ROWS_IN_MESSAGE]]
    if len(bad_rows) > _MAX_ROWS_IN_MESSAGE:
        lines.append(f"  ... and {len(bad_rows) - _MAX_ROWS_IN_MESSAGE} more")
    return "\n".join(lines)


def read_tfds_table(version_dir, *, skip_bad_rows=False, limit=None, seed=42):
    """Read a face data set built by `invoke data build` as `read_labels` reads its source folder.

    Args:
        version_dir: path. Folder of the built version, `<data_dir>/<name>/<version>`.
        skip_bad_rows: bool. Accept a data set whose build left rows out.
            Otherwise those rows raise `DataError`, as they do for the folder.
        limit: int or None. Keep only the faces `read_labels` keeps with the same `limit` and `seed`.
        seed: int. Seed of the shuffle for `limit`.

    Returns:
        A tuple `(table, bad_rows)` as from `read_labels`, where `table` also
        has an `image_bytes` column and `path` reads `tfds:<name>:<version>/<image_name>`.

    Raises:
        DataError: the folder is not a face data set, rows were left out and
            `skip_bad_rows` is False, or no row is left.
    """
    version_dir = pathlib.Path(version_dir)
    frame, builder = _read_records(version_dir)
    label = f"{TFDS_PREFIX}{builder.info.name}:{builder.info.version}"
    metadata = tfds_faces.read_metadata(version_dir)
    if tfds_faces.SOURCE_ROWS not in metadata:
        raise DataError(f"{version_dir} lacks the face metadata ({tfds_faces.METADATA_FILE}). Rebuild it with `invoke data build`.")
    bad_rows = tfds_faces.skipped_bad_rows(metadata)
    if limit is not None:
        frame, bad_rows = _replay_limit(frame, bad_rows, metadata[tfds_faces.SOURCE_ROWS], limit, seed)

    if bad_rows and not skip_bad_rows:
        raise DataError(
            f"{label} ({version_dir}): {len(bad_rows)} rows of the source {metadata.get(tfds_faces.SOURCE)} were "
            f"left out when the data set was built:\n{_format_bad_rows(bad_rows)}\n"
            f"Fix these rows in the source and build again (after deleting {version_dir}), or pass "
            f"--skip-bad-rows (skip_bad_rows=True) to use the data set without them."
        )
    if bad_rows:
        logger.warning("Skipped %d rows that the build of %s left out:\n%s", len(bad_rows), label, _format_bad_rows(bad_rows))
    if frame.empty:
        raise DataError(f"{label} ({version_dir}) has no usable rows.")

    frame["path"] = [f"{label}/{name}" for name in frame["image_name"]]
    frame["age_clipped"] = clip_age(frame["age"].to_numpy())
    logger.info("Read %d faces from %s (%s).", len(frame), label, version_dir)
    return frame[TABLE_COLUMNS], bad_rows


def load_face_table(data, *, skip_bad_rows=False, limit=None, seed=42, tfds_data_dir=None):
    """Read the faces of a data folder or a TFDS face data set as one table.

    Args:
        data: path or str. A data folder, `tfds:NAME[:VERSION]`, or a TFDS version folder.
        skip_bad_rows: bool. Drop invalid rows with a warning instead of raising `DataError`.
        limit: int or None. Keep only the first `limit` valid rows after a shuffle with `seed`.
        seed: int. Seed of the shuffle for `limit`.
        tfds_data_dir: path or None. TFDS data folder for a spec; None means
            `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`.

    Returns:
        A tuple `(table, bad_rows)` as from `faceage_keras.table.read_labels`.
        Tables from TFDS also have the column `image_bytes`.

    Raises:
        DataError: the data is missing, malformed, or has invalid rows and
            `skip_bad_rows` is False.
    """
    path = resolve_data(data, tfds_data_dir=tfds_data_dir)
    if is_tfds_folder(path):
        return read_tfds_table(path, skip_bad_rows=skip_bad_rows, limit=limit, seed=seed)
    return read_labels(path, skip_bad_rows=skip_bad_rows, limit=limit, seed=seed)
