"""TFDS builder of a portrait archive: any data folder with `labels.csv` and `images/`.

The folder is read and checked by `faceage_keras.table.read_labels`, so the
data set accepts the same CSV layouts, and keeps the same rows, as training
on the folder with `--skip-bad-rows` does.
"""

import logging

import tensorflow_datasets as tfds

from faceage_keras import tfds_faces
from faceage_keras.table import count_rows, read_labels

logger = logging.getLogger("faceage_keras.datasets.portrait_archive")

_DESCRIPTION = """\
Faces of a portrait archive, from a data folder with a metadata table
`labels.csv` (columns image_name, age, gender and optionally group) and the
image files in `images/`. Each image is stored with its file bytes unchanged.
The age group is the table's `group` column where it is given, and is derived
from the age otherwise. Rows that are invalid (missing or unreadable image,
bad age or gender, duplicate image) are left out and listed in the metadata
(`skipped_rows`).
"""


class Builder(tfds.core.GeneratorBasedBuilder):
    """Faces of a portrait archive with age, gender and age group."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "First release: image bytes, image name, age, gender, age group and CSV line of each valid row.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Pass the archive's data folder, which contains `labels.csv` and `images/`, as the manual folder:
    `invoke data build --dataset portrait_archive --manual-dir /path/to/archive`.
    Build each archive into its own data folder (`--data-dir`), because all of them are named portrait_archive.
    """

    def _info(self):
        return tfds_faces.face_info(self, description=_DESCRIPTION)

    def _split_generators(self, dl_manager):
        logger.info("Checking %s: labels.csv and every image.", dl_manager.manual_dir)
        table, bad_rows = read_labels(dl_manager.manual_dir, skip_bad_rows=True)

        skipped = tfds_faces.start_metadata(
            self.info, source=dl_manager.manual_dir, source_rows=count_rows(dl_manager.manual_dir)
        )
        skipped.extend(tfds_faces.skipped_row(row.line, row.image_name, row.reason) for row in bad_rows)
        return {tfds_faces.SPLIT: self._generate_examples(table)}

    def _generate_examples(self, table):
        for row in table.itertuples(index=False):
            yield tfds_faces.face_example(
                image=row.path,
                image_name=row.image_name,
                age=row.age,
                gender=row.gender,
                group=row.group,
                line=row.line,
            )
