"""One benchmark measurement per process: training steps, the input pipeline or prediction.

Run as `python -m faceage_keras.bench.measure SPEC_JSON`. The process prints
its result as one JSON line after `peer.RESULT_MARKER`. The line includes
`peak_rss_mb`, the maximum resident set size of the process, which covers
the native memory of torch that `tracemalloc` does not see. It also includes
`import_rss_mb`, the resident set size after importing faceage_keras, keras,
torch and timm.
"""

import concurrent.futures
import json
import sys
import time

import faceage_keras  # noqa: F401  (selects the Keras torch backend before keras is imported)
import keras
import numpy as np
import pandas as pd
import timm
import torch
import torch.nn.functional as F

from faceage_keras import labels, metrics
from faceage_keras.bench.faces import read_run_config, sample_faces, warm_file_cache
from faceage_keras.bench.peer import current_rss_mb, print_result
from faceage_keras.dataset import FaceDataset
from faceage_keras.evaluation import decode_outputs
from faceage_keras.losses import FocalLoss
from faceage_keras.models import GENDER_LOSS_WEIGHT, build_model, get_task

# The model whose training step is compared with plain PyTorch: age regression + gender.
BENCH_MODEL = "m1"
RUN_MODEL_FILE = "best_model.keras"


# NOTE: the CUDA branches (device placement, synchronisation before reading
# the clock) have not been run yet; every measurement so far ran on CPUs.
def _synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _random_batch(batch_size, image_size, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1.0, 1.0, (batch_size, image_size, image_size, 3)).astype("float32")
    ages = rng.uniform(1.0, 75.0, batch_size).astype("float32")
    genders = rng.integers(0, 2, batch_size)
    return images, ages, genders


def _images_per_second(step_ends, warmup, batch_size):
    """Return `batch_size` over the median duration of the steps after `warmup`, from each step's end time.

    The median rather than the mean keeps a few steps slowed by other
    processes on a shared machine from dominating the rate.
    """
    durations = np.diff(np.asarray(step_ends[warmup - 1 :], dtype="float64"))
    return batch_size / float(np.median(durations))


class _RepeatedBatch(keras.utils.PyDataset):
    """The same in-memory batch `num_batches` times: training input with no loading cost."""

    def __init__(self, batch, num_batches):
        super().__init__()
        self.batch = batch
        self.length = num_batches

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return self.batch


class _StepClock(keras.callbacks.Callback):
    """Callback that records the wall-clock time at the end of every training step."""

    def __init__(self):
        super().__init__()
        self.step_ends = []

    def on_train_batch_end(self, batch, logs=None):
        _synchronize()
        self.step_ends.append(time.perf_counter())


def _keras_fit_rate(model, data, warmup, batch_size):
    clock = _StepClock()
    model.fit(data, epochs=1, shuffle=False, verbose=0, callbacks=[clock])
    return _images_per_second(clock.step_ends, warmup, batch_size)


def _compiled_model(backbone, image_size):
    model = build_model(BENCH_MODEL, backbone=backbone, weights="none", image_size=image_size)
    model.compile()
    return model


def keras_train_step(spec):
    """Time `model.fit` of the package's model on one in-memory batch repeated."""
    task = get_task(BENCH_MODEL)
    images, ages, genders = _random_batch(spec["batch_size"], spec["image_size"])
    targets, _ = task.targets(ages, genders, labels.age_to_group(ages))
    model = _compiled_model(spec["backbone"], spec["image_size"])
    data = _RepeatedBatch((images, targets), spec["warmup"] + spec["steps"])
    return {"images_per_second": _keras_fit_rate(model, data, spec["warmup"], spec["batch_size"])}


def _focal_loss(logits, target, alpha, gamma):
    log_probs = F.log_softmax(logits, dim=-1)
    true_log_prob = log_probs.gather(1, target[:, None]).squeeze(1)
    loss = -((1.0 - true_log_prob.exp()) ** gamma) * true_log_prob * alpha[target]
    return loss.mean()


