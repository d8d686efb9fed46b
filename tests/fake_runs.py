"""Fake run folders for report tests, shaped exactly like those `training.train` writes.

The predictions table is built by `evaluation.predictions_frame` from made-up
model outputs, so its columns follow the real writer: M2 and M4 leave the
gender columns empty, and M3 and M4 add the expected age and the five group
probabilities.
"""

import json
import pathlib
import warnings

import numpy as np
import pandas as pd

from faceage_keras import labels, metrics
from faceage_keras.evaluation import predictions_frame
from faceage_keras.models import get_task


def face_table(num_faces, seed):
    """Return a test split table with ages spread over all five groups and both genders."""
    rng = np.random.default_rng(seed)
    ages = np.round(rng.uniform(1, 80, size=num_faces))
    clipped = labels.clip_age(ages)
    return pd.DataFrame(
        {
            "image_name": [f"face_{index:04d}.jpg" for index in range(num_faces)],
            "age_clipped": clipped,
            "group": labels.age_to_group(clipped),
            "gender": rng.integers(0, 2, size=num_faces),
        }
    )


def fake_outputs(model, table, *, noise, seed):
    """Return made-up raw model outputs (ages and logits) for `table`."""
    rng = np.random.default_rng(seed)
    task = get_task(model)
    ages = table["age_clipped"].to_numpy(dtype="float64")
    genders = table["gender"].to_numpy()
    outputs = {}

    if task.predicts_age_group:
        distances = np.abs(ages[:, None] - np.asarray(labels.AGE_GROUP_CENTRES)[None, :])
        outputs["age_group"] = -distances / 8.0 + rng.normal(0, noise / 6.0, size=distances.shape)
    else:
        # Regression to the mean, as real models show, plus noise.
        outputs["age"] = (35 + 0.8 * (ages - 35) + rng.normal(0, noise, size=ages.size)).reshape(-1, 1)

    if task.predicts_gender:
        margin = np.where(genders == labels.FEMALE, 1.0, -1.0) * 1.5 + rng.normal(0, 1.5, size=ages.size)
        outputs["gender"] = np.stack([-margin / 2, margin / 2], axis=1)
    return outputs


def write_history(folder, model, num_epochs, *, seed):
    rng = np.random.default_rng(seed)
    epochs = np.arange(num_epochs)
    decay = np.exp(-epochs / 2.0)
    group_model = get_task(model).predicts_age_group
    scale = 1.0 if group_model else 150.0
    history = pd.DataFrame(
        {
            "epoch": epochs,
            "loss": scale * (1 + decay) + rng.normal(0, 0.01 * scale, size=num_epochs),
            "val_loss": scale * (1.1 + decay),
            "val_mae": 6 + 4 * decay + rng.normal(0, 0.2, size=num_epochs),
        }
    )
    history.to_csv(folder / "history.csv", index=False)


def write_predictions(folder, model, table, *, noise, seed):
    """Write `test_predictions.csv` and `metrics.json` for made-up outputs; return the frame."""
    frame = predictions_frame(get_task(model), table, fake_outputs(model, table, noise=noise, seed=seed))
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "test_predictions.csv", index=False)
    # Small made-up test sets can leave an age group empty; the report tests check that case on purpose.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
        summary = metrics.summarize_predictions(frame, model_name=model)
    (folder / "metrics.json").write_text(json.dumps(summary, default=float) + "\n")
    return frame


def write_fake_run(folder, model, *, balance=None, num_faces=120, noise=6.0, seed=0, epochs=4, history=True):
    """Write a finished run folder of `model`; `balance=None` leaves the key out of config.json, as older runs do."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model": model, "backbone": "test_efficientnet", "weights": "none", "image_size": 32, "epochs": epochs}
    if balance is not None:
        config["balance"] = balance
    (folder / "config.json").write_text(json.dumps(config) + "\n")
    (folder / "run.json").write_text(
        json.dumps({"model": model, "data_dir": "/data/faces", "synthetic_data": False, "num_faces": {"test": num_faces}}) + "\n"
    )
    if history:
        write_history(folder, model, epochs, seed=seed)
    write_predictions(folder, model, face_table(num_faces, seed=100), noise=noise, seed=seed)
    run_metrics = json.loads((folder / "metrics.json").read_text())
    run_metrics.update({"best_epoch": epochs, "train_seconds": 12.5})
    (folder / "metrics.json").write_text(json.dumps(run_metrics) + "\n")
    return folder


def write_extra_evaluation(run_folder, model, label, *, eval_transform=None, num_faces=80, noise=9.0, seed=5):
    """Write `<run>/evaluations/<label>/` with predictions, metrics and evaluation.json."""
    folder = pathlib.Path(run_folder) / "evaluations" / label
    write_predictions(folder, model, face_table(num_faces, seed=200), noise=noise, seed=seed)
    description = {"label": label, "data": "/data/other", "eval_transform": eval_transform, "num_faces": num_faces}
    (folder / "evaluation.json").write_text(json.dumps(description) + "\n")
    return folder


def write_fake_grid(root):
    """Write a grid of M1, M2, M4 and M5 runs (unbalanced and oversampled), one failed run and a manifest.

    Returns the manifest path. The runs sit in `root/runs/`, and the
    manifest, in `root/grid/grid.json`, gives their folders relative to its
    own folder (`../runs/<name>`).
    """
    root = pathlib.Path(root)
    entries = []
    for index, model in enumerate(("m1", "m2", "m4", "m5")):
        for balance, noise in (("none", 7.0), ("oversample", 5.0)):
            name = f"{model}-{balance}"
            write_fake_run(root / "runs" / name, model, balance=balance, noise=noise, seed=10 * index + len(balance))
            entries.append(
                {"name": name, "model": model, "balance": balance, "run_dir": f"../runs/{name}", "status": "ok", "error": None}
            )
    entries.append(
        {
            "name": "m3-reweight",
            "model": "m3",
            "balance": "reweight",
            "run_dir": "../runs/m3-reweight",
            "status": "failed",
            "error": "RuntimeError: out of memory",
        }
    )
    write_extra_evaluation(root / "runs" / "m1-none", "m1", "historical", eval_transform="historical")
    manifest = {"grid": "experiments/cpu-grid.toml", "started": "2025-01-01T10:00:00", "runs": entries}
    manifest_path = root / "grid" / "grid.json"
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest_path
