"""The second training stage: fine-tuning the last backbone groups after training the heads."""

import json

import keras
import numpy as np
import pandas as pd
import pytest

from faceage_keras import training
from faceage_keras.callbacks import SelectBestEpoch
from faceage_keras.checkpoint import ResumeError
from faceage_keras.config import ConfigError, TrainConfig, load_config
from faceage_keras.dataset import FaceDataset
from faceage_keras.models import build_model, get_task
from faceage_keras.table import read_labels

TINY_BACKBONE = "test_efficientnet"
IMAGE_SIZE = 32
UNFROZEN_GROUPS = 2


def _backbone_state(model):
    module = model.get_layer("backbone").network.module
    return {key: value.detach().clone().numpy() for key, value in module.state_dict().items()}


def _trainable_parameter_names(model):
    module = model.get_layer("backbone").network.module
    return {name for name, parameter in module.named_parameters() if parameter.requires_grad}


def _split_state_keys(model, num_unfrozen):
    """Return the backbone state keys of the frozen and of the unfrozen groups, BatchNorm buffers included."""
    groups = model.get_layer("backbone").parameter_groups
    unfrozen_parameters = {name for group in groups[len(groups) - num_unfrozen :] for name in group}
    module_prefixes = {name.rsplit(".", 1)[0] for name in unfrozen_parameters}
    frozen, unfrozen = [], []
    for key in _backbone_state(model):
        prefix = key.rsplit(".", 1)[0]
        (unfrozen if key in unfrozen_parameters or prefix in module_prefixes else frozen).append(key)
    return frozen, unfrozen