def torch_train_step(spec):
    """Time a plain PyTorch loop with the same timm model, heads, losses, optimizer and batch as m1.

    Like the Keras model, the loop takes the channels-last float batch from
    host memory in every step and permutes it to NCHW, so both hand the
    backbone a tensor with the same strides.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network = timm.create_model(spec["backbone"], pretrained=False, num_classes=0).to(device)
    network.train()
    images, ages, genders = _random_batch(spec["batch_size"], spec["image_size"])
    images = torch.from_numpy(images)
    ages = torch.from_numpy(ages)[:, None].to(device)
    genders = torch.from_numpy(genders).to(device)

    with torch.no_grad():
        num_features = network(images[:2].to(device).permute(0, 3, 1, 2)).shape[1]
    age_head = torch.nn.Linear(num_features, 1).to(device)
    gender_head = torch.nn.Linear(num_features, 2).to(device)
    parameters = [*network.parameters(), *age_head.parameters(), *gender_head.parameters()]
    # The same settings as `default_compile_args`: SGD, momentum 0.9, global norm clip 5.
    optimizer = torch.optim.SGD(parameters, lr=1e-3, momentum=0.9)
    gender_loss = FocalLoss()
    alpha = torch.tensor(gender_loss.alpha, device=device)

    step_ends = []
    for _ in range(spec["warmup"] + spec["steps"]):
        features = network(images.to(device).permute(0, 3, 1, 2))
        loss = F.mse_loss(age_head(features), ages) + GENDER_LOSS_WEIGHT * _focal_loss(
            gender_head(features), genders, alpha, gender_loss.gamma
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 5.0)
        optimizer.step()
        _synchronize()
        step_ends.append(time.perf_counter())
    return {"images_per_second": _images_per_second(step_ends, spec["warmup"], spec["batch_size"])}


def _training_faces(spec, num_batches):
    faces = sample_faces(spec["data"], spec["batch_size"] * num_batches)
    if len(faces) < spec["batch_size"] * num_batches:
        raise ValueError(
            f"{spec['data']} has {len(faces)} faces, but the measurement needs {spec['batch_size'] * num_batches}. "
            f"Use fewer steps or a smaller batch size."
        )
    warm_file_cache(faces["path"])
    return faces


def pipeline(spec):
    """Time decoding, augmentation and normalisation of training batches by `workers` threads.

    Keras runs a `PyDataset` with `workers` above 1 on a pool of that many
    threads; with 1 it loads batches in the training thread. The pool here
    does the same without a model.
    """
    num_batches = spec["warmup"] + spec["steps"]
    faces = _training_faces(spec, num_batches)
    dataset = FaceDataset(faces, BENCH_MODEL, image_size=spec["image_size"], batch_size=spec["batch_size"], training=True)
    for index in range(spec["warmup"]):
        dataset[index]

    batch_ends = [time.perf_counter()]
    with concurrent.futures.ThreadPoolExecutor(spec["workers"]) as pool:
        for _ in pool.map(dataset.__getitem__, range(spec["warmup"], num_batches)):
            batch_ends.append(time.perf_counter())
    return {"images_per_second": _images_per_second(batch_ends, 1, spec["batch_size"])}


def pipeline_train_step(spec):
    """Time `model.fit` on real faces through `FaceDataset`, then on its first batch held in memory."""
    num_batches = spec["warmup"] + spec["steps"]
    faces = _training_faces(spec, num_batches)
    dataset = FaceDataset(
        faces,
        BENCH_MODEL,
        image_size=spec["image_size"],
        batch_size=spec["batch_size"],
        training=True,
        workers=spec["workers"],
    )
    model = _compiled_model(spec["backbone"], spec["image_size"])
    in_memory = _RepeatedBatch(dataset[0], num_batches)

    # In-memory first, so that its warm-up steps also warm up the model for both.
    memory_rate = _keras_fit_rate(model, in_memory, spec["warmup"], spec["batch_size"])
    pipeline_rate = _keras_fit_rate(model, dataset, spec["warmup"], spec["batch_size"])
    return {"in_memory_images_per_second": memory_rate, "pipeline_images_per_second": pipeline_rate}


def faceage_predict(spec):
    """Time `model.predict` on face files (decoding and resizing included), and score its ages and genders."""
    if spec.get("run") is None:
        model = build_model(BENCH_MODEL, backbone=spec["backbone"], weights="none", image_size=spec["image_size"])
        image_size, task = spec["image_size"], get_task(BENCH_MODEL)
    else:
        config = read_run_config(spec["run"])
        model = keras.models.load_model(f"{spec['run']}/{RUN_MODEL_FILE}")
        image_size, task = config["image_size"], get_task(config["model"])

    faces = pd.read_csv(spec["faces_csv"])
    warm_file_cache(faces["path"])
    dataset = FaceDataset(faces, task, image_size=image_size, batch_size=spec["batch_size"], workers=spec["workers"])
    model.predict(dataset[0][0], verbose=0)

    started = time.perf_counter()
    outputs = model.predict(dataset, verbose=0)
    _synchronize()
    elapsed = time.perf_counter() - started

    decoded = decode_outputs(task, outputs)
    result = {
        "faces": len(faces),
        "faces_per_second": len(faces) / elapsed,
        "trained": spec.get("run") is not None,
        "mae": metrics.mean_absolute_error(faces["age_clipped"].to_numpy(dtype="float32"), decoded["age_pred"]),
    }
    if task.predicts_gender:
        result["gender_accuracy"] = float(np.mean(faces["gender"].to_numpy() == decoded["gender_pred"]))
    return result


MEASUREMENTS = {
    "keras_train_step": keras_train_step,
    "torch_train_step": torch_train_step,
    "pipeline": pipeline,
    "pipeline_train_step": pipeline_train_step,
    "faceage_predict": faceage_predict,
}


def main(argv):
    spec = json.loads(argv[1])
    import_rss_mb = current_rss_mb()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    keras.utils.set_random_seed(0)
    result = MEASUREMENTS[spec["kind"]](spec)
    result["import_rss_mb"] = import_rss_mb
    print_result(result)


if __name__ == "__main__":
    main(sys.argv)
