"""Training heads from cached backbone features of a frozen backbone."""

import json

import keras
import numpy as np
import pytest

from faceage_keras.config import ConfigError, TrainConfig, load_config
from faceage_keras.dataset import FaceDataset
from faceage_keras.feature_cache import FeatureDataset, cached_features, compute_features, head_model
from faceage_keras.models import MODEL_NAMES, build_model
from faceage_keras.table import read_labels
from faceage_keras.training import train

TINY_BACKBONE = "test_efficientnet"
IMAGE_SIZE = 32


def _table(folder):
    table, _ = read_labels(folder)
    return table


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_heads_on_features_match_full_model(name, small_face_folder):
    table = _table(small_face_folder).head(12)
    model = build_model(name, backbone=TINY_BACKBONE, image_size=IMAGE_SIZE, freeze_backbone=True)
    images = FaceDataset(table, name, image_size=IMAGE_SIZE, batch_size=12)[0][0]

    features = compute_features(model, table, image_size=IMAGE_SIZE, batch_size=5)
    from_images = model.predict(images, verbose=0)
    from_features = head_model(model).predict(features, verbose=0)

    assert set(from_features) == set(from_images)
    for output in from_images:
        np.testing.assert_allclose(from_features[output], from_images[output], atol=1e-5, err_msg=output)


def test_head_model_shares_weights(small_face_folder):
    model = build_model("m2", backbone=TINY_BACKBONE, image_size=IMAGE_SIZE, freeze_backbone=True)
    heads = head_model(model)

    heads.get_layer("age").bias.assign(np.array([50.0], dtype="float32"))

    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.get_layer("age").bias), [50.0])


def test_cache_reused_and_keyed(small_face_folder, tmp_path):
    table = _table(small_face_folder)
    model = build_model("m2", backbone=TINY_BACKBONE, image_size=IMAGE_SIZE, freeze_backbone=True)
    options = {"image_size": IMAGE_SIZE, "batch_size": 16}

    first = cached_features(model, table, tmp_path, **options)
    second = cached_features(model, table, tmp_path, **options)
    subset = cached_features(model, table.head(10), tmp_path, **options)

    np.testing.assert_array_equal(first, second)
    assert len(list(tmp_path.glob("*.npy"))) == 2, "a new table must get its own cache entry"
    np.testing.assert_allclose(subset, first[:10], atol=1e-5)


def test_augmented_views_differ(small_face_folder):
    table = _table(small_face_folder).head(8)
    model = build_model("m2", backbone=TINY_BACKBONE, image_size=IMAGE_SIZE, freeze_backbone=True)

    views = compute_features(model, table, image_size=IMAGE_SIZE, batch_size=8, views=2, augment=TrainConfig().augment)

    assert views.shape[:2] == (2, 8)
    assert not np.allclose(views[0], views[1]), "two augmented views gave the same features"


def test_feature_dataset_rotates_views(small_face_folder):
    table = _table(small_face_folder).head(8)
    views = np.stack([np.zeros((8, 4)), np.ones((8, 4))]).astype("float32")
    data = FeatureDataset(views, table, build_model("m2", backbone=TINY_BACKBONE, image_size=IMAGE_SIZE).task,
                          batch_size=8, training=True)

    first = data[0][0].copy()
    data.on_epoch_end()
    second = data[0][0]

    assert first.mean() != second.mean(), "the next epoch did not read the next view"


def test_cache_needs_frozen_backbone():
    with pytest.raises(ConfigError, match="freeze_backbone"):
        load_config(cache_features=True)


@pytest.mark.slow
def test_cached_run_matches_its_saved_model(utkface_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config = TrainConfig(
        model="m5",
        backbone=TINY_BACKBONE,
        weights="none",
        image_size=IMAGE_SIZE,
        freeze_backbone=True,
        cache_features=True,
        balance="oversample",
        epochs=3,
        learning_rate=1e-2,
        limit=300,
        workers=1,
    )

    run_dir = train(config, data=utkface_dir, run_dir=tmp_path / "run")

    assert list((tmp_path / "cache" / "faceage_keras" / "features").glob("*.npy")), "no features were cached"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["cache_features"] is True
    assert metrics["balance"] == "oversample"

    # The saved full model, run on images, gives the test MAE the run reported from features.
    from faceage_keras.run_evaluation import evaluate_run

    _, rescored = evaluate_run(run_dir)
    assert rescored["mae"] == pytest.approx(metrics["mae"], abs=1e-3)
