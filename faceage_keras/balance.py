"""Balancing the training data over age groups and genders.

Both methods work on the ten cells (age group x gender) of the training
split. `oversample` draws each epoch's faces with replacement so that every
non-empty cell is drawn equally often in expectation, which makes each age
group and each gender equally frequent. `reweight` keeps the data and
weights each face's loss by the inverse frequency of its cell.
"""

import numpy as np

BALANCE_METHODS = ("none", "oversample", "reweight")


def check_balance(method):
    """Return `method` if it is one of `BALANCE_METHODS`, else raise ValueError."""
    if method not in BALANCE_METHODS:
        raise ValueError(f"`balance` must be one of {BALANCE_METHODS}. Received: balance={method!r}")
    return method


def _cell_ids(groups, genders):
    groups = np.asarray(groups, dtype="int64")
    genders = np.asarray(genders, dtype="int64")
    return groups * 2 + genders


def inverse_frequency_weights(groups, genders):
    """Return one weight per face, inversely proportional to its (group, gender) cell size.

    The weights have mean 1 over the faces, so the loss keeps its scale and
    the learning rate needs no change. Every non-empty cell gets the same
    total weight.
    """
    cells = _cell_ids(groups, genders)
    _, inverse, counts = np.unique(cells, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[inverse]
    return (weights * len(cells) / weights.sum()).astype("float32")


def oversampled_order(groups, genders, rng):
    """Return one epoch of face indices drawn with replacement to balance the cells.

    The epoch has as many draws as there are faces. Faces of rare cells appear
    several times and faces of common cells may be left out of an epoch.
    """
    weights = inverse_frequency_weights(groups, genders).astype("float64")
    return rng.choice(len(weights), size=len(weights), replace=True, p=weights / weights.sum())


def cell_counts(table):
    """Return a DataFrame of face counts per age group (rows) and gender (columns)."""
    return table.groupby(["group", "gender"]).size().unstack(fill_value=0)
