"""Export of a trained model to ONNX, with a JSON file that describes its input and outputs.

The `.keras` file stays the primary format. It contains the full model, can
be trained further and loads with `keras.models.load_model` after
`import faceage_keras`. The ONNX file contains only the inference pass, for
`onnxruntime` and other runtimes without Keras, timm or this package.

The ONNX graph takes float32 images of shape (batch, size, size, 3) in
[-1, 1] (NHWC, RGB). It returns the Keras outputs under their own names.
Models with a gender or age-group head also get `gender_probabilities` or
`age_group_probabilities`, the softmax of those logits. The batch dimension
is dynamic.
"""

import json
import logging
import pathlib
import warnings

import keras
import numpy as np
import onnx
import torch

from faceage_keras import labels
from faceage_keras.models import FaceAgeModel
from faceage_keras.training import BEST_MODEL_FILE

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx",)
INPUT_NAME = "image"
# Softmax outputs added to the graph, keyed by the logits output they come from.
PROBABILITY_OUTPUTS = {"gender": "gender_probabilities", "age_group": "age_group_probabilities"}
# Batch size of the example input that traces the graph. It is not 1, because
# torch.export treats a size of 1 as a constant and the batch must stay dynamic.
TRACE_BATCH_SIZE = 2
# Batch size of the random images that check the exported file against Keras.
CHECK_BATCH_SIZE = 3
# Largest absolute difference between ONNX and Keras outputs that the check accepts.
CHECK_TOLERANCE = 1e-3
METADATA_KEY = "faceage_keras"
_OUTPUT_UNITS = {
    "age": 1,
    "age_male": 1,
    "age_female": 1,
    "gender": 2,
    "gender_probabilities": 2,
    "age_group": labels.NUM_AGE_GROUPS,
    "age_group_probabilities": labels.NUM_AGE_GROUPS,
}


class ExportError(ValueError):
    """A run folder, model or option that cannot be exported."""


class _InferenceGraph(torch.nn.Module):
    """The Keras model in inference mode, returning its outputs and their softmax as a tuple."""

    def __init__(self, model, output_names, probability_sources):
        super().__init__()
        self.model = model
        self.output_names = tuple(output_names)
        self.probability_sources = tuple(probability_sources)

    def forward(self, images):
        outputs = self.model(images, training=False)
        results = [outputs[name] for name in self.output_names]
        results += [torch.softmax(outputs[name], dim=-1) for name in self.probability_sources]
        return tuple(results)


def onnx_output_names(task):
    """Return the names of the ONNX outputs of a model with `TaskSpec` `task`, in graph order."""
    sources = [name for name in PROBABILITY_OUTPUTS if name in task.output_names]
    return tuple(task.output_names) + tuple(PROBABILITY_OUTPUTS[name] for name in sources)


def describe_outputs(task):
    """Return a list of `{"name", "shape", "meaning"}` dicts, one per ONNX output of `task`."""
    groups = ", ".join(f"{index}: {label}" for index, label in enumerate(labels.AGE_GROUP_LABELS))
    age_note = f"Evaluation clips it to [{labels.MIN_AGE:g}, {labels.MAX_AGE:g}]."
    meanings = {
        "age": f"Predicted age in years. {age_note}",
        "age_male": f"Age in years from the head trained on male faces. {age_note}",
        "age_female": f"Age in years from the head trained on female faces. {age_note}",
        "gender": "Gender logits, index 0 male and 1 female.",
        "gender_probabilities": "Softmax of `gender`: P(male), P(female).",
        "age_group": f"Age-group logits ({groups}).",
        "age_group_probabilities": "Softmax of `age_group`, in the same group order.",
    }
    if task.cascade:
        meanings["age"] = (
            f"Predicted age in years: `age_female` where the female gender logit is larger, "
            f"else `age_male`. {age_note}"
        )

    descriptions = []
    for name in onnx_output_names(task):
        descriptions.append({"name": name, "shape": ["batch", _OUTPUT_UNITS[name]], "meaning": meanings[name]})
    return descriptions


