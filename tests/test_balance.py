"""Balancing over age groups and genders: weights, oversampling and the data sets that use them."""

import numpy as np
import pandas as pd
import pytest

from faceage_keras.balance import check_balance, inverse_frequency_weights, oversampled_order
from faceage_keras.config import ConfigError, load_config
from faceage_keras.dataset import FaceDataset
from faceage_keras.models import get_task
from faceage_keras.table import read_labels

# Cells (group, gender) with 6, 2, 1 and 1 faces.
GROUPS = np.array([0, 0, 0, 0, 0, 0, 1, 1, 4, 2])
GENDERS = np.array([0, 0, 0, 0, 0, 0, 1, 1, 0, 1])


def test_weights_by_hand():
    weights = inverse_frequency_weights(GROUPS, GENDERS)

    # Raw weights 1/6, 1/2, 1, 1 per cell; their sum over faces is 4, scaled to a mean of 1.
    scale = len(GROUPS) / 4.0
    np.testing.assert_allclose(weights[:6], scale / 6, rtol=1e-6)
    np.testing.assert_allclose(weights[6:8], scale / 2, rtol=1e-6)
    np.testing.assert_allclose(weights[8:], scale, rtol=1e-6)
    assert weights.mean() == pytest.approx(1.0)


def test_weights_equal_cell_totals():
    weights = inverse_frequency_weights(GROUPS, GENDERS)
    cells = GROUPS * 2 + GENDERS

    totals = [weights[cells == cell].sum() for cell in np.unique(cells)]

    np.testing.assert_allclose(totals, totals[0], rtol=1e-6)


def test_oversampling_evens_groups_and_genders():
    rng = np.random.default_rng(0)
    groups = np.repeat([0, 1, 2, 3, 4], [500, 100, 50, 30, 20])
    genders = rng.integers(0, 2, size=len(groups))
    genders[:400] = 0

    draws = np.concatenate([oversampled_order(groups, genders, np.random.default_rng(seed)) for seed in range(20)])

    group_share = np.bincount(groups[draws], minlength=5) / len(draws)
    gender_share = np.bincount(genders[draws], minlength=2) / len(draws)
    np.testing.assert_allclose(group_share, 0.2, atol=0.02)
    np.testing.assert_allclose(gender_share, 0.5, atol=0.02)


def test_oversampling_keeps_epoch_length():
    order = oversampled_order(GROUPS, GENDERS, np.random.default_rng(1))

    assert len(order) == len(GROUPS)
    assert order.min() >= 0
    assert order.max() < len(GROUPS)


def test_unknown_method_rejected():
    with pytest.raises(ValueError, match="oversample"):
        check_balance("undersample")


def test_config_rejects_unknown_balance():
    with pytest.raises(ConfigError, match="balance"):
        load_config(balance="equal")


def test_targets_multiply_weights():
    task = get_task("m5")
    weights = np.array([2.0, 0.5], dtype="float32")

    _, sample_weight = task.targets(np.array([20.0, 30.0]), np.array([0, 1]), np.array([1, 2]), weights)

    np.testing.assert_allclose(sample_weight["gender"], [2.0, 0.5])
    np.testing.assert_allclose(sample_weight["age_male"], [2.0, 0.0])
    np.testing.assert_allclose(sample_weight["age_female"], [0.0, 0.5])


def test_targets_weights_for_plain_task():
    task = get_task("m4")

    _, sample_weight = task.targets(np.array([20.0, 30.0]), np.array([0, 1]), np.array([1, 2]), np.array([3.0, 1.0]))

    assert set(sample_weight) == {"age_group"}
    np.testing.assert_allclose(sample_weight["age_group"], [3.0, 1.0])


def _face_table(folder):
    table, _ = read_labels(folder)
    return table


def test_dataset_reweight_yields_weights(small_face_folder):
    table = _face_table(small_face_folder)
    faces = FaceDataset(table, "m2", image_size=32, batch_size=8, training=True, balance="reweight")

    batch = faces[0]

    assert len(batch) == 3, "a reweighted batch has no sample weights"
    assert set(batch[2]) == {"age"}
    assert batch[2]["age"].shape == (8,)


def test_dataset_oversample_draws_rare_faces(small_face_folder):
    table = _face_table(small_face_folder)
    # Make the data unbalanced: keep only the first face of every cell but (group 0, male).
    common = table[(table["group"] == 0) & (table["gender"] == 0)]
    rare = table.drop(common.index).groupby(["group", "gender"]).head(1)
    unbalanced = pd.concat([common] * 8 + [rare]).reset_index(drop=True)
    faces = FaceDataset(unbalanced, "m2", image_size=32, batch_size=8, training=True, balance="oversample")

    drawn = unbalanced.loc[faces._order]

    common_share = ((drawn["group"] == 0) & (drawn["gender"] == 0)).mean()
    assert common_share < 0.4, f"oversampling left the common cell at {common_share:.0%} of the draws"


def test_dataset_ignores_balance_when_evaluating(small_face_folder):
    table = _face_table(small_face_folder)

    faces = FaceDataset(table, "m2", image_size=32, batch_size=8, balance="oversample")

    assert faces.balance == "none"
    np.testing.assert_array_equal(faces._order, np.arange(len(table)))
