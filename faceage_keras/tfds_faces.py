"""Face data sets in TensorFlow Datasets (TFDS) form: the record layout and the build.

The builders in `datasets/<name>/<name>_dataset_builder.py` write one `train`
split of array_record files with one record per face. The features are:

* `image`: the image file's bytes as they are in the source. No image is
  re-encoded, so a face decodes to the same pixels as from its file.
* `image_name`: the name as written in the source (`labels.csv` or the file name).
* `age`: float64, years as written. `gender`: 0 male, 1 female.
* `group`: age group 0-4, taken from the source or else derived from the age.
* `line`: the face's line in `labels.csv`. UTKFace, which has no table, numbers
  its files in name order from 2, as a `labels.csv` listing them in that order would.

The data set's metadata (`metadata.json`) contains the source folder, the
number of rows in the source and the rows left out at build time, so that
reading it back gives the same table as reading the folder
(`faceage_keras.sources.load_face_table`). TensorFlow is not needed: TFDS
writes and reads array_record files with NumPy.
"""

import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import pathlib
import sys
import time

import numpy as np

from faceage_keras.labels import AGE_GROUP_LABELS, GENDER_NAMES
from faceage_keras.table import BadRow, DataError

logger = logging.getLogger(__name__)

SPLIT = "train"
FILE_FORMAT = "array_record"
FEATURE_NAMES = ("image", "image_name", "age", "gender", "group", "line")
METADATA_FILE = "metadata.json"
# Keys of the data set's metadata.
SOURCE = "source"
SOURCE_ROWS = "source_rows"
SKIPPED_ROWS = "skipped_rows"

DATA_DIR_ENV_VARIABLE = "TFDS_DATA_DIR"
BUILDERS_DIR = pathlib.Path(__file__).resolve().parents[1] / "datasets"
_BUILDER_MODULE_SUFFIX = "_dataset_builder"


@contextlib.contextmanager
def absl_warnings_only():
    """Show absl's (TFDS's) warnings on stderr, and keep absl from configuring the root logger meanwhile.

    absl calls `logging.basicConfig()` on its first message when the root
    logger has no handler, and from then on every faceage_keras log line
    prints twice. A root handler for absl's warnings prevents that.
    """
    root = logging.getLogger()
    if root.handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.addFilter(lambda record: record.name == "absl")
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def default_data_dir():
    """Return TFDS's data folder: `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`."""
    return pathlib.Path(os.environ.get(DATA_DIR_ENV_VARIABLE) or "~/tensorflow_datasets").expanduser()


def face_info(builder, *, description, homepage=None, citation=None):
    """Return the `tfds.core.DatasetInfo` of a face builder: the shared features and empty metadata."""
    import tensorflow_datasets as tfds

    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(
                shape=(None, None, 3), doc="Image file bytes as in the source (JPEG, PNG or another format)."
            ),
            "image_name": tfds.features.Text(doc="Image name as written in the source."),
            "age": tfds.features.Scalar(np.float64, doc="Age in years as written in the source."),
            "gender": tfds.features.ClassLabel(names=GENDER_NAMES, doc="0 male, 1 female."),
            "group": tfds.features.ClassLabel(
                names=AGE_GROUP_LABELS, doc="Age group, given in the source or derived from the age."
            ),
            "line": tfds.features.Scalar(np.int64, doc="Line of the face in the source table (header is line 1)."),
        }
    )
    return tfds.core.DatasetInfo(
        builder=builder,
        description=description,
        features=features,
        homepage=homepage,
        citation=citation,
        metadata=tfds.core.MetadataDict(),
        # Records stay in source order, so that tools reading the files directly see that order too.
        disable_shuffling=True,
    )


def face_example(*, image, image_name, age, gender, group, line):
    """Return the `(key, example)` pair of one face, where `image` is a file path or the file's bytes."""
    example = {
        "image": image,
        "image_name": image_name,
        "age": float(age),
        "gender": int(gender),
        "group": int(group),
        "line": int(line),
    }
    return int(line), example


def start_metadata(info, *, source, source_rows):
    """Fill a builder's metadata before its examples are generated, and return the list that collects skipped rows."""
    info.metadata[SOURCE] = str(pathlib.Path(source).resolve())
    info.metadata[SOURCE_ROWS] = int(source_rows)
    info.metadata[SKIPPED_ROWS] = []
    return info.metadata[SKIPPED_ROWS]


def skipped_row(line, image_name, reason):
    """Return a skipped row in the form stored in the metadata."""
    return {"line": int(line), "image_name": str(image_name), "reason": str(reason)}


def read_metadata(version_dir):
    """Return the metadata of a built face data set, or an empty dict when it has none."""
    path = pathlib.Path(version_dir) / METADATA_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def skipped_bad_rows(metadata):
    """Return the rows a build left out as `BadRow`s, sorted by line."""
    rows = [BadRow(row["line"], row["image_name"], row["reason"]) for row in metadata.get(SKIPPED_ROWS, [])]
    return sorted(rows, key=lambda row: row.line)


