"""Tests for labels, metadata tables, image decoding, splits and the face data set."""

import logging
import pathlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from faceage_keras import build_model
from faceage_keras.dataset import FaceDataset, normalize
from faceage_keras.images import ImageReadError, load_rgb, to_rgb
from faceage_keras.labels import (
    AGE_GROUP_CENTRES,
    FEMALE,
    MALE,
    age_to_group,
    clip_age,
    expected_ages,
    group_centre_ages,
    parse_age_group,
    parse_gender,
)
from faceage_keras.splits import read_splits, split_table, write_splits
from faceage_keras.table import DataError, read_labels

IMAGE_SIZE = 32
SPLIT_SAMPLE_SIZE = 1000
EXIF_ORIENTATION_TAG = 0x0112


# Helpers.


def _write_image(path, colour=(120, 80, 60), size=(16, 16)):
    Image.new("RGB", size, colour).save(path, format="JPEG")


def _make_folder(root, csv_text, image_names):
    """Write a data folder with `csv_text` as labels.csv and small JPEGs for `image_names`."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    for name in image_names:
        _write_image(images_dir / name)
    (root / "labels.csv").write_text(csv_text, encoding="utf-8")
    return root


def _face_table(ages, genders=None):
    """Build a table in the layout of `read_labels` without any image files."""
    ages = np.asarray(ages, dtype="float64")
    if genders is None:
        genders = np.arange(len(ages)) % 2
    names = [f"face_{index:04d}.jpg" for index in range(len(ages))]
    return pd.DataFrame(
        {
            "image_name": names,
            "path": names,
            "age": ages,
            "gender": np.asarray(genders, dtype="int64"),
            "group": age_to_group(ages),
            "line": np.arange(len(ages)) + 2,
            "age_clipped": clip_age(ages),
        }
    )


def _replace_with_bytes(path, data):
    """Replace a file, or a symbolic link to a real face, without touching the link target."""
    path.unlink()
    path.write_bytes(data)


# Labels.


@pytest.mark.parametrize(
    ("age", "group"),
    [(0, 0), (18, 0), (18.9, 0), (19, 1), (29, 1), (30, 2), (39, 2), (40, 3), (59, 3), (60, 4), (116, 4)],
)
def test_age_to_group_boundaries(age, group):
    assert int(age_to_group(age)) == group, f"age {age} maps to group {int(age_to_group(age))}"


def test_age_to_group_array():
    groups = age_to_group(np.array([5.0, 25.0, 35.0, 45.0, 75.0]))

    np.testing.assert_array_equal(groups, [0, 1, 2, 3, 4], err_msg="groups of an array")
    assert groups.dtype == np.int64, f"dtype is {groups.dtype}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Male", MALE),
        ("male", MALE),
        (" MALE ", MALE),
        ("M", MALE),
        ("m", MALE),
        ("0", MALE),
        (0, MALE),
        ("0.0", MALE),
        ("Female", FEMALE),
        ("female", FEMALE),
        ("F", FEMALE),
        ("f", FEMALE),
        ("1", FEMALE),
        (1, FEMALE),
        ("1.0", FEMALE),
        (1.0, FEMALE),
        ("x", None),
        ("", None),
        ("2", None),
        ("unknown", None),
        ("nan", None),
    ],
)
def test_parse_gender_spellings(value, expected):
    assert parse_gender(value) == expected, f"parse_gender({value!r}) is {parse_gender(value)!r}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0), ("4", 4), ("2.0", 2), ("<19", 0), ("19-29", 1), ("19–29", 1), ("40 - 59", 3), ("60+", 4), ("5", None), ("adult", None)],
)
def test_parse_age_group_spellings(value, expected):
    assert parse_age_group(value) == expected, f"parse_age_group({value!r}) is {parse_age_group(value)!r}"


def test_group_centre_ages_argmax():
    probabilities = np.eye(5, dtype="float32")[[4, 0, 2]]
    probabilities[1] = [0.4, 0.3, 0.1, 0.1, 0.1]

    centres = group_centre_ages(probabilities)

    np.testing.assert_array_equal(centres, [70.0, 9.0, 34.0], err_msg="centre ages of the most probable groups")
    assert AGE_GROUP_CENTRES == (9.0, 24.0, 34.0, 49.0, 70.0), f"group centres are {AGE_GROUP_CENTRES}"


def test_expected_ages_weighted_centres():
    probabilities = np.array([[0.5, 0.5, 0.0, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0, 1.0]])

    ages = expected_ages(probabilities)

    # (9 + 24) / 2 = 16.5 and (9 + 24 + 34 + 49 + 70) / 5 = 37.2.
    np.testing.assert_allclose(ages, [16.5, 37.2, 70.0], rtol=1e-6, err_msg="expected ages")


def test_clip_age_range():
    clipped = clip_age([-1.0, 0.0, 30.0, 75.0, 116.0])

    np.testing.assert_array_equal(clipped, [0.0, 0.0, 30.0, 75.0, 75.0], err_msg="clipped ages")


# Metadata tables.


@pytest.mark.parametrize(
    "csv_text",
    [
        "image_name,age,gender\na.jpg,25,Male\nb.jpg,61,Female\n",
        "ImageName,Age,Gender\na.jpg,25,Male\nb.jpg,61,Female\n",
        "image_name;age;gender\na.jpg;25;M\nb.jpg;61;f\n",
        "\ufeffImage Name,AGE,gender\na.jpg,25,0\nb.jpg,61,1\n",
    ],
    ids=["snake_case", "archive_case", "semicolon", "bom_spaces"],
)
def test_read_labels_header_variants(tmp_path, csv_text):
    _make_folder(tmp_path, csv_text, ["a.jpg", "b.jpg"])

    table, bad_rows = read_labels(tmp_path)

    assert bad_rows == [], f"bad rows: {bad_rows}"
    assert list(table["image_name"]) == ["a.jpg", "b.jpg"], f"image names are {list(table['image_name'])}"
    assert list(table["age"]) == [25.0, 61.0], f"ages are {list(table['age'])}"
    assert list(table["gender"]) == [MALE, FEMALE], f"genders are {list(table['gender'])}"
    assert list(table["group"]) == [1, 4], f"groups are {list(table['group'])}"
    assert list(table["line"]) == [2, 3], f"lines are {list(table['line'])}"
    assert table["path"].iloc[0] == str(tmp_path / "images" / "a.jpg"), f"path is {table['path'].iloc[0]}"


def test_read_labels_decimal_comma_age(tmp_path):
    _make_folder(tmp_path, "image_name;age;gender\na.jpg;25,5;Male\nb.jpg;80;Female\n", ["a.jpg", "b.jpg"])

    table, _ = read_labels(tmp_path)

    assert list(table["age"]) == [25.5, 80.0], f"ages are {list(table['age'])}"
    assert list(table["age_clipped"]) == [25.5, 75.0], f"clipped ages are {list(table['age_clipped'])}"


def test_read_labels_group_column(tmp_path, caplog):
    csv_text = "image_name,age,gender,group\na.jpg,45,Male,19-29\nb.jpg,45,Female,\nc.jpg,10,Female,4\n"
    _make_folder(tmp_path, csv_text, ["a.jpg", "b.jpg", "c.jpg"])

    with caplog.at_level(logging.WARNING, logger="faceage_keras.table"):
        table, _ = read_labels(tmp_path)

    # The given group wins over the group of the age, and an empty cell falls back to the age.
    assert list(table["group"]) == [1, 3, 4], f"groups are {list(table['group'])}"
    assert "2 rows have a group that differs" in caplog.text, f"log was: {caplog.text!r}"


def test_read_labels_invalid_group_raises(tmp_path):
    _make_folder(tmp_path, "image_name,age,gender,group\na.jpg,45,Male,7\n", ["a.jpg"])

    with pytest.raises(DataError) as error:
        read_labels(tmp_path)

    assert "line 2" in str(error.value), f"message does not name the line: {error.value}"
    assert "group '7'" in str(error.value), f"message does not name the group: {error.value}"


def test_read_labels_missing_column_raises(tmp_path):
    _make_folder(tmp_path, "image_name,age\na.jpg,25\n", ["a.jpg"])

    with pytest.raises(DataError) as error:
        read_labels(tmp_path)

    message = str(error.value)
    assert "['gender']" in message, f"message does not name the missing column: {message}"
    assert "image_name, age, gender" in message, f"message does not name the expected columns: {message}"


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ("b.jpg,30,Unknown", "gender 'Unknown'"),
        ("b.jpg,thirty,Male", "age 'thirty' is not a number"),
        ("b.jpg,-3,Male", "age '-3' is negative"),
        ("b.jpg,,Male", "age is missing"),
        ("b.jpg,inf,Male", "not finite"),
        (",30,Male", "image name is empty"),
        ("absent.jpg,30,Male", "absent.jpg not found"),
    ],
    ids=["unknown_gender", "non_numeric_age", "negative_age", "missing_age", "infinite_age", "empty_name", "missing_image"],
)
def test_read_labels_bad_row_raises(tmp_path, bad_line, reason):
    csv_text = f"image_name,age,gender\na.jpg,25,Male\n{bad_line}\nc.jpg,40,Female\n"
    _make_folder(tmp_path, csv_text, ["a.jpg", "b.jpg", "c.jpg"])

    with pytest.raises(DataError) as error:
        read_labels(tmp_path)

    message = str(error.value)
    assert "line 3" in message, f"message does not name CSV line 3: {message}"
    assert reason in message, f"message does not give the reason {reason!r}: {message}"
    assert "--skip-bad-rows" in message, f"message does not name the fix: {message}"
    assert "1 of 3 rows" in message, f"message does not count the bad rows: {message}"


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "empty"])
def test_read_labels_unreadable_image_raises(tmp_path, small_face_folder, damage):
    real_jpeg = (small_face_folder / "images" / pd.read_csv(small_face_folder / "labels.csv")["image_name"][0]).read_bytes()
    data = {"corrupt": b"\xff\xd8 not a JPEG " * 20, "truncated": real_jpeg[: len(real_jpeg) // 2], "empty": b""}[damage]
    _make_folder(tmp_path, "image_name,age,gender\na.jpg,25,Male\nb.jpg,30,Female\n", ["a.jpg"])
    (tmp_path / "images" / "b.jpg").write_bytes(data)

    with pytest.raises(DataError) as error:
        read_labels(tmp_path)

    message = str(error.value)
    assert "line 3" in message, f"message does not name CSV line 3: {message}"
    assert "b.jpg" in message, f"message does not name the image: {message}"
    assert "--skip-bad-rows" in message, f"message does not name the fix: {message}"


def test_read_labels_skip_bad_rows(tmp_path, caplog):
    csv_text = (
        "image_name,age,gender\n"
        "a.jpg,25,Male\n"
        "b.jpg,30,X\n"
        "c.jpg,abc,Female\n"
        "absent.jpg,40,Male\n"
        "d.jpg,50,Female\n"
        "broken.jpg,60,Male\n"
    )
    _make_folder(tmp_path, csv_text, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not an image")

    with caplog.at_level(logging.WARNING, logger="faceage_keras.table"):
        table, bad_rows = read_labels(tmp_path, skip_bad_rows=True)

    assert list(table["image_name"]) == ["a.jpg", "d.jpg"], f"kept {list(table['image_name'])}"
    assert [row.line for row in bad_rows] == [3, 4, 5, 7], f"bad lines are {[row.line for row in bad_rows]}"
    assert [row.image_name for row in bad_rows] == ["b.jpg", "c.jpg", "absent.jpg", "broken.jpg"]
    assert "gender 'X'" in bad_rows[0].reason, f"reason is {bad_rows[0].reason!r}"
    assert "not a number" in bad_rows[1].reason, f"reason is {bad_rows[1].reason!r}"
    assert "not found" in bad_rows[2].reason, f"reason is {bad_rows[2].reason!r}"
    assert "Cannot decode" in bad_rows[3].reason, f"reason is {bad_rows[3].reason!r}"
    assert "Skipped 4 of 6 rows" in caplog.text, f"log was: {caplog.text!r}"


def test_read_labels_all_bad_raises(tmp_path):
    _make_folder(tmp_path, "image_name,age,gender\na.jpg,25,X\nb.jpg,,Male\n", ["a.jpg", "b.jpg"])

    with pytest.raises(DataError, match="no usable rows"):
        read_labels(tmp_path, skip_bad_rows=True)


def test_read_labels_no_image_check(tmp_path):
    _make_folder(tmp_path, "image_name,age,gender\nabsent.jpg,25,Male\n", [])

    table, bad_rows = read_labels(tmp_path, check_images=False)

    assert list(table["image_name"]) == ["absent.jpg"], f"kept {list(table['image_name'])}"
    assert bad_rows == [], f"bad rows: {bad_rows}"


def test_read_labels_missing_folder_parts(tmp_path):
    (tmp_path / "labels.csv").write_text("image_name,age,gender\n", encoding="utf-8")

    with pytest.raises(DataError, match="images"):
        read_labels(tmp_path)
    with pytest.raises(DataError, match="labels.csv"):
        read_labels(tmp_path / "absent")


def test_read_labels_small_face_folder(small_face_folder):
    table, bad_rows = read_labels(small_face_folder)

    assert len(table) == 40, f"read {len(table)} faces"
    assert bad_rows == [], f"bad rows: {bad_rows}"
    assert set(table["gender"]) == {MALE, FEMALE}, f"genders are {set(table['gender'])}"
    assert table["group"].nunique() >= 4, f"only groups {sorted(set(table['group']))}"


# Image decoding.


def test_load_rgb_applies_exif_orientation(tmp_path):
    # 40 x 20 pixels: left half red, right half blue.
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    # Orientation 6: the stored image must be rotated 90 degrees clockwise for display.
    exif[EXIF_ORIENTATION_TAG] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, format="JPEG", exif=exif, quality=95)

    decoded = load_rgb(path)

    pixels = np.asarray(decoded).astype(int)
    assert decoded.size == (20, 40), f"decoded size is {decoded.size}, expected the transposed (20, 40)"
    assert pixels[5, 10, 0] > 200, f"top is not red after rotation: {pixels[5, 10]}"
    assert pixels[35, 10, 2] > 200, f"bottom is not blue after rotation: {pixels[35, 10]}"


def test_to_rgb_grayscale():
    image = Image.new("L", (4, 4), 100)

    converted = to_rgb(image)

    assert converted.mode == "RGB", f"mode is {converted.mode}"
    np.testing.assert_array_equal(np.asarray(converted), np.full((4, 4, 3), 100, dtype="uint8"), err_msg="grey values")


def test_load_rgb_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, format="JPEG", quality=95)

    decoded = load_rgb(path)

    red, green, blue = np.asarray(decoded).astype(int).mean(axis=(0, 1))
    assert decoded.mode == "RGB", f"mode is {decoded.mode}"
    assert red > 200, f"red channel is {red:.0f}, expected about 255"
    assert green < 60, f"green channel is {green:.0f}, expected about 0"
    assert blue < 60, f"blue channel is {blue:.0f}, expected about 0"


def test_load_rgb_16_bit_png(tmp_path):
    # A horizontal ramp over the full 16-bit range.
    ramp = np.tile(np.linspace(0, 65535, 64).astype("uint16"), (8, 1))
    path = tmp_path / "wide.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16", "the test file is not 16-bit"

    decoded = load_rgb(path)

    pixels = np.asarray(decoded)
    white_fraction = float(np.mean(pixels == 255))
    assert decoded.mode == "RGB", f"mode is {decoded.mode}"
    assert pixels.dtype == np.uint8, f"dtype is {pixels.dtype}"
    assert white_fraction < 0.1, f"{white_fraction:.0%} of the pixels are white; 16-bit values were clipped"
    assert pixels.min() == 0, f"darkest value is {pixels.min()}"
    assert pixels.max() == 255, f"brightest value is {pixels.max()}"
    assert np.all(np.diff(pixels[0, :, 0].astype(int)) >= 0), "the ramp is no longer increasing"


def test_to_rgb_16_bit_constant():
    image = Image.fromarray(np.full((4, 4), 3000, dtype="uint16"))

    converted = to_rgb(image)

    assert converted.mode == "RGB", f"mode is {converted.mode}"
    assert np.all(np.isfinite(np.asarray(converted))), "a constant 16-bit image gave non-finite values"


def test_load_rgb_palette_png(tmp_path):
    source = Image.new("RGB", (8, 8), (200, 30, 40))
    source.paste((10, 160, 90), (0, 0, 4, 8))
    path = tmp_path / "palette.png"
    source.convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(path)
    assert Image.open(path).mode == "P", "the test file is not a palette image"

    decoded = np.asarray(load_rgb(path)).astype(int)

    np.testing.assert_allclose(decoded[0, 0], [10, 160, 90], atol=8, err_msg="left colour")
    np.testing.assert_allclose(decoded[0, 7], [200, 30, 40], atol=8, err_msg="right colour")


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_to_rgb_transparency_on_white(mode):
    image = Image.new("RGBA", (4, 2), (0, 0, 0, 0))
    image.paste((0, 0, 0, 255), (0, 0, 2, 2))
    image = image.convert(mode)

    converted = np.asarray(to_rgb(image))

    np.testing.assert_array_equal(converted[0, 0], [0, 0, 0], err_msg="opaque black pixel")
    np.testing.assert_array_equal(converted[0, 3], [255, 255, 255], err_msg="transparent pixel is not white")


def test_load_rgb_missing_raises(tmp_path):
    path = tmp_path / "absent.jpg"

    with pytest.raises(ImageReadError, match="absent.jpg"):
        load_rgb(path)


def test_load_rgb_corrupt_raises(tmp_path):
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 garbage")

    with pytest.raises(ImageReadError, match="corrupt.jpg"):
        load_rgb(path)


# Splits.


@pytest.fixture(scope="module")
def real_sample(utkface_dir):
    table, _ = read_labels(utkface_dir, check_images=False)
    return table.sample(n=SPLIT_SAMPLE_SIZE, random_state=0).reset_index(drop=True)


def _kept_names(table):
    whole_ages = np.floor(table["age"]).astype(int)
    counts = whole_ages.value_counts()
    return set(table.loc[whole_ages.map(counts) >= 2, "image_name"])


def test_split_table_sizes(real_sample):
    splits = split_table(real_sample, seed=42)

    total = sum(len(split) for split in splits.values())
    assert 0.79 <= len(splits["train"]) / total <= 0.81, f"train has {len(splits['train'])} of {total}"
    assert 0.09 <= len(splits["val"]) / total <= 0.11, f"val has {len(splits['val'])} of {total}"
    assert 0.09 <= len(splits["test"]) / total <= 0.11, f"test has {len(splits['test'])} of {total}"


def test_split_table_disjoint_cover(real_sample):
    splits = split_table(real_sample, seed=42)

    names = {name: set(split["image_name"]) for name, split in splits.items()}
    assert not names["train"] & names["val"], "train and val overlap"
    assert not names["train"] & names["test"], "train and test overlap"
    assert not names["val"] & names["test"], "val and test overlap"
    assert names["train"] | names["val"] | names["test"] == _kept_names(real_sample), "splits do not cover the kept rows"
    assert sum(len(split) for split in splits.values()) == len(_kept_names(real_sample)), "a row appears twice"


def test_split_table_drops_single_ages(real_sample):
    whole_ages = np.floor(real_sample["age"]).astype(int)
    counts = whole_ages.value_counts()
    single_names = set(real_sample.loc[whole_ages.map(counts) == 1, "image_name"])

    splits = split_table(real_sample, seed=42)

    all_names = set().union(*(set(split["image_name"]) for split in splits.values()))
    assert single_names, "the sample has no age with a single face, so the test covers nothing"
    assert not single_names & all_names, f"kept faces of single-face ages: {sorted(single_names & all_names)[:3]}"


def test_split_table_drops_single_age_small():
    table = _face_table([20.0] * 10 + [30.0] * 10 + [45.0] + [45.5] + [52.0])

    splits = split_table(table, seed=42)

    ages = set(np.concatenate([split["age"].to_numpy() for split in splits.values()]))
    assert 52.0 not in ages, "the only face aged 52 was kept"
    assert {45.0, 45.5} <= ages, "two faces of whole age 45 were dropped"


def test_split_table_deterministic_seed(real_sample):
    first = split_table(real_sample, seed=42)
    again = split_table(real_sample, seed=42)
    other = split_table(real_sample, seed=7)

    for name in ("train", "val", "test"):
        assert list(first[name]["image_name"]) == list(again[name]["image_name"]), f"{name} differs for one seed"
    assert set(first["train"]["image_name"]) != set(other["train"]["image_name"]), "seeds 42 and 7 give one train set"


def test_split_table_train_age_stratified(real_sample):
    splits = split_table(real_sample, seed=42)

    kept = real_sample[real_sample["image_name"].isin(_kept_names(real_sample))]
    whole_counts = np.floor(kept["age"]).astype(int).value_counts()
    train_counts = np.floor(splits["train"]["age"]).astype(int).value_counts().reindex(whole_counts.index, fill_value=0)
    # Stratified on age in whole years: every age puts 80% of its faces in train, up to rounding.
    deviation = (train_counts - 0.8 * whole_counts).abs()
    assert deviation.max() <= 1.0, f"age {deviation.idxmax()} is off by {deviation.max():.1f} faces"


@pytest.mark.parametrize("seed", [42, 7])
def test_split_table_val_test_groups_balanced(real_sample, seed):
    splits = split_table(real_sample, seed=seed)

    val_counts = splits["val"]["group"].value_counts().reindex(range(5), fill_value=0)
    test_counts = splits["test"]["group"].value_counts().reindex(range(5), fill_value=0)
    for group in range(5):
        difference = abs(int(val_counts[group]) - int(test_counts[group]))
        assert difference <= 1, f"group {group}: val {val_counts[group]}, test {test_counts[group]}"


def test_split_table_tiny_falls_back(caplog):
    # 30 faces, 2 at each of 15 ages: too few to stratify 6 held-out faces on 15 ages.
    table = _face_table(np.repeat(np.arange(10, 85, 5), 2))

    with caplog.at_level(logging.WARNING, logger="faceage_keras.splits"):
        splits = split_table(table, seed=42)

    sizes = {name: len(split) for name, split in splits.items()}
    assert sum(sizes.values()) == 30, f"split sizes are {sizes}"
    assert all(size > 0 for size in sizes.values()), f"split sizes are {sizes}"
    assert "stratified on age group instead" in caplog.text, f"log was: {caplog.text!r}"


def test_split_table_too_few_raises():
    with pytest.raises(DataError, match="at least 6 faces"):
        split_table(_face_table([20.0, 20.5]))
    # Three distinct ages: each has one face, so all are dropped.
    with pytest.raises(DataError, match="got 0"):
        split_table(_face_table([20.0, 30.0, 40.0]))


def test_splits_write_read_round_trip(tmp_path, real_sample):
    splits = split_table(real_sample, seed=42)

    write_splits(splits, tmp_path)
    restored = read_splits(tmp_path, real_sample)

    assert sorted(path.name for path in (tmp_path / "splits").iterdir()) == ["test.csv", "train.csv", "val.csv"]
    for name in ("train", "val", "test"):
        assert list(restored[name]["image_name"]) == list(splits[name]["image_name"]), f"{name} order differs"
        assert list(restored[name]["age"]) == list(splits[name]["age"]), f"{name} ages differ"


def test_read_splits_unknown_name_raises(tmp_path):
    table = _face_table(np.repeat([20.0, 30.0, 40.0, 50.0, 60.0], 4))
    write_splits(split_table(table, seed=0), tmp_path)

    with pytest.raises(DataError) as error:
        read_splits(tmp_path, table.iloc[1:])

    assert "face_0000.jpg" in str(error.value), f"message does not name the missing image: {error.value}"


# Face data set.


@pytest.fixture
def face_table(small_face_folder):
    table, _ = read_labels(small_face_folder)
    return table


def test_dataset_batch_shapes(face_table):
    dataset = FaceDataset(face_table, "m1", image_size=IMAGE_SIZE, batch_size=16)

    images, targets = dataset[0]

    assert len(dataset) == 3, f"40 faces in batches of 16 make {len(dataset)} batches"
    assert images.shape == (16, IMAGE_SIZE, IMAGE_SIZE, 3), f"images shape is {images.shape}"
    assert images.dtype == np.float32, f"images dtype is {images.dtype}"
    assert set(targets) == {"age", "gender"}, f"m1 targets are {sorted(targets)}"
    assert targets["age"].shape == (16, 1), f"age targets shape is {targets['age'].shape}"
    assert targets["gender"].shape == (16,), f"gender targets shape is {targets['gender'].shape}"


def test_dataset_last_partial_batch(face_table):
    dataset = FaceDataset(face_table, "m2", image_size=IMAGE_SIZE, batch_size=16)

    images, targets = dataset[2]

    assert images.shape[0] == 8, f"last batch has {images.shape[0]} faces, expected 40 - 32 = 8"
    assert targets["age"].shape == (8, 1), f"last age targets shape is {targets['age'].shape}"
    with pytest.raises(IndexError):
        dataset[3]


@pytest.mark.parametrize("training", [False, True])
def test_dataset_pixel_range(face_table, training):
    dataset = FaceDataset(face_table, "m2", image_size=IMAGE_SIZE, batch_size=40, training=training, seed=1)

    images, _ = dataset[0]

    assert images.min() >= -1.0, f"minimum pixel is {images.min()}"
    assert images.max() <= 1.0, f"maximum pixel is {images.max()}"
    assert images.min() < -0.8, f"darkest pixel is {images.min():.2f}; the range [-1, 1] is not used"
    assert images.max() > 0.8, f"brightest pixel is {images.max():.2f}; the range [-1, 1] is not used"


def test_dataset_targets_m4(face_table):
    dataset = FaceDataset(face_table, "m4", image_size=IMAGE_SIZE, batch_size=8)

    _, targets = dataset[0]

    assert set(targets) == {"age_group"}, f"m4 targets are {sorted(targets)}"
    np.testing.assert_array_equal(targets["age_group"], face_table["group"][:8], err_msg="m4 group targets")


def test_dataset_targets_m5_sample_weights(face_table):
    dataset = FaceDataset(face_table, "m5", image_size=IMAGE_SIZE, batch_size=8)

    batch = dataset[0]

    assert len(batch) == 3, f"m5 batch has {len(batch)} parts, expected (images, targets, sample_weight)"
    _, targets, sample_weight = batch
    is_female = (face_table["gender"][:8] == FEMALE).to_numpy().astype("float32")
    assert set(targets) == {"gender", "age_male", "age_female", "age"}, f"m5 targets are {sorted(targets)}"
    np.testing.assert_array_equal(sample_weight["age_female"], is_female, err_msg="age_female weights")
    np.testing.assert_array_equal(sample_weight["age_male"], 1.0 - is_female, err_msg="age_male weights")


def test_dataset_evaluation_unaugmented_in_order(face_table):
    dataset = FaceDataset(face_table, "m1", image_size=IMAGE_SIZE, batch_size=16)

    images, targets = dataset[1]

    rows = face_table.iloc[16:32]
    expected = normalize(
        np.stack([np.asarray(load_rgb(path).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)) for path in rows["path"]])
    )
    np.testing.assert_array_equal(images, expected, err_msg="evaluation images are not the plain resized faces")
    np.testing.assert_array_equal(targets["age"].ravel(), rows["age_clipped"], err_msg="age targets not in table order")
    np.testing.assert_array_equal(targets["gender"], rows["gender"], err_msg="gender targets not in table order")


def test_dataset_evaluation_same_every_epoch(face_table):
    dataset = FaceDataset(face_table, "m2", image_size=IMAGE_SIZE, batch_size=16)
    first, _ = dataset[0]

    dataset.on_epoch_end()
    second, _ = dataset[0]

    np.testing.assert_array_equal(first, second, err_msg="evaluation batch changed after an epoch")


def test_dataset_augmentation_deterministic(face_table):
    first = FaceDataset(face_table, "m1", image_size=IMAGE_SIZE, batch_size=16, training=True, seed=3)
    again = FaceDataset(face_table, "m1", image_size=IMAGE_SIZE, batch_size=16, training=True, seed=3)
    other_seed = FaceDataset(face_table, "m1", image_size=IMAGE_SIZE, batch_size=16, training=True, seed=4)

    first_images, first_targets = first[0]
    again_images, again_targets = again[0]
    other_images, _ = other_seed[0]

    np.testing.assert_array_equal(first_images, again_images, err_msg="one seed gave two different batches")
    np.testing.assert_array_equal(first_targets["age"], again_targets["age"], err_msg="one seed gave two orders")
    assert not np.array_equal(first_images, other_images), "seeds 3 and 4 gave the same batch"


def test_dataset_order_changes_each_epoch(face_table):
    dataset = FaceDataset(face_table, "m1", image_size=IMAGE_SIZE, batch_size=40, training=True, seed=3)
    _, first_targets = dataset[0]

    dataset.on_epoch_end()
    _, second_targets = dataset[0]

    assert not np.array_equal(first_targets["age"], second_targets["age"]), "the order did not change after an epoch"


def test_dataset_augmentation_changes_each_epoch(face_table):
    # A single face, so every batch contains the same face whatever the shuffling.
    dataset = FaceDataset(face_table.iloc[[0]], "m2", image_size=IMAGE_SIZE, batch_size=1, training=True, seed=3)
    first, _ = dataset[0]
    repeated, _ = dataset[0]

    dataset.on_epoch_end()
    second, _ = dataset[0]

    np.testing.assert_array_equal(first, repeated, err_msg="one batch of one epoch was augmented twice differently")
    assert not np.array_equal(first, second), "the face was augmented the same way in two epochs"


def test_dataset_training_augments(face_table):
    augmented = FaceDataset(face_table.iloc[[0]], "m2", image_size=IMAGE_SIZE, batch_size=1, training=True, seed=3)
    plain = FaceDataset(face_table.iloc[[0]], "m2", image_size=IMAGE_SIZE, batch_size=1)

    augmented_images, _ = augmented[0]
    plain_images, _ = plain[0]

    assert not np.array_equal(augmented_images, plain_images), "training batch is not augmented"


def test_dataset_training_covers_every_face(face_table):
    dataset = FaceDataset(face_table, "m1", image_size=IMAGE_SIZE, batch_size=16, training=True, seed=5)

    genders = np.concatenate([dataset[index][1]["gender"] for index in range(len(dataset))])

    assert len(genders) == 40, f"an epoch yields {len(genders)} faces"
    assert int(genders.sum()) == int(face_table["gender"].sum()), "an epoch does not yield each face once"


def test_dataset_corrupt_image_names_file(face_table):
    broken = face_table["path"].iloc[3]
    _replace_with_bytes(pathlib.Path(broken), b"garbage")
    dataset = FaceDataset(face_table, "m1", image_size=IMAGE_SIZE, batch_size=8)

    with pytest.raises(ImageReadError) as error:
        dataset[0]

    assert broken in str(error.value), f"message does not name {broken}: {error.value}"


def test_dataset_empty_table_raises(face_table):
    with pytest.raises(ValueError, match="empty"):
        FaceDataset(face_table.iloc[:0], "m1", image_size=IMAGE_SIZE)


@pytest.mark.slow
def test_dataset_fit_with_threads(face_table, tiny_backbone):
    model = build_model("m5", backbone=tiny_backbone, image_size=IMAGE_SIZE)
    model.compile()
    dataset = FaceDataset(
        face_table, "m5", image_size=IMAGE_SIZE, batch_size=8, training=True, seed=0, workers=2, use_multiprocessing=False
    )

    history = model.fit(dataset, epochs=1, verbose=0)

    losses = history.history["loss"]
    assert len(losses) == 1, f"fit ran {len(losses)} epochs"
    assert np.isfinite(losses[0]), f"loss is {losses[0]}"
    assert model.optimizer.iterations.numpy() == len(dataset), f"fit ran {model.optimizer.iterations.numpy()} steps"
