"""Reading and validating a face data set: a metadata CSV and an image folder.

A data folder contains `labels.csv` and `images/`. The CSV needs the columns
`image_name`, `age` and `gender`, or the archive spelling `ImageName`, `Age`,
`Gender`. Header names are compared case-insensitively, and a `group` column
is optional. Gender is written `Male`/`Female`, `M`/`F` or `0`/`1`
(0 = male), in any letter case. `group` contains an index 0-4 or a label
`<19`, `19-29`, `30-39`, `40-59`, `60+`. Without it, the group comes from the age.
"""

import csv
import dataclasses
import logging
import pathlib
import unicodedata
import warnings

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
# Older ages are taken as typing errors.
MAX_PLAUSIBLE_AGE = 130.0


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


def _read_csv(csv_path):
    """Read the CSV as text columns, detecting the delimiter and the encoding."""
    head = csv_path.read_bytes()[:4]
    if not head.strip():
        raise DataError(f"{csv_path} is empty. Expected a header line image_name,age,gender and one row per image.")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        encodings = ["utf-16"]
    else:
        # Spreadsheet exports of older archives are often Windows-1252.
        encodings = ["utf-8-sig", "cp1252"]

    for encoding in encodings:
        try:
            # `sep=None` sniffs the delimiter, so tables saved with `;` or tabs
            # also read. Blank lines are kept so that row numbers match the file.
            # A row with more fields than the header makes pandas warn and drop
            # data, so that warning is raised as an error.
            with warnings.catch_warnings():
                warnings.simplefilter("error", pd.errors.ParserWarning)
                frame = pd.read_csv(
                    csv_path,
                    sep=None,
                    engine="python",
                    dtype=str,
                    encoding=encoding,
                    keep_default_na=False,
                    na_values=[""],
                    skip_blank_lines=False,
                    index_col=False,
                )
        except UnicodeDecodeError:
            continue
        except (csv.Error, pd.errors.ParserError, pd.errors.ParserWarning, pd.errors.EmptyDataError) as error:
            raise DataError(f"{csv_path} is not a valid CSV file: {error}") from error
        if encoding == "cp1252":
            logger.warning("%s is not UTF-8; read it as Windows-1252 (cp1252).", csv_path)
        return frame
    raise DataError(f"{csv_path} is neither UTF-8 nor Windows-1252 text. Save it as UTF-8.")


def resolve_image_path(images_dir, image_name):
    """Return the path of an image, matching either Unicode normal form of the name.

    Raises:
        OSError: the name is not a valid file name here (e.g. too long).
    """
    path = images_dir / image_name
    if path.is_file():
        return path
    for form in ("NFC", "NFD"):
        variant = images_dir / unicodedata.normalize(form, image_name)
        if variant.is_file():
            return variant
    return path


def _file_key(path):
    """Return one key per file, whatever the spelling of its name (`./a.jpg`, `a.jpg`, NFC or NFD)."""
    return unicodedata.normalize("NFC", str(path.resolve()))


def _check_row(row, images_dir, check_images):
    """Return (parsed values, None) or (None, reason)."""
    image_name = str(row.image_name).strip() if pd.notna(row.image_name) else ""
    if not image_name:
        return None, "image name is empty"
    name_parts = pathlib.PurePath(image_name).parts
    if pathlib.PurePath(image_name).is_absolute() or ".." in name_parts:
        return None, f"image name {image_name!r} must be a path inside {IMAGES_DIR}/"

    raw_age = row.age
    if pd.isna(raw_age) or str(raw_age).strip() == "":
        return None, "age is missing"
    try:
        age = float(str(raw_age).strip().replace(",", "."))
    except ValueError:
        return None, f"age {raw_age!r} is not a number"
    if not np.isfinite(age) or age < 0:
        return None, f"age {raw_age!r} is negative or not finite"
    if age > MAX_PLAUSIBLE_AGE:
        return None, f"age {raw_age!r} is above {MAX_PLAUSIBLE_AGE:.0f} years"

    if pd.isna(row.gender) or not str(row.gender).strip():
        return None, "gender is missing"
    gender = parse_gender(row.gender)
    if gender is None:
        return None, f"gender {row.gender!r} is not one of Male/Female, M/F, 0/1"

    group = None
    if "group" in row._fields and pd.notna(row.group) and str(row.group).strip():
        group = parse_age_group(row.group)
        if group is None:
            return None, f"group {row.group!r} is not 0-4 or one of <19, 19-29, 30-39, 40-59, 60+"

    try:
        path = resolve_image_path(images_dir, image_name)
    except OSError as error:
        return None, f"image name is not a valid file name here: {error.strerror or error}"
    if check_images:
        if not path.is_file():
            return None, f"image file {path} not found"
        try:
            check_readable(path)
        except ImageReadError as error:
            return None, str(error)
    return (image_name, str(path), age, gender, group, _file_key(path)), None


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
        number). `bad_rows` is the list of dropped `BadRow`s.

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

    frame = _normalize_columns(_read_csv(csv_path), csv_path)

    rows = list(frame.itertuples(index=False))
    order = np.arange(len(rows))
    if limit is not None:
        order = np.random.default_rng(seed).permutation(len(frame))
    records, bad_rows = [], []
    first_line_of_image = {}
    for index in order:
        if limit is not None and len(records) >= limit:
            break
        row = rows[index]
        # NOTE: assumes one file line per row. A quoted field with a line
        # break shifts the numbers of all later rows.
        line = int(index) + 2
        if all(pd.isna(value) or not str(value).strip() for value in row):
            continue

        values, reason = _check_row(row, images_dir, check_images)
        if reason is None and values[-1] in first_line_of_image:
            # The same face in two splits would leak test faces into training.
            reason = f"image is listed twice (also on line {first_line_of_image[values[-1]]})"
        if reason is None:
            first_line_of_image[values[-1]] = line
            records.append(values[:-1] + (line,))
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
    has_group = table["group"].notna()
    disagree = int((table.loc[has_group, "group"].astype(int) != derived_groups[has_group.to_numpy()]).sum())
    if disagree:
        logger.warning("%d rows have a group that differs from the group of their age; the given group is used.", disagree)
    table["group"] = np.where(has_group, table["group"].fillna(-1).astype(int), derived_groups).astype("int64")
    table["gender"] = table["gender"].astype("int64")
    logger.info("Read %d faces from %s.", len(table), csv_path)
    return table, bad_rows


def count_rows(data_dir):
    """Return the number of rows of a data folder's `labels.csv`, blank rows included.

    `read_labels` shuffles this many row positions for `limit`, so a copy of
    the folder in another form can repeat its selection.
    """
    return len(_read_csv(pathlib.Path(data_dir) / LABELS_FILE))


def write_bad_rows(bad_rows, path):
    """Write skipped rows to a CSV with columns line, image_name, reason."""
    pd.DataFrame([dataclasses.asdict(row) for row in bad_rows], columns=["line", "image_name", "reason"]).to_csv(
        path, index=False
    )