def available_builders(directory=BUILDERS_DIR):
    """Return the names of the builders in `directory` (folders with `<name>/<name>_dataset_builder.py`)."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return []
    return sorted(
        path.name for path in directory.iterdir() if (path / f"{path.name}{_BUILDER_MODULE_SUFFIX}.py").is_file()
    )


def load_builder_class(name, directory=BUILDERS_DIR):
    """Import `datasets/<name>/<name>_dataset_builder.py` and return its `Builder` class.

    TFDS takes the data set name from the module name, and it registers each
    name once per process, so the module is imported only once.

    Raises:
        DataError: no builder of that name exists.
    """
    path = pathlib.Path(directory) / name / f"{name}{_BUILDER_MODULE_SUFFIX}.py"
    if not path.is_file():
        raise DataError(
            f"No TFDS builder {name!r}: {path} not found. Available builders: {available_builders(directory)}."
        )
    module_name = f"{name}{_BUILDER_MODULE_SUFFIX}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    elif pathlib.Path(module.__file__).resolve() != path.resolve():
        raise DataError(
            f"A builder module {module_name} from {module.__file__} is already imported, so {path} cannot be. "
            f"Build from one builders folder per process."
        )
    return module.Builder


@dataclasses.dataclass(frozen=True)
class BuildResult:
    """The outcome of `build_dataset`.

    Attributes:
        name: str. Data set name.
        version: str. Data set version.
        path: pathlib.Path. Folder of the built version (`<data_dir>/<name>/<version>`).
        num_faces: int. Records in the `train` split.
        skipped_rows: list of `BadRow`. Source rows left out, with the reason.
        built: bool. False when the version already existed and nothing was done.
        seconds: float. Wall time of the build (0 when nothing was done).
    """

    name: str
    version: str
    path: pathlib.Path
    num_faces: int
    skipped_rows: list
    built: bool
    seconds: float


def _warn_about_incomplete_builds(data_dir, name, version):
    # TFDS writes into `incomplete.<random>_<version>` and renames it when done,
    # so a killed build leaves such a folder and never a half-written version.
    leftovers = sorted((data_dir / name).glob(f"incomplete.*_{version}"))
    if leftovers:
        logger.warning(
            "Found %d folder(s) of interrupted builds, e.g. %s. They are never read, so delete them unless a "
            "build is running now.",
            len(leftovers),
            leftovers[0],
        )


def _check_same_source(path, manual_dir):
    source = read_metadata(path).get(SOURCE)
    if source is not None and pathlib.Path(source) != manual_dir.resolve():
        raise DataError(
            f"{path} was built from {source}, not from {manual_dir}. Build into another --data-dir, or delete "
            f"{path} to replace it."
        )


def build_dataset(name, manual_dir, *, data_dir=None, builders_dir=BUILDERS_DIR):
    """Build the TFDS data set `name` from the files in `manual_dir`, unless it is built already.

    The build writes into a temporary folder that TFDS renames to
    `<data_dir>/<name>/<version>` at the end, so an interrupted build leaves
    no version folder behind, and a rerun builds again from the start.

    Args:
        name: str. Builder name, a folder of `builders_dir` (`utkface`, `portrait_archive`).
        manual_dir: path. Folder with the source files (TFDS's manual data folder).
        data_dir: path or None. TFDS data folder; None means `default_data_dir()`.
        builders_dir: path. Folder with the builders.

    Returns:
        A `BuildResult`.

    Raises:
        DataError: unknown builder, missing source folder, or the version is
            already built from another source folder.
    """
    with absl_warnings_only():
        return _build(name, manual_dir, data_dir, builders_dir)


def _build(name, manual_dir, data_dir, builders_dir):
    import tensorflow_datasets as tfds

    builder_class = load_builder_class(name, builders_dir)
    manual_dir = pathlib.Path(manual_dir).expanduser()
    if not manual_dir.is_dir():
        raise DataError(f"Source folder {manual_dir} not found. Pass the folder with the images as --manual-dir.")
    data_dir = pathlib.Path(data_dir).expanduser() if data_dir is not None else default_data_dir()

    builder = builder_class(data_dir=str(data_dir), file_format=FILE_FORMAT)
    version = str(builder.version)
    path = pathlib.Path(builder.data_dir)
    # TFDS itself skips a build when the version folder exists.
    if path.exists():
        if not (path / "dataset_info.json").is_file():
            raise DataError(f"{path} exists but is not a complete build (no dataset_info.json). Delete it and build again.")
        _check_same_source(path, manual_dir)
        num_faces = builder.info.splits[SPLIT].num_examples
        skipped = skipped_bad_rows(read_metadata(path))
        logger.info("%s %s is already built in %s (%d faces). Nothing to do.", name, version, path, num_faces)
        return BuildResult(name, version, path, num_faces, skipped, built=False, seconds=0.0)

    _warn_about_incomplete_builds(data_dir, name, version)
    logger.info("Building %s %s from %s into %s.", name, version, manual_dir, path)
    started = time.monotonic()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)), file_format=FILE_FORMAT
    )
    seconds = time.monotonic() - started

    num_faces = builder.info.splits[SPLIT].num_examples
    skipped = skipped_bad_rows(read_metadata(path))
    logger.info("Built %s %s in %.0f s: %d faces, %d rows skipped, in %s.", name, version, seconds, num_faces, len(skipped), path)
    return BuildResult(name, version, path, num_faces, skipped, built=True, seconds=seconds)