def describe_model(model):
    """Return the JSON-serialisable description of the input, outputs and labels of `model`.

    It states everything a program needs to feed the ONNX file the images
    that `faceage_keras.dataset.FaceDataset` feeds the Keras model in
    evaluation, and to read its outputs as `evaluation.decode_outputs` does.

    NOTE: the resize is not part of the ONNX graph. Other libraries' bilinear
    resize (OpenCV, torchvision without antialiasing) gives other pixels than
    Pillow's when it shrinks an image, and so slightly other predictions.
    """
    size = model.image_size
    description = {
        "model": model.task.name,
        "task": model.task.description,
        "backbone": model.backbone_name,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", size, size, 3],
            "dtype": "float32",
            "layout": "NHWC",
            "color": "RGB",
            "value_range": [-1.0, 1.0],
            "steps": [
                "Decode the image, apply its EXIF orientation and convert it to 8-bit RGB.",
                f"Resize the whole image to {size} x {size} pixels with Pillow's "
                f"Image.BILINEAR filter, without cropping or keeping the aspect ratio.",
                "Scale the uint8 pixels to float32 in [-1, 1]: pixel / 127.5 - 1.",
            ],
            "resize": {"size": [size, size], "method": "bilinear", "library": "Pillow"},
            "normalization": "pixel / 127.5 - 1",
        },
        "outputs": describe_outputs(model.task),
        "labels": {
            "gender": list(labels.GENDER_NAMES),
            "age_groups": list(labels.AGE_GROUP_LABELS),
            "age_group_centres": list(labels.AGE_GROUP_CENTRES),
            "age_range": [labels.MIN_AGE, labels.MAX_AGE],
        },
    }
    if model.task.predicts_age_group:
        description["labels"]["age_from_groups"] = (
            "The age of a group model is the centre of its most probable group, or the "
            "expectation of the group centres under `age_group_probabilities`."
        )
    return description


def _example_images(model, batch_size, seed=0):
    rng = np.random.default_rng(seed)
    shape = (batch_size, model.image_size, model.image_size, 3)
    return rng.uniform(-1.0, 1.0, size=shape).astype("float32")


def _export_with_dynamo(graph, example, path, output_names):
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        graph,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=list(output_names),
        dynamic_shapes={"images": {0: batch}},
        verbose=False,
    )
    program.optimize()
    program.save(str(path))


def _export_with_torchscript(graph, example, path, output_names):
    dynamic_axes = {name: {0: "batch"} for name in (INPUT_NAME, *output_names)}
    with warnings.catch_warnings():
        # The legacy exporter warns that it is deprecated and that Keras' shape
        # arithmetic becomes constants. The batch axis stays dynamic all the same.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )


