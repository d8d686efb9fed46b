"""TFDS builder of UTKFace face crops, with age and gender read from the file names.

UTKFace names its crops `<age>_<gender>_<race>_<date&time>.jpg.chip.jpg`,
where gender 0 is male and 1 is female. The manual folder contains the crops,
either directly or in an `images/` subfolder.
"""

import logging
import pathlib
import re

import tensorflow_datasets as tfds

from faceage_keras import tfds_faces
from faceage_keras.images import ImageReadError, check_readable
from faceage_keras.labels import age_to_group
from faceage_keras.table import IMAGES_DIR, MAX_PLAUSIBLE_AGE, DataError

logger = logging.getLogger("faceage_keras.datasets.utkface")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
NAME_FORM = "<age>_<gender>_<race>_<date&time>.jpg.chip.jpg"
_STANDARD_NAME = re.compile(r"[0-9]+_[01]_[0-4]_[0-9]+\.jpg\.chip\.jpg")
_WHOLE_NUMBER = re.compile(r"[0-9]+")
# Names listed in a log line about skipped or irregular names. The rest are counted.
_MAX_NAMES_IN_LOG = 10

_DESCRIPTION = """\
UTKFace face crops (aligned and cropped, 200x200 px) with age and gender
parsed from the file names `<age>_<gender>_<race>_<date&time>.jpg.chip.jpg`
(gender 0 male, 1 female). The age group is derived from the age. Names
whose age or gender field is invalid, and images that do not decode, are left
out and listed in the metadata (`skipped_rows`). UTKFace is for
non-commercial research only. The copyright of the images stays with their
owners.
"""

_CITATION = """\
@inproceedings{zhang2017utkface,
  title = {Age Progression/Regression by Conditional Adversarial Autoencoder},
  author = {Zhang, Zhifei and Song, Yang and Qi, Hairong},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year = {2017}
}
"""


def parse_name(name):
    """Return `(age, gender)` parsed from a UTKFace file name.

    Only the age and gender fields must be valid. A few UTKFace files lack
    the race field or a dot (for example `39_1_20170116174525125.jpg.chip.jpg`),
    and their age and gender are still read.

    Raises:
        ValueError: the name does not start with `<age>_<gender>_`, the age
            is not a whole number of at most 130 years (ASCII digits), or the
            gender is not 0 or 1.
    """
    fields = name.split("_")
    if len(fields) < 3:
        raise ValueError(f"name does not have the form {NAME_FORM}")
    age_field, gender_field = fields[0], fields[1]
    if not _WHOLE_NUMBER.fullmatch(age_field):
        raise ValueError(f"age field {age_field!r} is not a whole number of years")
    age = int(age_field)
    if age > MAX_PLAUSIBLE_AGE:
        raise ValueError(f"age {age} is above {MAX_PLAUSIBLE_AGE:.0f} years")
    if gender_field not in ("0", "1"):
        raise ValueError(f"gender field {gender_field!r} is not 0 (male) or 1 (female)")
    return age, int(gender_field)


def is_standard_name(name):
    """Return True when `name` has all four fields of the UTKFace form and the `.jpg.chip.jpg` ending."""
    return _STANDARD_NAME.fullmatch(name) is not None


def find_images_dir(manual_dir):
    """Return `manual_dir/images` when it exists, else `manual_dir`."""
    manual_dir = pathlib.Path(manual_dir)
    images_dir = manual_dir / IMAGES_DIR
    return images_dir if images_dir.is_dir() else manual_dir


def list_image_names(images_dir):
    """Return the image file names of a folder in sorted order, and the names of other files."""
    images, others = [], []
    for path in pathlib.Path(images_dir).iterdir():
        if path.name.startswith(".") or not path.is_file():
            continue
        (images if path.suffix.lower() in IMAGE_SUFFIXES else others).append(path.name)
    return sorted(images), sorted(others)


def _log_names(level, message, names):
    listed = ", ".join(repr(name) for name in names[:_MAX_NAMES_IN_LOG])
    more = f" and {len(names) - _MAX_NAMES_IN_LOG} more" if len(names) > _MAX_NAMES_IN_LOG else ""
    logger.log(level, "%s: %s%s", message, listed, more)


class Builder(tfds.core.GeneratorBasedBuilder):
    """UTKFace crops with age, gender and age group."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "First release: image bytes, image name, age, gender, age group and name-order line of each crop.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Pass the folder with the UTKFace crops (`<age>_<gender>_<race>_<date&time>.jpg.chip.jpg`),
    or the folder above it whose `images/` subfolder contains them, as the manual folder:
    `invoke data build --dataset utkface --manual-dir /path/to/utkface`.
    """

    def _info(self):
        return tfds_faces.face_info(self, description=_DESCRIPTION, citation=_CITATION)

    def _split_generators(self, dl_manager):
        images_dir = find_images_dir(dl_manager.manual_dir)
        names, others = list_image_names(images_dir)
        if not names:
            raise DataError(f"{images_dir} contains no {', '.join(IMAGE_SUFFIXES)} images.")
        if others:
            _log_names(logging.INFO, f"Ignored {len(others)} files that are not images", others)
        logger.info("Found %d images in %s.", len(names), images_dir)

        skipped = tfds_faces.start_metadata(self.info, source=dl_manager.manual_dir, source_rows=len(names))
        return {tfds_faces.SPLIT: self._generate_examples(images_dir, names, skipped)}

    def _generate_examples(self, images_dir, names, skipped):
        irregular = []
        for index, name in enumerate(names):
            line = index + 2
            path = images_dir / name
            try:
                age, gender = parse_name(name)
                check_readable(path)
            except (ValueError, ImageReadError) as error:
                skipped.append(tfds_faces.skipped_row(line, name, error))
                continue
            if not is_standard_name(name):
                irregular.append(name)
            group = int(age_to_group(age))
            yield tfds_faces.face_example(image=path, image_name=name, age=age, gender=gender, group=group, line=line)

        if irregular:
            _log_names(
                logging.INFO,
                f"Kept {len(irregular)} names that are not of the form {NAME_FORM} but have valid age and gender fields",
                irregular,
            )
        if skipped:
            _log_names(
                logging.WARNING,
                f"Skipped {len(skipped)} of {len(names)} images",
                [f"{row['image_name']} ({row['reason']})" for row in skipped],
            )
