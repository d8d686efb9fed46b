"""Tests for the synthetic portrait set used when no real data is given."""

import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from faceage_keras.synthetic import draw_portrait, write_synthetic_dataset

# Sizes in the fast tests are small, because drawing cost grows with the area.
SMALL_SIZE = 48
OLD_MTIME_NS = 1_000_000_000 * 1_000_000_000  # 2001-09-09, far before any test run


def _read_labels(directory):
    return pd.read_csv(directory / "labels.csv")


def _image_arrays(directory):
    labels = _read_labels(directory)
    return [np.asarray(Image.open(directory / "images" / name)) for name in labels["image_name"]]


def _set_old_mtimes(directory):
    """Set every file's mtime to a fixed old time, so any rewrite shows as a change."""
    for path in directory.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(OLD_MTIME_NS, OLD_MTIME_NS))


def _changed_files(directory):
    return sorted(
        str(path.relative_to(directory))
        for path in directory.rglob("*")
        if path.is_file() and path.stat().st_mtime_ns != OLD_MTIME_NS
    )


def test_draw_portrait_rgb_of_requested_size():
    image = draw_portrait(30.0, 1, np.random.default_rng(0), size=SMALL_SIZE)

    assert image.mode == "RGB", f"expected an RGB image, got mode {image.mode}"
    assert image.size == (SMALL_SIZE, SMALL_SIZE), f"expected {SMALL_SIZE}x{SMALL_SIZE}, got {image.size}"


@pytest.mark.parametrize("age", [0.0, 1.0, 17.5, 45.0, 80.0, 95.0])
@pytest.mark.parametrize("gender", [0, 1])
def test_draw_portrait_accepts_all_ages_and_genders(age, gender):
    image = draw_portrait(age, gender, np.random.default_rng(1), size=32)

    assert image.size == (32, 32), f"age {age}, gender {gender}: got size {image.size}"


def test_draw_portrait_same_generator_state_same_pixels():
    first = np.asarray(draw_portrait(40.0, 0, np.random.default_rng(5), size=SMALL_SIZE))
    second = np.asarray(draw_portrait(40.0, 0, np.random.default_rng(5), size=SMALL_SIZE))
    other = np.asarray(draw_portrait(40.0, 0, np.random.default_rng(6), size=SMALL_SIZE))

    assert np.array_equal(first, second), "equal generator states gave different pixels"
    assert not np.array_equal(first, other), "different generator states gave identical pixels"


@pytest.mark.parametrize(
    "age, gender, size",
    [(-1.0, 0, 64), (float("nan"), 0, 64), (float("inf"), 1, 64), (30.0, 2, 64), (30.0, -1, 64), (30.0, 0, 8)],
)
def test_draw_portrait_rejects_invalid_arguments(age, gender, size):
    with pytest.raises(ValueError):
        draw_portrait(age, gender, np.random.default_rng(0), size=size)


def test_write_synthetic_dataset_same_seed_identical(tmp_path):
    first = write_synthetic_dataset(tmp_path / "first", num_images=6, seed=3, size=SMALL_SIZE)
    second = write_synthetic_dataset(tmp_path / "second", num_images=6, seed=3, size=SMALL_SIZE)

    first_labels = _read_labels(first)
    second_labels = _read_labels(second)
    assert first_labels.equals(second_labels), "equal seeds gave different labels"
    for name in first_labels["image_name"]:
        first_bytes = (first / "images" / name).read_bytes()
        second_bytes = (second / "images" / name).read_bytes()
        assert first_bytes == second_bytes, f"equal seeds gave different bytes for {name}"


def test_write_synthetic_dataset_other_seed_differs(tmp_path):
    first = write_synthetic_dataset(tmp_path / "first", num_images=6, seed=3, size=SMALL_SIZE)
    other = write_synthetic_dataset(tmp_path / "other", num_images=6, seed=4, size=SMALL_SIZE)

    first_ages = _read_labels(first)["age"].tolist()
    other_ages = _read_labels(other)["age"].tolist()
    assert first_ages != other_ages, "different seeds gave identical ages"
    first_pixels = _image_arrays(first)
    other_pixels = _image_arrays(other)
    assert not any(
        np.array_equal(a, b) for a, b in zip(first_pixels, other_pixels)
    ), "different seeds gave an identical image at the same index"


def test_write_synthetic_dataset_prefix_stable_across_counts(tmp_path):
    small = write_synthetic_dataset(tmp_path / "small", num_images=3, seed=9, size=SMALL_SIZE)
    large = write_synthetic_dataset(tmp_path / "large", num_images=5, seed=9, size=SMALL_SIZE)

    small_labels = _read_labels(small)
    large_labels = _read_labels(large).head(3)
    assert small_labels.equals(large_labels), "the first labels changed with num_images"
    for name in small_labels["image_name"]:
        small_bytes = (small / "images" / name).read_bytes()
        large_bytes = (large / "images" / name).read_bytes()
        assert small_bytes == large_bytes, f"image {name} changed with num_images"