def max_abs_differences(model, onnx_path, images):
    """Run `images` through the Keras model and the ONNX file and compare the outputs.

    Args:
        model: `FaceAgeModel`.
        onnx_path: path of the exported ONNX file.
        images: float32 array (batch, size, size, 3) in [-1, 1].

    Returns:
        A dict of output name to the largest absolute difference. Probability
        outputs are compared with the softmax of the Keras logits.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    onnx_outputs = dict(zip(names, session.run(names, {INPUT_NAME: images})))

    keras_outputs = model.predict(images, verbose=0)
    for source, name in PROBABILITY_OUTPUTS.items():
        if source in keras_outputs:
            logits = keras_outputs[source].astype("float64")
            exponentials = np.exp(logits - logits.max(axis=-1, keepdims=True))
            keras_outputs[name] = exponentials / exponentials.sum(axis=-1, keepdims=True)

    return {name: float(np.max(np.abs(onnx_outputs[name] - keras_outputs[name]))) for name in names}


def export_onnx(model, path):
    """Write `model` as an ONNX file and its description as `<path>.json`.

    The graph is captured with torch's `torch.export`-based ONNX exporter.
    Where a backbone does not trace with it, the legacy TorchScript exporter
    is used, with a warning in the log. Both keep the batch dimension
    dynamic. The written file is then checked against the Keras model on a
    batch of random images of another batch size.

    Args:
        model: `FaceAgeModel`, e.g. from `keras.models.load_model`.
        path: path of the ONNX file to write; missing folders are created.

    Returns:
        The description dict that was written to `<path>.json`.

    Raises:
        ExportError: `model` is not a `FaceAgeModel`, both exporters failed, or
            the ONNX outputs differ from the Keras outputs by more than
            `CHECK_TOLERANCE`.
    """
    if not isinstance(model, FaceAgeModel):
        raise ExportError(
            f"Only faceage_keras models can be exported, got {type(model).__name__}. "
            f"Build one with faceage_keras.build_model or load a .keras file written by it."
        )
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    # Capture.
    sources = [name for name in PROBABILITY_OUTPUTS if name in model.task.output_names]
    output_names = onnx_output_names(model.task)
    graph = _InferenceGraph(model, model.task.output_names, sources).eval()
    example = keras.ops.convert_to_tensor(_example_images(model, TRACE_BATCH_SIZE))
    exporter = "torch.export"
    try:
        _export_with_dynamo(graph, example, path, output_names)
    except Exception as error:
        # torch.export fails with many exception types on graphs it cannot capture.
        logger.warning(
            "torch.export could not capture %s (%s: %s); using the legacy TorchScript exporter.",
            model.backbone_name,
            type(error).__name__,
            str(error).splitlines()[0] if str(error) else "",
        )
        exporter = "torchscript"
        try:
            _export_with_torchscript(graph, example, path, output_names)
        except Exception as legacy_error:
            raise ExportError(
                f"Exporting {model.task.name} with backbone {model.backbone_name!r} to ONNX failed with "
                f"both torch exporters. torch.export: {type(error).__name__}: {error}. "
                f"TorchScript: {type(legacy_error).__name__}: {legacy_error}"
            ) from legacy_error

    # Check.
    differences = max_abs_differences(model, path, _example_images(model, CHECK_BATCH_SIZE, seed=1))
    worst_name = max(differences, key=differences.get)
    if not differences[worst_name] <= CHECK_TOLERANCE:
        raise ExportError(
            f"The ONNX file {path} does not reproduce the Keras model: output {worst_name!r} differs by "
            f"{differences[worst_name]:.3g} on random images (tolerance {CHECK_TOLERANCE:g}). "
            f"Report this with the backbone name {model.backbone_name!r}."
        )

    # Describe.
    onnx_model = onnx.load(str(path))
    description = describe_model(model)
    description["onnx"] = {
        "exporter": exporter,
        "opset": max(entry.version for entry in onnx_model.opset_import if entry.domain in ("", "ai.onnx")),
        "check": {"batch_size": CHECK_BATCH_SIZE, "max_abs_difference": differences},
        "versions": {"torch": torch.__version__, "keras": keras.__version__, "onnx": onnx.__version__},
    }
    text = json.dumps(description, indent=2) + "\n"
    onnx.helper.set_model_props(onnx_model, {METADATA_KEY: text})
    onnx.save(onnx_model, str(path))
    description_path(path).write_text(text)
    logger.info(
        "Wrote %s (%s exporter, largest difference to Keras %.2g) and %s.",
        path,
        exporter,
        differences[worst_name],
        description_path(path),
    )
    return description


def description_path(onnx_path):
    """Return the path of the JSON description beside an ONNX file: `<onnx_path>.json`."""
    onnx_path = pathlib.Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + ".json")


def export_run(run_dir, format="onnx", output=None):
    """Export the best model of a training run.

    Args:
        run_dir: path of a run folder that contains `best_model.keras`.
        format: str. Export format; only `"onnx"` is supported.
        output: path or None. File to write; defaults to `<run_dir>/best_model.onnx`.

    Returns:
        The path of the written file. Its JSON description lies beside it.

    Raises:
        ExportError: the format is unknown, or the folder has no model file.
    """
    if format not in EXPORT_FORMATS:
        raise ExportError(f"Unknown export format {format!r}. Supported formats: {', '.join(EXPORT_FORMATS)}.")
    run_dir = pathlib.Path(run_dir)
    model_path = run_dir / BEST_MODEL_FILE
    if not run_dir.is_dir():
        raise ExportError(f"Run folder {run_dir} not found. Pass a folder written by `invoke train`.")
    if not model_path.is_file():
        raise ExportError(
            f"{model_path} not found. `invoke train` writes {BEST_MODEL_FILE} after the first epoch, "
            f"so pass the folder of a run that finished at least one epoch."
        )

    output = pathlib.Path(output) if output else run_dir / "best_model.onnx"
    if output.suffix != ".onnx":
        raise ExportError(f"The output file must end in .onnx. Received: {output}")
    try:
        model = keras.models.load_model(model_path)
    except Exception as error:
        # A damaged or foreign .keras file fails in zipfile, h5py or Keras' deserialisation.
        raise ExportError(f"Loading {model_path} failed: {type(error).__name__}: {error}") from error
    export_onnx(model, output)
    return output


__all__ = [
    "EXPORT_FORMATS",
    "ExportError",
    "describe_model",
    "description_path",
    "export_onnx",
    "export_run",
    "max_abs_differences",
    "onnx_output_names",
]
