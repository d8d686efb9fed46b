"""Reading and validating a face data set: a metadata CSV and an image folder.

A data folder contains `labels.csv` and `images/`. The CSV needs the columns
`image_name`, `age` and `gender` (or the archive spelling `ImageName`, `Age`,
`Gender`; header names are compared case-insensitively) and may have a
`group` column. Gender is written `Male`/`Female`, `M`/`F` or `0`/`1`
(0 = male), in any letter case. `group` holds an index 0-4 or a label
`<19`, `19-29`, `30-39`, `40-59`, `60+`; without it, the group comes from the age.
"""

import dataclasses
import logging
import pathlib

import numpy as np
import pandas as pd

from faceage_keras.images import ImageReadError, check_readable
from faceage_keras.labels import age_to_group, clip_age, parse_age_group, parse_gender

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.csv"
IMAGES_DIR = "images"
REQUIRED_COLUMNS = ("image_name", "age", "gender")
_COLUMN_ALIASES = {
    "image_name": "image_name",
    "imagename": "image_name",
    "image": "image_name",
    "age": "age",
    "gender": "gender",
    "group": "group",
    "age_group": "group",
}
# Shown with an error that lists bad rows; the rest are counted.
_MAX_ROWS_IN_MESSAGE = 10


class DataError(ValueError):
    """Invalid or unusable input data, with a message that names the fix."""


@dataclasses.dataclass(frozen=True)
class BadRow:
    """A metadata row that cannot be used.

    Attributes:
        line: int. Line number in the CSV file (the header is line 1).
        image_name: str. The row's image name as written.
        reason: str. What is wrong with the row.
    """

    line: int
    image_name: str
    reason: str


def _normalize_columns(frame, csv_path):
    renamed = {}
    for column in frame.columns:
        key = str(column).strip().lower().replace(" ", "_")
        if key in _COLUMN_ALIASES:
            renamed[column] = _COLUMN_ALIASES[key]
    frame = frame.rename(columns=renamed)
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(
            f"{csv_path} is missing the column(s) {missing}. Found columns: {list(frame.columns)}. "
            f"Expected image_name, age, gender (or ImageName, Age, Gender) and optionally group."
        )
    return frame


def _check_row(row, images_dir, check_images):
    """Return (parsed values, None) or (None, reason)."""
    image_name = str(row.image_name).strip() if pd.notna(row.image_name) else ""
    if not image_name:
        return None, "image name is empty"

    raw_age = row.age
    if pd.isna(raw_age) or str(raw_age).strip() == "":
        return None, "age is missing"
    try:
        age = float(str(raw_age).strip().replace(",", "."))
    except ValueError:
        return None, f"age {raw_age!r} is not a number"
    if not np.isfinite(age) or age < 0:
        return None, f"age {raw_age!r} is negative or not finite"

    gender = parse_gender(row.gender) if pd.notna(row.gender) else None
    if gender is None:
        return None, f"gender {row.gender!r} is not one of Male/Female, M/F, 0/1"

    group = None
    if "group" in row._fields and pd.notna(row.group) and str(row.group).strip():
        group = parse_age_group(row.group)
        if group is None:
            return None, f"group {row.group!r} is not 0-4 or one of <19, 19-29, 30-39, 40-59, 60+"

    path = images_dir / image_name
    if check_images:
        if not path.is_file():
            return None, f"image file {path} not found"
        try:
            check_readable(path)
        except ImageReadError as error:
            return None, str(error)
    return (image_name, str(path), age, gender, group), None


def _format_bad_rows(bad_rows):
    lines = [f"  line {row.line} ({row.image_name!r}): {row.reason}" for row in bad_rows[:_MAX_ROWS_IN_MESSAGE]]
    if len(bad_rows) > _MAX_ROWS_IN_MESSAGE:
        lines.append(f"  ... and {len(bad_rows) - _MAX_ROWS_IN_MESSAGE} more")
    return "\n".join(lines)


