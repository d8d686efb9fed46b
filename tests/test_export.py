"""ONNX export: outputs against Keras on real faces, the JSON description and `invoke export`."""

import json
import pathlib
import subprocess
import sys

import keras
import numpy as np
import onnxruntime
import pytest

from faceage_keras import MODEL_NAMES, build_model
from faceage_keras import export as export_module
from faceage_keras.dataset import FaceDataset
from faceage_keras.evaluation import decode_outputs
from faceage_keras.export import ExportError, description_path, export_onnx, export_run
from faceage_keras.table import read_labels

REPO = pathlib.Path(__file__).resolve().parents[1]
IMAGE_SIZE = 48
NUM_FACES = 7
# Splits the faces into batches of 4 and 3, unlike the batch of 2 that traces the export.
BATCH_SIZE = 4
TOLERANCE = 1e-4
HEAD_NAMES = ("age", "gender", "age_group", "age_male", "age_female")
# Typical spread between faces of each head output: years for ages, units for logits.
HEAD_OUTPUT_SPREAD = 5.0


def _spread_heads(model, images, seed):
    """Give the dense heads random weights scaled to the spread of the backbone features.

    The random tiny backbone gives features that differ between faces by
    about 1e-3, so freshly built heads return ages that differ by hundredths
    of a year, and an input-scaling error would stay below the tolerance.
    With these weights each head output varies by about `HEAD_OUTPUT_SPREAD`.
    """
    features = keras.ops.convert_to_numpy(model.get_layer("backbone")(images))
    scale = HEAD_OUTPUT_SPREAD / (features.std(axis=0).mean() * np.sqrt(features.shape[1]))
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.name in HEAD_NAMES and layer.get_weights():
            kernel, bias = layer.get_weights()
            layer.set_weights([(rng.normal(0.0, scale, size=kernel.shape)).astype("float32"), bias])


def _session(path):
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _expected_probabilities(task, keras_outputs):
    """Softmax outputs as `evaluation.decode_outputs` computes them."""
    decoded = decode_outputs(task, keras_outputs)
    expected = {}
    if "prob_female" in decoded:
        expected["gender_probabilities"] = np.stack([1.0 - decoded["prob_female"], decoded["prob_female"]], axis=-1)
    if "prob_group" in decoded:
        expected["age_group_probabilities"] = decoded["prob_group"]
    return expected


@pytest.fixture(scope="module")
def real_faces(utkface_dir):
    table, _ = read_labels(utkface_dir, limit=NUM_FACES, seed=0)
    return table


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_onnx_matches_keras_on_real_faces(name, tiny_backbone, real_faces, tmp_path):
    dataset = FaceDataset(real_faces, name, image_size=IMAGE_SIZE, batch_size=BATCH_SIZE, training=False)
    model = build_model(name, backbone=tiny_backbone, image_size=IMAGE_SIZE)
    _spread_heads(model, dataset[0][0], seed=MODEL_NAMES.index(name))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    model.save(run_dir / "best_model.keras")

    onnx_path = export_run(run_dir)

    session = _session(onnx_path)
    output_names = [output.name for output in session.get_outputs()]
    differences = dict.fromkeys(output_names, 0.0)
    batch_sizes = []
    for batch_index in range(len(dataset)):
        images = dataset[batch_index][0]
        batch_sizes.append(len(images))
        keras_outputs = model.predict(images, verbose=0)
        expected = {**keras_outputs, **_expected_probabilities(model.task, keras_outputs)}
        onnx_outputs = dict(zip(output_names, session.run(output_names, {"image": images})))
        for output_name in output_names:
            difference = float(np.max(np.abs(onnx_outputs[output_name] - expected[output_name])))
            differences[output_name] = max(differences[output_name], difference)

    print(f"{name}: max abs difference ONNX vs Keras over batches {batch_sizes}: {differences}")
    assert batch_sizes == [4, 3], f"unexpected batch sizes {batch_sizes}"
    assert set(output_names) == set(export_module.onnx_output_names(model.task)), f"ONNX outputs {output_names}"
    for output_name, difference in differences.items():
        assert difference <= TOLERANCE, f"{name} output {output_name!r} differs from Keras by {difference:.3g}"