def test_write_synthetic_dataset_csv_and_images_valid(tmp_path):
    num_images = 40
    directory = write_synthetic_dataset(tmp_path / "set", num_images=num_images, seed=0, size=SMALL_SIZE)
    labels = _read_labels(directory)

    assert directory == tmp_path / "set", f"returned {directory}, expected {tmp_path / 'set'}"
    assert list(labels.columns) == ["image_name", "age", "gender"], f"unexpected columns {list(labels.columns)}"
    assert len(labels) == num_images, f"expected {num_images} rows, got {len(labels)}"
    assert labels["image_name"].is_unique, "image names are not unique"
    assert labels["age"].between(1, 80).all(), f"ages out of 1-80: {sorted(labels['age'])}"
    assert set(labels["gender"]) == {"Male", "Female"}, f"unexpected genders {set(labels['gender'])}"
    for name in labels["image_name"]:
        path = directory / "images" / name
        assert path.is_file(), f"listed image {path} is missing"
        with Image.open(path) as image:
            assert image.mode == "RGB", f"{name} has mode {image.mode}, expected RGB"
            assert image.size == (SMALL_SIZE, SMALL_SIZE), f"{name} has size {image.size}"


def test_write_synthetic_dataset_marker_records_arguments(tmp_path):
    directory = write_synthetic_dataset(tmp_path, num_images=2, seed=7, size=SMALL_SIZE)
    marker = json.loads((directory / "synthetic.json").read_text(encoding="utf-8"))

    assert marker["num_images"] == 2, f"marker records num_images {marker['num_images']}"
    assert marker["seed"] == 7, f"marker records seed {marker['seed']}"
    assert marker["size"] == SMALL_SIZE, f"marker records size {marker['size']}"


def test_write_synthetic_dataset_reuses_complete_set(tmp_path):
    write_synthetic_dataset(tmp_path, num_images=4, seed=1, size=SMALL_SIZE)
    _set_old_mtimes(tmp_path)

    write_synthetic_dataset(tmp_path, num_images=4, seed=1, size=SMALL_SIZE)

    assert _changed_files(tmp_path) == [], f"a reuse rewrote {_changed_files(tmp_path)}"


@pytest.mark.parametrize("changed_argument", [{"num_images": 5}, {"seed": 2}, {"size": 40}])
def test_write_synthetic_dataset_other_arguments_regenerate(tmp_path, changed_argument):
    arguments = {"num_images": 4, "seed": 1, "size": SMALL_SIZE}
    write_synthetic_dataset(tmp_path, **arguments)
    _set_old_mtimes(tmp_path)

    write_synthetic_dataset(tmp_path, **{**arguments, **changed_argument})
    changed = _changed_files(tmp_path)
    labels = _read_labels(tmp_path)

    assert "labels.csv" in changed, f"labels.csv not rewritten for {changed_argument}"
    assert "synthetic.json" in changed, f"synthetic.json not rewritten for {changed_argument}"
    assert os.path.join("images", labels["image_name"][0]) in changed, f"images not redrawn for {changed_argument}"


def test_write_synthetic_dataset_redraws_without_marker(tmp_path):
    write_synthetic_dataset(tmp_path, num_images=3, seed=1, size=SMALL_SIZE)
    # A write interrupted before its last step leaves no marker.
    (tmp_path / "synthetic.json").unlink()
    _set_old_mtimes(tmp_path)

    write_synthetic_dataset(tmp_path, num_images=3, seed=1, size=SMALL_SIZE)
    changed = _changed_files(tmp_path)

    assert "labels.csv" in changed, "labels.csv was reused although the marker was missing"
    assert (tmp_path / "synthetic.json").is_file(), "the marker was not written again"


def test_write_synthetic_dataset_redraws_missing_image(tmp_path):
    write_synthetic_dataset(tmp_path, num_images=3, seed=1, size=SMALL_SIZE)
    missing = tmp_path / "images" / _read_labels(tmp_path)["image_name"][1]
    missing.unlink()

    write_synthetic_dataset(tmp_path, num_images=3, seed=1, size=SMALL_SIZE)

    assert missing.is_file(), f"{missing} was not redrawn"


def test_write_synthetic_dataset_removes_stale_images(tmp_path):
    write_synthetic_dataset(tmp_path, num_images=5, seed=1, size=SMALL_SIZE)
    write_synthetic_dataset(tmp_path, num_images=2, seed=1, size=SMALL_SIZE)

    listed = set(_read_labels(tmp_path)["image_name"])
    on_disk = {path.name for path in (tmp_path / "images").iterdir()}
    assert on_disk == listed, f"images not in labels.csv remain: {sorted(on_disk - listed)}"


