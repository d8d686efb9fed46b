"""Tests for the five thesis models: outputs, default compile, the m5 cascade and saving."""

import warnings

import keras
import numpy as np
import pytest

from faceage_keras import MODEL_NAMES, FaceAgeModel, build_model, default_compile_args
from faceage_keras.labels import FEMALE, MALE, NUM_AGE_GROUPS, age_to_group
from faceage_keras.losses import FocalLoss
from faceage_keras.models import GENDER_LOSS_WEIGHT, GenderGatedAge, get_task

IMAGE_SIZE = 32
BATCH_SIZE = 8

EXPECTED_OUTPUTS = {
    "m1": {"age": 1, "gender": 2},
    "m2": {"age": 1},
    "m3": {"age_group": NUM_AGE_GROUPS, "gender": 2},
    "m4": {"age_group": NUM_AGE_GROUPS},
    "m5": {"gender": 2, "age_male": 1, "age_female": 1, "age": 1},
}
EXPECTED_LOSS_WEIGHTS = {
    "m1": {"age": 1.0, "gender": 8.0},
    "m2": {"age": 1.0},
    "m3": {"age_group": 1.0, "gender": 8.0},
    "m4": {"age_group": 1.0},
    "m5": {"gender": 8.0, "age_male": 1.0, "age_female": 1.0},
}


