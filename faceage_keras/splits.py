"""Train, validation and test splits as in the thesis, saved with each run.

Ages with fewer than two faces are dropped, 80% of the faces go to training
stratified on age in whole years, and the other 20% are divided half and half
into validation and test, stratified on age group. The seed is 42.
"""

import logging
import pathlib

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from faceage_keras.table import DataError

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
# With 20% held out, 6 faces are the fewest that leave one validation and one test face.
MIN_FACES = 6
SPLITS_DIR = "splits"
_SPLIT_COLUMNS = ["image_name", "age", "gender", "group"]


def _stratified_split(table, test_size, strata, fallback_strata, seed, split_name):
    """Split with stratification, falling back when the strata are too small."""
    for labels, name in ((strata, "age"), (fallback_strata, "age group")):
        counts = pd.Series(labels).value_counts()
        num_test = int(np.ceil(test_size * len(table)))
        if counts.min() >= 2 and num_test >= counts.size and len(table) - num_test >= counts.size:
            if labels is not strata:
                logger.warning(
                    "%s: too few faces to stratify on %d distinct ages; stratified on age group instead.",
                    split_name,
                    pd.Series(strata).nunique(),
                )
            return train_test_split(table, test_size=test_size, stratify=labels, random_state=seed)
        if labels is fallback_strata:
            break
    logger.warning("%s: too few faces per age group to stratify; split at random.", split_name)
    return train_test_split(table, test_size=test_size, random_state=seed)


def split_table(table, *, seed=42, holdout_fraction=0.2):
    """Split a face table into train, validation and test as the thesis did.

    Args:
        table: DataFrame from `faceage_keras.table.read_labels`.
        seed: int. Random state of both splits.
        holdout_fraction: float. Share of faces held out for validation and
            test together.

    Returns:
        A dict with DataFrames `train`, `val` and `test`.

    Raises:
        DataError: a split would be empty.
    """
    whole_ages = np.floor(table["age"].to_numpy()).astype(int)
    counts = pd.Series(whole_ages).value_counts()
    rare = counts[counts < 2].index
    keep = ~np.isin(whole_ages, rare)
    if (~keep).any():
        logger.info("Dropped %d face(s) whose age in whole years has fewer than 2 faces.", int((~keep).sum()))
    table = table[keep].reset_index(drop=True)
    whole_ages = whole_ages[keep]
    num_holdout = int(np.ceil(holdout_fraction * len(table)))
    if num_holdout < 2 or len(table) - num_holdout < 1:
        raise DataError(
            f"Need at least {MIN_FACES} faces (after dropping rare ages) to make train, validation and test "
            f"splits; got {len(table)}."
        )

    train, holdout = _stratified_split(
        table, holdout_fraction, whole_ages, table["group"].to_numpy(), seed, "train/holdout split"
    )
    groups = holdout["group"].to_numpy()
    val, test = _stratified_split(holdout, 0.5, groups, groups, seed, "validation/test split")

    splits = {"train": train, "val": val, "test": test}
    for name, split in splits.items():
        if len(split) == 0:
            raise DataError(f"The {name} split is empty; the data set has too few faces ({len(table)}).")
    logger.info("Split %d faces: train %d, validation %d, test %d.", len(table), len(train), len(val), len(test))
    return {name: split.reset_index(drop=True) for name, split in splits.items()}


def write_splits(splits, run_dir):
    """Write `splits/<name>.csv` lists into a run folder."""
    directory = pathlib.Path(run_dir) / SPLITS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        split[_SPLIT_COLUMNS].to_csv(directory / f"{name}.csv", index=False)


def read_splits(run_dir, table):
    """Restore a run's splits as rows of `table`, in the saved order.

    Raises:
        DataError: a saved image name is not in `table`.
    """
    directory = pathlib.Path(run_dir) / SPLITS_DIR
    indexed = table.drop_duplicates("image_name").set_index("image_name", drop=False)
    splits = {}
    for name in SPLIT_NAMES:
        names = pd.read_csv(directory / f"{name}.csv", dtype={"image_name": str})["image_name"]
        missing = names[~names.isin(indexed.index)]
        if len(missing):
            raise DataError(
                f"{len(missing)} images of the saved {name} split are not in the data, "
                f"e.g. {missing.iloc[0]!r}. Evaluate on the data the run was trained on."
            )
        splits[name] = indexed.loc[names].reset_index(drop=True)
    return splits