def _config(**overrides):
    values = dict(
        model="m2",
        backbone=TINY_BACKBONE,
        weights="none",
        image_size=IMAGE_SIZE,
        freeze_backbone=True,
        cache_features=True,
        epochs=1,
        batch_size=8,
        finetune_stages=UNFROZEN_GROUPS,
        finetune_epochs=1,
        finetune_learning_rate=1e-2,
        workers=1,
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_unfreeze_sets_trainable_variables():
    model = build_model("m2", backbone=TINY_BACKBONE, image_size=IMAGE_SIZE, freeze_backbone=True)
    heads_only = len(model.trainable_weights)
    groups = model.get_layer("backbone").parameter_groups

    model.unfreeze_backbone_groups(UNFROZEN_GROUPS)

    expected = heads_only + sum(len(group) for group in groups[-UNFROZEN_GROUPS:])
    assert len(model.trainable_weights) == expected
    assert _trainable_parameter_names(model) == {name for group in groups[-UNFROZEN_GROUPS:] for name in group}


def test_unfreeze_rejects_invalid_group_counts():
    model = build_model("m2", backbone=TINY_BACKBONE, image_size=IMAGE_SIZE, freeze_backbone=True)
    num_groups = len(model.get_layer("backbone").parameter_groups)

    for invalid in (0, num_groups + 1, 1.5):
        with pytest.raises(ValueError, match="trainable_groups"):
            model.unfreeze_backbone_groups(invalid)


def test_unfrozen_groups_survive_save_and_load(small_face_folder, tmp_path):
    table, _ = read_labels(small_face_folder)
    model = build_model("m2", backbone=TINY_BACKBONE, image_size=IMAGE_SIZE, freeze_backbone=True)
    model.unfreeze_backbone_groups(UNFROZEN_GROUPS)
    model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9))
    model.fit(FaceDataset(table, "m2", image_size=IMAGE_SIZE, batch_size=8), epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")

    loaded = keras.models.load_model(tmp_path / "model.keras")

    assert loaded.unfrozen_backbone_groups == UNFROZEN_GROUPS
    assert len(loaded.trainable_weights) == len(model.trainable_weights)
    assert _trainable_parameter_names(loaded) == _trainable_parameter_names(model)
    for key, value in _backbone_state(model).items():
        np.testing.assert_array_equal(_backbone_state(loaded)[key], value, err_msg=key)


def test_patience_restarts_for_second_stage():
    select_best = SelectBestEpoch(get_task("m1"), None, patience=2)
    select_best.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    select_best.model.stop_training = False
    select_best.on_epoch_end(0, {"val_mae": 5.0})
    select_best.on_epoch_end(1, {"val_mae": 6.0})

    select_best.restart_patience(2)
    select_best.on_epoch_end(2, {"val_mae": 7.0})

    assert not select_best.model.stop_training, "the second stage stopped before `patience` epochs"
    select_best.on_epoch_end(3, {"val_mae": 7.0})
    assert select_best.model.stop_training
    assert select_best.best_epoch == 0


def test_two_stage_run(small_face_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    snapshots = {}
    original_finetune = training._finetune

    def recording_finetune(model, *args, **kwargs):
        snapshots["before"] = _backbone_state(model)
        test_data = original_finetune(model, *args, **kwargs)
        snapshots["after"] = _backbone_state(model)
        snapshots["keys"] = _split_state_keys(model, UNFROZEN_GROUPS)
        return test_data

    monkeypatch.setattr(training, "_finetune", recording_finetune)

    config = _config()
    run_dir = training.train(config, data=small_face_folder, run_dir=tmp_path / "run")

    frozen_keys, unfrozen_keys = snapshots["keys"]
    assert any(key.endswith("running_mean") for key in frozen_keys)
    for key in frozen_keys:
        np.testing.assert_array_equal(snapshots["after"][key], snapshots["before"][key], err_msg=key)
    for key in unfrozen_keys:
        if key.endswith(("weight", "running_mean")):
            assert not np.array_equal(snapshots["after"][key], snapshots["before"][key]), f"{key} did not train"

    history = pd.read_csv(run_dir / "history.csv")
    assert history["epoch"].tolist() == [0, 1]
    for column in ("loss", "mae", "val_loss", "val_mae"):
        assert history[column].notna().all(), f"a stage left column {column} empty"
    assert history["learning_rate"].tolist() == pytest.approx([config.learning_rate, config.finetune_learning_rate])

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [stage["stage"] for stage in metrics["stages"]] == ["heads", "finetune"]
    assert [stage["epochs"] for stage in metrics["stages"]] == [1, 1]
    assert metrics["stages"][0]["data"] == "cached features"
    assert metrics["best_stage"] in ("heads", "finetune")

    best_model = keras.models.load_model(run_dir / training.BEST_MODEL_FILE)
    expected_groups = UNFROZEN_GROUPS if metrics["best_stage"] == "finetune" else 0
    assert best_model.unfrozen_backbone_groups == expected_groups

    # The test predictions come from the saved full model run on images.
    from faceage_keras.run_evaluation import evaluate_run

    _, rescored = evaluate_run(run_dir)
    assert rescored["mae"] == pytest.approx(metrics["mae"], abs=1e-3)


def test_finetune_needs_frozen_backbone():
    with pytest.raises(ConfigError, match="finetune_stages.*freeze_backbone"):
        load_config(finetune_stages=1)


@pytest.mark.parametrize(
    ("setting", "value"),
    [("finetune_stages", -1), ("finetune_epochs", 0), ("finetune_learning_rate", 0.0), ("finetune_stages", "2")],
)
def test_finetune_settings_validated(setting, value):
    with pytest.raises(ConfigError, match=setting):
        load_config(freeze_backbone=True, **{setting: value})


def test_too_many_stages_rejected(small_face_folder, tmp_path):
    config = _config(finetune_stages=99)

    with pytest.raises(ConfigError, match="at most 6"):
        training.train(config, data=small_face_folder, run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "splits").exists(), "the run read its data before rejecting the setting"


def test_resume_of_finetune_run_rejected(tmp_path):
    with pytest.raises(ResumeError, match="finetune_stages"):
        training.train(_config(), run_dir=tmp_path / "run", resume=True)
