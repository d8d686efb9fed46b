"""The GPU speed options channels_last and mixed_precision, smoke-tested on CPU."""

import json
import math

import numpy as np
import pytest
import torch

from faceage_keras.acceleration import apply_gpu_options
from faceage_keras.config import ConfigError, TrainConfig, load_config
from faceage_keras.models import build_model
from faceage_keras.synthetic import write_synthetic_dataset
from faceage_keras.training import train


def _model(tiny_backbone):
    return build_model("m1", backbone=tiny_backbone, weights="none", image_size=32)


def _images():
    return np.random.default_rng(0).uniform(-1, 1, size=(4, 32, 32, 3)).astype("float32")


def test_channels_last_keeps_outputs(tiny_backbone):
    model = _model(tiny_backbone)
    expected = model.predict(_images(), verbose=0)

    apply_gpu_options(model, channels_last=True)

    convolutions = [weight for weight in model.get_layer("backbone").network.module.parameters() if weight.ndim == 4]
    assert all(weight.is_contiguous(memory_format=torch.channels_last) for weight in convolutions), "weights not NHWC"
    outputs = model.predict(_images(), verbose=0)
    for name in expected:
        np.testing.assert_allclose(outputs[name], expected[name], rtol=1e-4, atol=1e-4, err_msg=name)


def test_bfloat16_backbone_returns_float32(tiny_backbone):
    model = _model(tiny_backbone)
    expected = model.predict(_images(), verbose=0)

    apply_gpu_options(model, mixed_precision="bfloat16")

    outputs = model.predict(_images(), verbose=0)
    assert outputs["age"].dtype == np.float32, "the age output is not float32"
    # bfloat16 keeps 8 significant bits, so the outputs move by about 1%.
    np.testing.assert_allclose(outputs["age"], expected["age"], rtol=0.05)
    assert not np.array_equal(outputs["age"], expected["age"]), "the backbone did not run in bfloat16"


def test_apply_gpu_options_rejects_float16(tiny_backbone):
    with pytest.raises(ValueError, match="bfloat16"):
        apply_gpu_options(_model(tiny_backbone), mixed_precision="float16")


def test_config_rejects_float16():
    with pytest.raises(ConfigError, match="mixed_precision"):
        load_config(mixed_precision="float16")


def test_train_with_gpu_options_on_cpu(tiny_backbone, tmp_path):
    faces = write_synthetic_dataset(tmp_path / "faces", num_images=40, seed=1, size=48)
    config = TrainConfig(
        model="m2",
        backbone=tiny_backbone,
        weights="none",
        image_size=32,
        epochs=1,
        batch_size=16,
        workers=1,
        channels_last=True,
        mixed_precision="bfloat16",
    )

    run_dir = train(config, data=faces, run_dir=tmp_path / "run")

    assert math.isfinite(json.loads((run_dir / "metrics.json").read_text())["mae"]), "test MAE is not finite"