@pytest.mark.parametrize(
    "arguments",
    [{"num_images": 0}, {"num_images": 2.5}, {"seed": -1}, {"size": 8}, {"size": 64.5}],
)
def test_write_synthetic_dataset_rejects_invalid_arguments(tmp_path, arguments):
    with pytest.raises(ValueError):
        write_synthetic_dataset(tmp_path, **arguments)


def _region(array, top, bottom, left, right):
    """Return the rows and columns of `array` between the given fractions of its height and width."""
    height, width = array.shape[:2]
    return array[int(top * height) : int(bottom * height), int(left * width) : int(right * width)]


def _pixel_features(path):
    """Compute simple pixel statistics of one image, resampled to 64 px.

    The features are a 16x16 grayscale thumbnail and an 8x8 map of edge
    strength, which shows wrinkles, beards and hair edges. They also contain
    the saturation, brightness and edge strength in horizontal bands of the
    central columns (hair, forehead, eyes, mouth, chin) and the share of red
    pixels around the mouth, which shows lipstick.
    """
    with Image.open(path) as image:
        image = image.convert("RGB").resize((64, 64), Image.Resampling.BOX)
    rgb = np.asarray(image, dtype=np.float32) / 255.0
    gray = rgb.mean(axis=2)

    thumbnail = np.asarray(image.convert("L").resize((16, 16), Image.Resampling.BOX), dtype=np.float32) / 255.0
    edges = np.abs(np.diff(gray, axis=0))[:, :-1] + np.abs(np.diff(gray, axis=1))[:-1, :]
    edge_map = np.asarray(Image.fromarray(edges).resize((8, 8), Image.Resampling.BOX))

    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    brightness = rgb.max(axis=2)
    band_statistics = []
    for top, bottom in [(0.15, 0.25), (0.22, 0.32), (0.3, 0.4), (0.4, 0.52), (0.52, 0.65), (0.65, 0.8)]:
        for channel in (saturation, brightness, edges):
            band_statistics.append(_region(channel, top, bottom, 0.3, 0.7).mean())

    mouth = _region(rgb, 0.45, 0.85, 0.3, 0.7)
    red_share = (mouth[..., 0] - mouth[..., 1] > 0.3).mean()
    return np.concatenate([thumbnail.ravel(), edge_map.ravel(), band_statistics, [red_share]])


@pytest.fixture(scope="module")
def signal_dataset(tmp_path_factory):
    """Return features, ages and genders of 600 portraits, 400 for training and 200 held out."""
    # 64 px keeps the test fast. The drawn shapes scale with the image size, so the cues are the same as at 128 px.
    directory = write_synthetic_dataset(tmp_path_factory.mktemp("signal"), num_images=600, seed=0, size=64)
    labels = _read_labels(directory)
    features = np.stack([_pixel_features(directory / "images" / name) for name in labels["image_name"]])
    ages = labels["age"].to_numpy(dtype=float)
    genders = (labels["gender"] == "Female").to_numpy(dtype=int)
    return features, ages, genders


def test_synthetic_ages_learnable_by_ridge(signal_dataset):
    linear_model = pytest.importorskip("sklearn.linear_model")
    pipeline = pytest.importorskip("sklearn.pipeline")
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    features, ages, _ = signal_dataset

    model = pipeline.make_pipeline(
        preprocessing.StandardScaler(), linear_model.RidgeCV(alphas=np.logspace(-1, 4, 12))
    )
    model.fit(features[:400], ages[:400])
    model_mae = np.abs(model.predict(features[400:]) - ages[400:]).mean()
    mean_mae = np.abs(ages[:400].mean() - ages[400:]).mean()

    # Measured with seed 0: MAE 11.2 years against 17.4 for the mean (ratio 0.64).
    # Seeds 1-5 gave ratios from 0.57 to 0.64.
    assert model_mae <= 0.8 * mean_mae, (
        f"ridge MAE {model_mae:.2f} is above 0.8 x the mean-prediction MAE {mean_mae:.2f}"
    )


def test_synthetic_genders_learnable_by_logistic(signal_dataset):
    linear_model = pytest.importorskip("sklearn.linear_model")
    pipeline = pytest.importorskip("sklearn.pipeline")
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    features, _, genders = signal_dataset

    model = pipeline.make_pipeline(
        preprocessing.StandardScaler(), linear_model.LogisticRegression(C=0.05, max_iter=2000)
    )
    model.fit(features[:400], genders[:400])
    accuracy = (model.predict(features[400:]) == genders[400:]).mean()

    # Measured with seed 0: accuracy 0.785. Seeds 1-5 gave 0.74 to 0.835.
    assert accuracy >= 0.7, f"logistic regression accuracy {accuracy:.3f} is below 0.7"