def _batch(genders=None, seed=0):
    """Return random images and the (ages, genders, groups) label arrays of one batch."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1.0, 1.0, size=(BATCH_SIZE, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    ages = rng.uniform(1.0, 75.0, size=BATCH_SIZE).astype("float32")
    if genders is None:
        genders = np.array([MALE, FEMALE] * (BATCH_SIZE // 2), dtype="int64")
    groups = age_to_group(ages)
    return images, (ages, np.asarray(genders, dtype="int64"), groups)


def _fit_one_batch(model, images, labels):
    targets, sample_weight = model.task.targets(*labels)
    history = model.fit(images, targets, sample_weight=sample_weight, batch_size=BATCH_SIZE, epochs=1, verbose=0)
    return {name: values[-1] for name, values in history.history.items()}


def _dense_weights(model, name):
    return [weights.copy() for weights in model.get_layer(name).get_weights()]


@pytest.fixture(scope="module")
def model_builder(tiny_backbone):
    def build(name, **kwargs):
        return build_model(name, backbone=tiny_backbone, image_size=IMAGE_SIZE, **kwargs)

    return build


# Outputs and defaults.


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_output_names_shapes(model_builder, name):
    model = model_builder(name)
    images, _ = _batch()

    predictions = model.predict(images, verbose=0)

    expected = EXPECTED_OUTPUTS[name]
    assert set(predictions) == set(expected), f"{name} outputs {sorted(predictions)}"
    for output_name, units in expected.items():
        shape = predictions[output_name].shape
        assert shape == (BATCH_SIZE, units), f"{name} output {output_name!r} has shape {shape}"
    assert set(model.task.output_names) == set(expected), f"task lists outputs {model.task.output_names}"


def test_model_names_are_five():
    assert MODEL_NAMES == ("m1", "m2", "m3", "m4", "m5"), f"MODEL_NAMES is {MODEL_NAMES}"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_default_compile_fit_finite(model_builder, name):
    model = model_builder(name)
    model.compile()
    images, labels = _batch()

    logs = _fit_one_batch(model, images, labels)

    assert "loss" in logs, f"fit logged {sorted(logs)}"
    not_finite = {key: value for key, value in logs.items() if not np.isfinite(value)}
    assert not_finite == {}, f"fit logged non-finite values: {not_finite}"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_loss_weights_documented(name):
    task = get_task(name)
    compile_args = default_compile_args(name)

    assert task.loss_weights == EXPECTED_LOSS_WEIGHTS[name], f"task loss weights are {task.loss_weights}"
    assert compile_args["loss_weights"] == EXPECTED_LOSS_WEIGHTS[name], (
        f"compile loss weights are {compile_args['loss_weights']}"
    )
    assert GENDER_LOSS_WEIGHT == 8.0, f"GENDER_LOSS_WEIGHT is {GENDER_LOSS_WEIGHT}"


@pytest.mark.parametrize("name", ["m1", "m3", "m5"])
def test_model_total_loss_weighs_gender_8(model_builder, name):
    model = model_builder(name)
    model.compile()
    images, labels = _batch()

    logs = _fit_one_batch(model, images, labels)

    # With one batch, the logged losses are those of that batch before the update.
    weighted = sum(weight * logs[f"{output_name}_loss"] for output_name, weight in EXPECTED_LOSS_WEIGHTS[name].items())
    assert logs["loss"] == pytest.approx(weighted, rel=1e-4), f"total {logs['loss']} vs weighted sum {weighted}"


def test_model_default_compile_arguments(model_builder):
    model = model_builder("m1")
    model.compile()

    optimizer_config = model.optimizer.get_config()

    assert isinstance(model.optimizer, keras.optimizers.SGD), f"optimizer is {type(model.optimizer).__name__}"
    assert optimizer_config["learning_rate"] == pytest.approx(1e-3), f"learning rate {optimizer_config['learning_rate']}"
    assert optimizer_config["momentum"] == pytest.approx(0.9), f"momentum {optimizer_config['momentum']}"
    assert optimizer_config["global_clipnorm"] == pytest.approx(5.0), f"global_clipnorm {optimizer_config['global_clipnorm']}"
    assert isinstance(model.loss["gender"], FocalLoss), f"gender loss is {type(model.loss['gender']).__name__}"


def test_model_unknown_name_raises(tiny_backbone):
    with pytest.raises(ValueError) as error:
        build_model("m6", backbone=tiny_backbone, image_size=IMAGE_SIZE)

    message = str(error.value)
    assert "'m6'" in message, f"message does not name the value: {message}"
    for name in MODEL_NAMES:
        assert name in message, f"message does not list {name}: {message}"


def test_model_invalid_dropout_raises(tiny_backbone):
    with pytest.raises(ValueError, match="dropout"):
        build_model("m1", backbone=tiny_backbone, image_size=IMAGE_SIZE, dropout=1.0)


def test_model_frozen_backbone_trains_heads_only(model_builder):
    model = model_builder("m1", freeze_backbone=True)

    trainable_paths = sorted(weight.path for weight in model.trainable_weights)

    assert trainable_paths == ["age/bias", "age/kernel", "gender/bias", "gender/kernel"], (
        f"trainable weights are {trainable_paths}"
    )


# The m5 cascade.


def test_gated_age_mixed_batch():
    gender_logits = np.array([[1.0, 0.0], [0.0, 1.0], [0.2, 0.9], [3.0, -1.0]], dtype="float32")
    age_male = np.array([[10.0], [11.0], [12.0], [13.0]], dtype="float32")
    age_female = np.array([[20.0], [21.0], [22.0], [23.0]], dtype="float32")

    ages = keras.ops.convert_to_numpy(GenderGatedAge()([gender_logits, age_male, age_female]))

    np.testing.assert_array_equal(ages, [[10.0], [21.0], [22.0], [13.0]], err_msg="gate picked the wrong head")


@pytest.mark.parametrize(("gender_bias", "chosen", "other"), [([0.0, 1.0], "age_female", "age_male"), ([1.0, 0.0], "age_male", "age_female")])
def test_cascade_age_follows_gender(model_builder, gender_bias, chosen, other):
    model = model_builder("m5")
    kernel, _ = model.get_layer("gender").get_weights()
    model.get_layer("gender").set_weights([np.zeros_like(kernel), np.array(gender_bias, dtype="float32")])
    # Different age biases make the two heads disagree on every face.
    male_kernel, _ = model.get_layer("age_male").get_weights()
    model.get_layer("age_male").set_weights([male_kernel, np.array([20.0], dtype="float32")])
    female_kernel, _ = model.get_layer("age_female").get_weights()
    model.get_layer("age_female").set_weights([female_kernel, np.array([60.0], dtype="float32")])
    images, _ = _batch()

    predictions = model.predict(images, verbose=0)

    np.testing.assert_array_equal(predictions["age"], predictions[chosen], err_msg=f"age is not {chosen}")
    assert not np.any(predictions["age"] == predictions[other]), f"age matches {other} on some faces"


def test_cascade_targets_sample_weights():
    task = get_task("m5")
    ages = np.array([20.0, 30.0, 40.0, 50.0], dtype="float32")
    genders = np.array([MALE, FEMALE, FEMALE, MALE])

    targets, sample_weight = task.targets(ages, genders, age_to_group(ages))

    np.testing.assert_array_equal(sample_weight["age_male"], [1.0, 0.0, 0.0, 1.0], err_msg="age_male weights")
    np.testing.assert_array_equal(sample_weight["age_female"], [0.0, 1.0, 1.0, 0.0], err_msg="age_female weights")
    np.testing.assert_array_equal(sample_weight["gender"], [1.0, 1.0, 1.0, 1.0], err_msg="gender weights")
    np.testing.assert_array_equal(targets["age_male"].ravel(), ages, err_msg="age_male targets")
    np.testing.assert_array_equal(targets["age_female"].ravel(), ages, err_msg="age_female targets")
    np.testing.assert_array_equal(targets["gender"], genders, err_msg="gender targets")


def test_non_cascade_targets_no_sample_weights():
    ages = np.array([20.0, 65.0], dtype="float32")

    targets, sample_weight = get_task("m3").targets(ages, np.array([MALE, FEMALE]), age_to_group(ages))

    assert sample_weight is None, f"m3 has sample weights {sample_weight}"
    assert set(targets) == {"age_group", "gender"}, f"m3 targets are {sorted(targets)}"
    np.testing.assert_array_equal(targets["age_group"], [1, 4], err_msg="m3 age_group targets")


@pytest.mark.parametrize(("gender", "trained", "untouched"), [(FEMALE, "age_female", "age_male"), (MALE, "age_male", "age_female")])
def test_cascade_fit_trains_own_head(model_builder, gender, trained, untouched):
    model = model_builder("m5")
    model.compile()
    images, labels = _batch(genders=[gender] * BATCH_SIZE)
    trained_before = _dense_weights(model, trained)
    untouched_before = _dense_weights(model, untouched)

    _fit_one_batch(model, images, labels)

    for before, after in zip(untouched_before, model.get_layer(untouched).get_weights()):
        np.testing.assert_array_equal(after, before, err_msg=f"{untouched} changed on a batch without its gender")
    for before, after in zip(trained_before, model.get_layer(trained).get_weights()):
        assert not np.array_equal(after, before), f"{trained} did not change on a batch of its gender"


# Saving.


@pytest.mark.parametrize("name", ["m3", "m5"])
def test_model_keras_file_round_trip(model_builder, tmp_path, name):
    model = model_builder(name)
    model.compile()
    images, labels = _batch()
    _fit_one_batch(model, images, labels)
    targets, sample_weight = model.task.targets(*labels)
    expected = model.predict(images, verbose=0)
    expected_loss = model.evaluate(images, targets, sample_weight=sample_weight, verbose=0, return_dict=True)["loss"]
    path = tmp_path / f"{name}.keras"
    model.save(path)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.saving.load_model(path)

    # Keras warns "`compile()` was not called as part of model loading" or
    # "Skipping variable loading for optimizer" when it cannot restore training.
    about_compile = [
        str(item.message)
        for item in caught
        if any(word in str(item.message).lower() for word in ("compile", "optimizer", "skipping"))
    ]
    assert about_compile == [], f"loading warned about compile: {about_compile}"
    assert isinstance(loaded, FaceAgeModel), f"loaded a {type(loaded).__name__}"
    assert loaded.task.name == name, f"loaded task is {loaded.task.name}"
    predictions = loaded.predict(images, verbose=0)
    assert set(predictions) == set(expected), f"loaded outputs are {sorted(predictions)}"
    for output_name in expected:
        np.testing.assert_array_equal(predictions[output_name], expected[output_name], err_msg=f"{output_name} changed")
    assert loaded.compiled, "loaded model is not compiled"
    assert isinstance(loaded.optimizer, keras.optimizers.SGD), f"loaded optimizer is {type(loaded.optimizer).__name__}"
    iterations = int(keras.ops.convert_to_numpy(loaded.optimizer.iterations))
    assert iterations == 1, f"loaded optimizer has {iterations} iterations, saved after 1"
    loaded_loss = loaded.evaluate(images, targets, sample_weight=sample_weight, verbose=0, return_dict=True)["loss"]
    assert loaded_loss == pytest.approx(expected_loss, rel=1e-5), f"loss {loaded_loss} after loading, {expected_loss} before"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_config_round_trip(model_builder, name):
    model = model_builder(name, dropout=0.25, age_bias=40.0)

    rebuilt = FaceAgeModel.from_config(model.get_config())

    assert set(rebuilt.output_names) == set(model.output_names), f"rebuilt outputs are {rebuilt.output_names}"
    assert rebuilt.get_config() == model.get_config(), "rebuilt config differs"
    assert rebuilt.task.name == name, f"rebuilt task is {rebuilt.task.name}"