def read_labels(data_dir, *, skip_bad_rows=False, check_images=True, limit=None, seed=42):
    """Read and validate `labels.csv` and the images of a data folder.

    Args:
        data_dir: path. Folder with `labels.csv` and `images/`.
        skip_bad_rows: bool. Drop invalid rows with a warning instead of
            raising `DataError`.
        check_images: bool. Check that every image exists and decodes.
        limit: int or None. Keep only the first `limit` valid rows after a
            shuffle with `seed`; rows after those are not checked.
        seed: int. Seed of the shuffle for `limit`.

    Returns:
        A tuple `(table, bad_rows)`. `table` is a DataFrame with columns
        `image_name`, `path`, `age` (as written), `age_clipped` (0-75),
        `gender` (0 male, 1 female), `group` (0-4) and `line` (CSV line
        number); `bad_rows` is the list of dropped `BadRow`s.

    Raises:
        DataError: the folder or CSV is malformed, a row is invalid and
            `skip_bad_rows` is False, or no usable row is left.
    """
    data_dir = pathlib.Path(data_dir)
    csv_path = data_dir / LABELS_FILE
    images_dir = data_dir / IMAGES_DIR
    if not csv_path.is_file():
        raise DataError(f"{csv_path} not found. A data folder needs {LABELS_FILE} and {IMAGES_DIR}/.")
    if not images_dir.is_dir():
        raise DataError(f"{images_dir} not found. A data folder needs {LABELS_FILE} and {IMAGES_DIR}/.")

    # `sep=None` sniffs the delimiter, so tables saved with `;` also read;
    # `utf-8-sig` drops the byte-order mark that spreadsheet programs write.
    frame = pd.read_csv(csv_path, sep=None, engine="python", dtype=str, encoding="utf-8-sig", keep_default_na=False, na_values=[""])
    frame = _normalize_columns(frame, csv_path)

    rows = list(frame.itertuples(index=False))
    order = np.arange(len(rows))
    if limit is not None:
        order = np.random.default_rng(seed).permutation(len(frame))
    records, bad_rows = [], []
    for index in order:
        if limit is not None and len(records) >= limit:
            break
        row = rows[index]
        line = int(index) + 2
        values, reason = _check_row(row, images_dir, check_images)
        if reason is None:
            records.append(values + (line,))
        else:
            bad_rows.append(BadRow(line, "" if pd.isna(row.image_name) else str(row.image_name), reason))

    bad_rows.sort(key=lambda bad_row: bad_row.line)
    if bad_rows and not skip_bad_rows:
        raise DataError(
            f"{csv_path}: {len(bad_rows)} of {len(frame)} rows are invalid:\n{_format_bad_rows(bad_rows)}\n"
            f"Fix these rows, or pass --skip-bad-rows (skip_bad_rows=True) to drop them."
        )
    if bad_rows:
        logger.warning(
            "Skipped %d of %d rows of %s:\n%s", len(bad_rows), len(frame), csv_path, _format_bad_rows(bad_rows)
        )
    if not records:
        raise DataError(f"{csv_path} has no usable rows.")

    table = pd.DataFrame.from_records(records, columns=["image_name", "path", "age", "gender", "group", "line"])
    table["age_clipped"] = clip_age(table["age"].to_numpy())
    derived_groups = age_to_group(table["age"].to_numpy())
    given = table["group"].notna()
    disagree = int((table.loc[given, "group"].astype(int) != derived_groups[given.to_numpy()]).sum())
    if disagree:
        logger.warning("%d rows have a group that differs from the group of their age; the given group is used.", disagree)
    table["group"] = np.where(given, table["group"].fillna(-1).astype(int), derived_groups).astype("int64")
    table["gender"] = table["gender"].astype("int64")

    duplicates = int(table["image_name"].duplicated().sum())
    if duplicates:
        logger.warning("%d image names appear more than once in %s.", duplicates, csv_path)
    logger.info("Read %d faces from %s.", len(table), csv_path)
    return table, bad_rows


def write_bad_rows(bad_rows, path):
    """Write skipped rows to a CSV with columns line, image_name, reason."""
    pd.DataFrame([dataclasses.asdict(row) for row in bad_rows], columns=["line", "image_name", "reason"]).to_csv(
        path, index=False
    )
