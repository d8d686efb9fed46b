"""Tests for the historical-photograph look: each effect, determinism, config and training wiring."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from faceage_keras.augment import AugmentConfig, augment_face
from faceage_keras.config import ConfigError, TrainConfig, load_config
from faceage_keras.dataset import FaceDataset
from faceage_keras.historical import (
    EFFECTS,
    EVALUATION_LOOK,
    HistoricalLook,
    apply_historical_look,
    render_historical,
)
from faceage_keras.plots import plot_historical_look
from faceage_keras.table import read_labels
from faceage_keras.training import train

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = 64
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# Helpers.


def _face():
    """A bluish 64 px test image: smooth colour ramps, a black square with sharp edges and a white bar."""
    ramp = np.linspace(0.0, 1.0, SIZE)
    x, y = np.meshgrid(ramp, ramp)
    image = np.stack([60 + 100 * x, 70 + 90 * y, 150 + 80 * (1 - x)], axis=-1)
    image[24:40, 24:40] = 0
    image[8:12, 8:56] = 255
    return image.astype("uint8")


def _gray(value=150):
    return np.full((SIZE, SIZE, 3), value, dtype="uint8")


def _only(effect, strength=1.0):
    return HistoricalLook.single_effect(effect, strength)


def _render(image, look, seed=0):
    return apply_historical_look(image, look, np.random.default_rng(seed))


def _gradient_energy(image):
    pixels = image.astype("float64").mean(axis=-1)
    return float(np.mean(np.diff(pixels, axis=0) ** 2) + np.mean(np.diff(pixels, axis=1) ** 2))


def _high_frequency_energy(image):
    # Mean squared Laplacian: near 0 on smooth ramps, large on pixel-scale noise.
    pixels = image.astype("float64").mean(axis=-1)
    laplacian = 4 * pixels[1:-1, 1:-1] - pixels[:-2, 1:-1] - pixels[2:, 1:-1] - pixels[1:-1, :-2] - pixels[1:-1, 2:]
    return float(np.mean(laplacian**2))


# Each effect alone.


def test_grayscale_equalises_channels():
    image = _face()

    output = _render(image, _only("grayscale"))

    channels = output.astype("int16")
    assert np.abs(channels[..., 0] - channels[..., 1]).max() <= 1, "R and G differ after grayscale"
    assert np.abs(channels[..., 1] - channels[..., 2]).max() <= 1, "G and B differ after grayscale"
    assert np.abs(image[..., 0].astype("int16") - image[..., 2]).max() > 50, "the test image has no colour"


def test_sepia_orders_channels():
    image = _face()

    output = _render(image, _only("sepia")).astype("float64")

    red, green, blue = (output[..., channel].mean() for channel in range(3))
    assert image[..., 2].mean() > image[..., 0].mean(), "the test image is not bluish"
    assert red > green, f"mean R {red:.1f} is not above mean G {green:.1f}"
    assert green > blue, f"mean G {green:.1f} is not above mean B {blue:.1f}"
    assert np.all(output[..., 0] >= output[..., 2]), "a pixel is bluer than red after sepia"


def test_fade_lowers_contrast_and_raises_blacks():
    image = _face()

    output = _render(image, _only("fade"))

    assert output.std() < 0.8 * image.std(), f"std {output.std():.1f} was {image.std():.1f}"
    assert image.min() == 0, "the test image has no black pixel"
    # Full strength raises black to 30% of the range.
    assert output.min() >= 70, f"minimum is {output.min()}"
    assert output.max() < image.max(), f"maximum {output.max()} was not lowered from {image.max()}"


def test_grain_adds_high_frequencies():
    image = _face()

    output = _render(image, _only("grain"))

    before, after = _high_frequency_energy(image), _high_frequency_energy(output)
    assert after > 2 * before, f"high-frequency energy {after:.0f} was {before:.0f}"
    assert abs(output.astype("float64").mean() - image.mean()) < 5, "grain shifted the brightness"


def test_grain_is_monochrome():
    output = _render(_gray(), _only("grain")).astype("int16")

    np.testing.assert_array_equal(output[..., 0], output[..., 2], err_msg="grain differs between channels")


def test_grain_on_large_image():
    # Above 128 px the grain is drawn on a coarser grid and resized.
    image = np.full((300, 260, 3), 128, dtype="uint8")

    output = _render(image, _only("grain"))

    assert output.shape == image.shape, f"shape is {output.shape}"
    assert output.std() > 10, f"grain std is {output.std():.1f} of 255"


def test_blur_lowers_gradient_energy():
    image = _face()

    output = _render(image, _only("blur"))

    before, after = _gradient_energy(image), _gradient_energy(output)
    assert after < 0.7 * before, f"gradient energy {after:.0f} was {before:.0f}"


def test_vignette_darkens_corners():
    image = _gray()

    output = _render(image, _only("vignette")).astype("float64")

    centre = output[28:36, 28:36].mean()
    corners = np.mean([output[:6, :6].mean(), output[:6, -6:].mean(), output[-6:, :6].mean(), output[-6:, -6:].mean()])
    assert corners < 0.7 * centre, f"corners {corners:.1f}, centre {centre:.1f}"
    assert centre > 130, f"the centre darkened to {centre:.1f} from 150"


def test_jpeg_differs_but_close():
    image = _face()

    output = _render(image, _only("jpeg"))

    difference = np.abs(output.astype("float64") - image)
    assert difference.max() > 0, "JPEG compression changed nothing"
    assert difference.mean() < 12, f"JPEG changed pixels by {difference.mean():.1f} on average"


def test_scratches_draw_thin_light_lines():
    image = _gray(100)

    output = _render(image, _only("scratches")).astype("int16")

    changed = np.abs(output - image).max(axis=-1) > 10
    assert 0.005 < changed.mean() < 0.15, f"scratches changed {changed.mean():.1%} of the pixels"
    assert np.all(output[changed] > 100), "a scratch darkened a pixel"
    # A scratch runs top to bottom, so it changes many rows but few pixels in each.
    rows_hit = changed.any(axis=1).mean()
    assert rows_hit > 0.5, f"scratches touch {rows_hit:.0%} of the rows"
    assert changed.sum(axis=1).max() <= 0.3 * SIZE, "a row has too many changed pixels for thin lines"


def test_dust_changes_small_spots():
    image = _gray(120)

    output = _render(image, _only("dust")).astype("int16")

    changed = np.abs(output - image).max(axis=-1) > 10
    assert 0.002 < changed.mean() < 0.15, f"dust changed {changed.mean():.1%} of the pixels"
    assert (output > 130).any(), "no light specks"
    assert (output < 110).any(), "no dark specks"


@pytest.mark.parametrize("effect", EFFECTS)
def test_effect_keeps_shape_and_dtype(effect):
    output = _render(_face(), _only(effect))

    assert output.shape == (SIZE, SIZE, 3), f"{effect} changed the shape to {output.shape}"
    assert output.dtype == np.uint8, f"{effect} changed the dtype to {output.dtype}"
    assert not np.array_equal(output, _face()), f"{effect} at full strength changed nothing"


@pytest.mark.parametrize("effect", [effect for effect in EFFECTS if effect != "jpeg"])
def test_zero_strength_is_identity(effect):
    image = _face()

    output = _render(image, _only(effect, strength=0.0))

    np.testing.assert_array_equal(output, image, err_msg=f"{effect} at strength 0 changed the image")


def test_jpeg_zero_strength_is_mild():
    image = _face()

    output = _render(image, _only("jpeg", strength=0.0))
    strongest = _render(image, _only("jpeg", strength=1.0))

    # Strength 0 still compresses, at quality 90.
    mild = np.abs(output.astype("float64") - image).mean()
    strong = np.abs(strongest.astype("float64") - image).mean()
    assert mild < 2, f"JPEG at strength 0 changed pixels by {mild:.2f} on average"
    assert strong > 2 * mild, f"JPEG at strength 1 changed pixels by {strong:.2f}, at 0 by {mild:.2f}"


# Probabilities, determinism and input types.


def test_probability_zero_is_identity():
    image = _face()
    look = dataclasses.replace(HistoricalLook(), probability=0.0)

    outputs = [_render(image, look, seed) for seed in range(20)]

    for output in outputs:
        np.testing.assert_array_equal(output, image, err_msg="probability 0 changed the image")


def test_effect_probabilities_zero_is_identity():
    image = _face()
    look = HistoricalLook(probability=1.0, **{effect: 0.0 for effect in EFFECTS})

    output = _render(image, look)

    np.testing.assert_array_equal(output, image, err_msg="no drawn effect, yet the image changed")


def test_probability_sets_share_of_faces():
    image = _face()
    look = dataclasses.replace(_only("grayscale"), probability=0.3)
    rng = np.random.default_rng(0)

    changed = [not np.array_equal(apply_historical_look(image, look, rng), image) for _ in range(400)]

    assert 0.2 < np.mean(changed) < 0.4, f"{np.mean(changed):.0%} of faces got the look with probability 0.3"


def test_same_seed_same_output():
    image = _face()
    look = dataclasses.replace(HistoricalLook(), probability=1.0)

    first = _render(image, look, seed=7)
    second = _render(image, look, seed=7)

    np.testing.assert_array_equal(first, second, err_msg="one seed gave two outputs")


def test_different_seeds_differ():
    image = _face()

    first = render_historical(image, 1)
    second = render_historical(image, 2)

    assert not np.array_equal(first, second), "seeds 1 and 2 gave the same rendering"


def test_render_historical_accepts_seed_tuple():
    image = _face()

    first = render_historical(image, (42, 3))
    again = render_historical(image, (42, 3))
    other = render_historical(image, (42, 4))

    np.testing.assert_array_equal(first, again, err_msg="one seed tuple gave two renderings")
    assert not np.array_equal(first, other), "faces 3 and 4 got the same rendering"


def test_render_historical_always_applies_look():
    image = _face()

    outputs = [render_historical(image, seed) for seed in range(10)]

    for output in outputs:
        assert not np.array_equal(output, image), "the evaluation look left a face unchanged"


def test_pil_input_matches_array():
    image = _face()

    from_array = render_historical(image, 5)
    from_pil = render_historical(Image.fromarray(image), 5)

    assert isinstance(from_pil, Image.Image), f"PIL input gave {type(from_pil).__name__}"
    assert from_pil.size == (SIZE, SIZE), f"size is {from_pil.size}"
    assert from_pil.mode == "RGB", f"mode is {from_pil.mode}"
    np.testing.assert_array_equal(np.asarray(from_pil), from_array, err_msg="PIL and array inputs differ")


def test_input_not_modified():
    image = _face()
    copy = image.copy()

    render_historical(image, 0)

    np.testing.assert_array_equal(image, copy, err_msg="the input array was modified")


def test_non_square_image_keeps_shape():
    image = np.ascontiguousarray(np.concatenate([_face(), _face()], axis=1)[:40])

    output = render_historical(image, 0)

    assert output.shape == (40, 2 * SIZE, 3), f"shape is {output.shape}"


@pytest.mark.parametrize(
    "image",
    [np.zeros((SIZE, SIZE, 3), dtype="float32"), np.zeros((SIZE, SIZE), dtype="uint8"), Image.new("L", (8, 8))],
    ids=["float-array", "gray-array", "gray-pil"],
)
def test_invalid_image_raises(image):
    with pytest.raises(ValueError, match="RGB"):
        render_historical(image, 0)


# Config validation.


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"probability": -0.1}, "probability"),
        ({"sepia": 1.5}, "sepia"),
        ({"grain_strength": "strong"}, "grain_strength"),
        ({"blur": True}, "blur"),
        ({"jitter": None}, "jitter"),
    ],
    ids=lambda value: str(value),
)
def test_invalid_value_names_field(values, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        HistoricalLook(**values)


def test_from_dict_rejects_unknown_key():
    with pytest.raises(ValueError) as error:
        HistoricalLook.from_dict({"sepai": 0.5})

    message = str(error.value)
    assert "sepai" in message, f"message does not name the unknown key: {message}"
    assert "sepia_strength" in message, f"message does not list the accepted keys: {message}"


def test_from_dict_rejects_non_table():
    with pytest.raises(ValueError, match="table"):
        HistoricalLook.from_dict(0.8)


def test_from_dict_keeps_defaults():
    look = HistoricalLook.from_dict({"sepia": 0.9})

    assert look.sepia == 0.9, "the given value was not used"
    assert look.grain == HistoricalLook().grain, "a missing key did not keep its default"


def test_look_is_frozen():
    look = HistoricalLook()

    with pytest.raises(dataclasses.FrozenInstanceError):
        look.sepia = 1.0


def test_single_effect_rejects_unknown_effect():
    with pytest.raises(ValueError, match="colour"):
        HistoricalLook.single_effect("colour")


def test_evaluation_look_is_fixed():
    assert EVALUATION_LOOK.probability == 1.0, "the evaluation look is not applied to every face"
    assert EVALUATION_LOOK.jitter == 0.0, "the evaluation look draws random amounts"
    for effect in EFFECTS:
        assert getattr(EVALUATION_LOOK, effect) in (0.0, 1.0), f"{effect} is drawn at random in the evaluation look"


# Training config and data set.


def test_augment_config_off_by_default():
    assert AugmentConfig().historical is None, "the look is on by default"
    assert load_config(None).augment.historical is None, "the default TrainConfig turns the look on"


def test_augment_config_reads_table():
    config = AugmentConfig(historical={"probability": 0.5, "sepia": 1.0})

    assert isinstance(config.historical, HistoricalLook), f"historical is {type(config.historical).__name__}"
    assert config.historical.probability == 0.5, "the table's probability was not used"


def test_augment_config_rejects_other_types():
    with pytest.raises(ValueError, match="historical"):
        AugmentConfig(historical=0.8)


def test_load_config_reads_historical_table(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(
        'model = "m2"\n[augment]\nrotation_degrees = 3.0\n[augment.historical]\nprobability = 0.6\nsepia = 0.5\n'
    )

    config = load_config(path)

    assert isinstance(config.augment.historical, HistoricalLook), "the [augment.historical] table was not read"
    assert config.augment.historical.probability == 0.6, "probability was not read"
    assert config.augment.historical.sepia == 0.5, "sepia was not read"
    assert config.augment.rotation_degrees == 3.0, "the rest of [augment] was lost"


def test_load_config_inline_historical_table(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('model = "m2"\naugment.historical = { probability = 0.8, grain = 1.0 }\n')

    config = load_config(path)

    assert config.augment.historical.grain == 1.0, "the inline table was not read"


@pytest.mark.parametrize(
    ("table", "message"),
    [("sepai = 0.5", "sepai"), ("sepia = -1.0", "sepia"), ('probability = "often"', "probability")],
)
def test_load_config_invalid_historical_raises(tmp_path, table, message):
    path = tmp_path / "config.toml"
    path.write_text(f'model = "m2"\n[augment.historical]\n{table}\n')

    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_saved_config_round_trips_look(tmp_path):
    config = load_config(None, augment={"historical": {"sepia": 0.9, "jpeg_strength": 0.2}})
    path = tmp_path / "config.json"
    config.save(path)

    loaded = load_config(path)

    assert loaded.augment.historical == config.augment.historical, "config.json lost the look"
    assert json.loads(path.read_text())["augment"]["historical"]["sepia"] == 0.9, "config.json lacks the look"


def test_historical_experiment_config_turns_look_on():
    plain = load_config(REPO / "experiments" / "cpu" / "m2.toml")
    historical = load_config(REPO / "experiments" / "cpu" / "m2-historical.toml")

    assert plain.augment.historical is None, "m2.toml turns the look on"
    assert historical.augment.historical is not None, "m2-historical.toml does not turn the look on"
    same_otherwise = dataclasses.replace(historical, augment=plain.augment) == plain
    assert same_otherwise, "m2-historical.toml changes more than the look"


def test_augment_face_applies_look():
    image = Image.fromarray(_face())
    plain = AugmentConfig()
    gray = AugmentConfig(historical=_only("grayscale"))

    plain_output = np.asarray(augment_face(image, 32, plain, np.random.default_rng(0))).astype("int16")
    gray_output = np.asarray(augment_face(image, 32, gray, np.random.default_rng(0))).astype("int16")

    assert np.abs(plain_output[..., 0] - plain_output[..., 2]).max() > 10, "the face lost its colour without the look"
    assert np.abs(gray_output[..., 0] - gray_output[..., 2]).max() <= 1, "the grayscale look was not applied"


@pytest.fixture
def face_table(small_face_folder):
    table, _ = read_labels(small_face_folder)
    return table


def test_dataset_with_look_differs(face_table):
    options = dict(image_size=32, batch_size=8, training=True, seed=3)
    plain = FaceDataset(face_table, "m2", augment=AugmentConfig(), **options)
    historical = FaceDataset(
        face_table, "m2", augment=AugmentConfig(historical=HistoricalLook(probability=1.0)), **options
    )

    plain_images, plain_targets = plain[0]
    historical_images, historical_targets = historical[0]

    np.testing.assert_array_equal(plain_targets["age"], historical_targets["age"], err_msg="the look changed the order")
    assert not np.array_equal(plain_images, historical_images), "the look did not change the batch"


def test_dataset_grayscale_look_reaches_every_face(face_table):
    look = AugmentConfig(historical=_only("grayscale"))
    dataset = FaceDataset(face_table, "m2", image_size=32, batch_size=8, training=True, seed=3, augment=look)

    images, _ = dataset[0]

    # One uint8 step is 2 / 255 in the [-1, 1] range.
    spread = np.abs(images[..., 0] - images[..., 2]).max(axis=(1, 2))
    assert np.all(spread <= 2.5 / 255), f"channel spread per face: {spread}"


def test_dataset_evaluation_ignores_look(face_table):
    look = AugmentConfig(historical=HistoricalLook(probability=1.0))
    plain = FaceDataset(face_table, "m2", image_size=32, batch_size=8)
    historical = FaceDataset(face_table, "m2", image_size=32, batch_size=8, augment=look)

    np.testing.assert_array_equal(plain[0][0], historical[0][0], err_msg="the look reached evaluation batches")


# Figure.


def test_plot_historical_look_writes_png(tmp_path):
    faces = [_face(), _gray(), np.ascontiguousarray(_face()[::-1])]

    path = plot_historical_look(faces, tmp_path / "figure" / "look.png", captions=["a", "b", "c"])

    assert path.read_bytes()[:8] == PNG_SIGNATURE, "the figure is not a PNG"
    with Image.open(path) as image:
        width, height = image.size
    # Ten columns: the original and each of the nine effects.
    assert width >= 10 * SIZE, f"figure is {width} px wide"
    assert height >= 4 * SIZE, f"figure is {height} px high"


def test_invoke_figure_historical(small_face_folder, tmp_path):
    output = tmp_path / "look.png"
    command = [sys.executable, "-m", "invoke", "--search-root", str(REPO), "figure-historical"]
    command += ["--data", str(small_face_folder), "--output", str(output), "--faces", "4", "--image-size", "48"]

    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, f"invoke figure-historical failed:\n{result.stderr[-3000:]}"
    assert output.read_bytes()[:8] == PNG_SIGNATURE, "the task wrote no PNG"


def test_invoke_figure_historical_without_data(tmp_path):
    command = [sys.executable, "-m", "invoke", "--search-root", str(REPO), "figure-historical"]
    environment = {**os.environ, "FACEAGE_DATA": ""}

    result = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)

    assert result.returncode == 2, f"expected exit code 2, got {result.returncode}:\n{result.stderr[-2000:]}"
    assert "--data" in result.stderr, f"the error does not name the fix: {result.stderr[-500:]}"


def test_plot_historical_look_rejects_mixed_sizes(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        plot_historical_look([_face(), _face()[:32]], tmp_path / "look.png")


# End to end.


def test_train_with_look_records_it(small_face_folder, tmp_path):
    look = {"probability": 1.0, "sepia": 1.0}
    config = TrainConfig(
        model="m2",
        backbone="test_efficientnet",
        weights="none",
        image_size=32,
        epochs=1,
        batch_size=8,
        augment={"historical": look},
    )

    run_dir = train(config, data=small_face_folder, run_dir=tmp_path / "run")

    saved = json.loads((run_dir / "config.json").read_text())["augment"]["historical"]
    assert saved["sepia"] == 1.0, f"config.json records the look as {saved}"
    assert (run_dir / "metrics.json").is_file(), "the run with the look wrote no metrics.json"