def test_onnx_age_spread_is_years(tiny_backbone, real_faces, tmp_path):
    # Guards the previous test: its outputs must vary by more than the tolerance.
    images = FaceDataset(real_faces, "m2", image_size=IMAGE_SIZE, batch_size=NUM_FACES)[0][0]
    model = build_model("m2", backbone=tiny_backbone, image_size=IMAGE_SIZE)
    _spread_heads(model, images[:BATCH_SIZE], seed=0)

    ages = model.predict(images, verbose=0)["age"]

    assert float(np.ptp(ages)) > 1.0, f"ages span only {float(np.ptp(ages)):.3g} years"


@pytest.fixture(scope="module")
def exported_m5(tiny_backbone, tmp_path_factory):
    """Path of an ONNX export of an untrained m5."""
    onnx_path = tmp_path_factory.mktemp("onnx") / "m5.onnx"
    export_onnx(build_model("m5", backbone=tiny_backbone, image_size=IMAGE_SIZE), onnx_path)
    return onnx_path


def test_onnx_batch_dimension_is_dynamic(exported_m5):
    session = _session(exported_m5)
    images = np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), dtype="float32")

    ages = session.run(["age"], {"image": images})[0]

    assert session.get_inputs()[0].shape == ["batch", IMAGE_SIZE, IMAGE_SIZE, 3], session.get_inputs()[0].shape
    assert ages.shape == (1, 1), f"a batch of one face gave ages of shape {ages.shape}"


def test_onnx_description_json(exported_m5):
    description = json.loads(description_path(exported_m5).read_text())
    session = _session(exported_m5)

    embedded = json.loads(session.get_modelmeta().custom_metadata_map[export_module.METADATA_KEY])

    assert description["input"]["shape"] == ["batch", IMAGE_SIZE, IMAGE_SIZE, 3], description["input"]
    assert description["input"]["layout"] == "NHWC", description["input"]
    assert description["input"]["value_range"] == [-1.0, 1.0], description["input"]
    assert [output["name"] for output in description["outputs"]] == [output.name for output in session.get_outputs()]
    assert description["labels"]["age_groups"] == ["<19", "19-29", "30-39", "40-59", "60+"], description["labels"]
    assert embedded == description, "the description embedded in the ONNX file differs from the JSON file"


def test_torchscript_fallback_exports(tiny_backbone, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("simulated torch.export failure")

    monkeypatch.setattr(export_module, "_export_with_dynamo", fail)
    model = build_model("m5", backbone=tiny_backbone, image_size=IMAGE_SIZE)
    onnx_path = tmp_path / "m5.onnx"

    description = export_onnx(model, onnx_path)

    assert description["onnx"]["exporter"] == "torchscript", description["onnx"]
    images = np.random.default_rng(0).uniform(-1.0, 1.0, size=(5, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    differences = export_module.max_abs_differences(model, onnx_path, images)
    assert max(differences.values()) <= TOLERANCE, differences


def test_export_run_rejects_unknown_format(tmp_path):
    with pytest.raises(ExportError, match="Unknown export format 'tflite'"):
        export_run(tmp_path, format="tflite")


def test_export_run_rejects_missing_model(tmp_path):
    with pytest.raises(ExportError, match="best_model.keras not found"):
        export_run(tmp_path)


def _invoke_export(args, cwd):
    command = [sys.executable, "-m", "invoke", "--search-root", str(REPO), "export", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_invoke_export_writes_files(tiny_backbone, tmp_path):
    build_model("m4", backbone=tiny_backbone, image_size=IMAGE_SIZE).save(tmp_path / "best_model.keras")
    output = tmp_path / "exported" / "m4.onnx"

    result = _invoke_export(["--run", str(tmp_path), "--format", "onnx", "--output", str(output)], tmp_path)

    assert result.returncode == 0, f"invoke export failed:\n{result.stderr[-3000:]}"
    assert output.is_file(), "no ONNX file written"
    assert description_path(output).is_file(), "no JSON description written"


def test_invoke_export_reports_missing_model(tmp_path):
    result = _invoke_export(["--run", str(tmp_path)], tmp_path)

    assert result.returncode == 2, f"expected exit code 2, got {result.returncode}:\n{result.stderr[-2000:]}"
    assert "best_model.keras not found" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, "a missing model printed a traceback"
