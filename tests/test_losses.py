"""Tests for `FocalLoss` against values computed by hand."""

import math

import keras
import numpy as np
import pytest

from faceage_keras.losses import FocalLoss

# Both rows have logits [2, 0], so the softmax probabilities are
# p0 = e^2 / (e^2 + 1) = 0.8807971 and p1 = 1 / (e^2 + 1) = 0.1192029.
LOGITS = np.array([[2.0, 0.0], [2.0, 0.0]], dtype="float32")
LABELS = np.array([0, 1], dtype="int64")
P0 = math.exp(2.0) / (math.exp(2.0) + 1.0)
P1 = 1.0 / (math.exp(2.0) + 1.0)


def _per_sample(loss, labels=LABELS, logits=LOGITS):
    return keras.ops.convert_to_numpy(loss(labels, logits))


def test_focal_loss_default_hand_value():
    loss = FocalLoss(reduction=None)

    values = _per_sample(loss)

    # Label 0: 0.2 * (1 - p0)^2 * -ln(p0) = 0.2 * 0.1192029^2 * 0.1269280 = 3.6072e-4.
    expected_male = 0.2 * (1.0 - P0) ** 2 * -math.log(P0)
    # Label 1: 0.8 * (1 - p1)^2 * -ln(p1) = 0.8 * 0.8807971^2 * 2.1269280 = 1.3200.
    expected_female = 0.8 * (1.0 - P1) ** 2 * -math.log(P1)
    assert values[0] == pytest.approx(expected_male, rel=1e-5), f"label-0 loss is {values[0]}"
    assert values[1] == pytest.approx(expected_female, rel=1e-5), f"label-1 loss is {values[1]}"
    assert expected_male == pytest.approx(3.6072e-4, rel=1e-4), "the hand arithmetic in the comment is off"
    assert expected_female == pytest.approx(1.3200, rel=1e-4), "the hand arithmetic in the comment is off"


def test_focal_loss_mean_reduction():
    loss = FocalLoss()

    value = float(keras.ops.convert_to_numpy(loss(LABELS, LOGITS)))

    expected = (0.2 * (1.0 - P0) ** 2 * -math.log(P0) + 0.8 * (1.0 - P1) ** 2 * -math.log(P1)) / 2
    assert value == pytest.approx(expected, rel=1e-5), f"mean loss is {value}"


@pytest.mark.parametrize(
    ("gamma", "alpha", "expected"),
    [
        # gamma 1, no alpha: (1 - p) * -ln p.
        (1.0, None, [(1.0 - P0) * -math.log(P0), (1.0 - P1) * -math.log(P1)]),
        # gamma 3, alpha (0.5, 0.25): alpha_c * (1 - p)^3 * -ln p.
        (3.0, (0.5, 0.25), [0.5 * (1.0 - P0) ** 3 * -math.log(P0), 0.25 * (1.0 - P1) ** 3 * -math.log(P1)]),
        # gamma 0, alpha (0.2, 0.8): weighted cross-entropy alpha_c * -ln p.
        (0.0, (0.2, 0.8), [0.2 * -math.log(P0), 0.8 * -math.log(P1)]),
    ],
)
def test_focal_loss_gamma_alpha_variants(gamma, alpha, expected):
    loss = FocalLoss(gamma=gamma, alpha=alpha, reduction=None)

    values = _per_sample(loss)

    assert values[0] == pytest.approx(expected[0], rel=1e-5), f"label-0 loss is {values[0]}"
    assert values[1] == pytest.approx(expected[1], rel=1e-5), f"label-1 loss is {values[1]}"


def test_focal_loss_gamma_zero_equals_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 5)).astype("float32") * 3.0
    labels = rng.integers(0, 5, size=16)
    focal = FocalLoss(gamma=0.0, alpha=None)
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    focal_value = float(keras.ops.convert_to_numpy(focal(labels, logits)))
    cross_entropy_value = float(keras.ops.convert_to_numpy(cross_entropy(labels, logits)))

    assert focal_value == pytest.approx(cross_entropy_value, rel=1e-5), (
        f"focal {focal_value} vs cross-entropy {cross_entropy_value}"
    )


def test_focal_loss_column_labels():
    loss = FocalLoss(reduction=None)

    column = _per_sample(loss, labels=LABELS.reshape(-1, 1))
    flat = _per_sample(loss)

    np.testing.assert_allclose(column, flat, rtol=1e-6, err_msg="labels of shape (batch, 1) give other losses")


def test_focal_loss_confident_correct_small():
    loss = FocalLoss(gamma=2.0, alpha=None, reduction=None)
    logits = np.array([[10.0, -10.0]], dtype="float32")

    value = float(_per_sample(loss, labels=np.array([0]), logits=logits)[0])

    # p = 1 - 2.1e-9, so the exact loss (1 - p)^2 * -ln p is about 1e-26.
    assert value < 1e-12, f"loss of a confident correct prediction is {value}"
    assert np.isfinite(value), "loss of a confident correct prediction is not finite"


def test_focal_loss_negative_gamma_raises():
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-0.5)


def test_focal_loss_config_round_trip():
    loss = FocalLoss(gamma=1.5, alpha=(0.3, 0.7), name="gender_focal")

    restored = FocalLoss.from_config(loss.get_config())
    deserialized = keras.losses.deserialize(keras.losses.serialize(loss))

    assert restored.gamma == 1.5, f"gamma is {restored.gamma}"
    assert restored.alpha == [0.3, 0.7], f"alpha is {restored.alpha}"
    assert restored.name == "gender_focal", f"name is {restored.name}"
    assert isinstance(deserialized, FocalLoss), f"deserialized to {type(deserialized).__name__}"
    assert deserialized.alpha == [0.3, 0.7], f"deserialized alpha is {deserialized.alpha}"
    assert float(deserialized(LABELS, LOGITS)) == pytest.approx(float(loss(LABELS, LOGITS)), rel=1e-6)


def test_focal_loss_config_alpha_none():
    loss = FocalLoss(gamma=2.0, alpha=None)

    restored = FocalLoss.from_config(loss.get_config())

    assert restored.alpha is None, f"alpha is {restored.alpha}"
