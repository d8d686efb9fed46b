"""Turning model outputs into age and gender predictions, metrics and figures."""

import json
import logging
import math
import pathlib

import numpy as np
import pandas as pd

from faceage_keras import labels, metrics, plots

logger = logging.getLogger(__name__)


def _softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def decode_outputs(task, outputs):
    """Convert raw model outputs into predictions per face.

    Args:
        task: `TaskSpec` of the model.
        outputs: dict of arrays as returned by `model.predict`.

    Returns:
        A dict of arrays. Every model gives `age_pred` in years and
        `group_pred`. For group models, `age_pred` is the centre of the most
        probable group, and `age_pred_expected` and `prob_group` (n, 5) are
        added. Gender models add `gender_pred` and `prob_female`.
    """
    decoded = {}
    if task.predicts_age_group:
        prob_group = _softmax(np.asarray(outputs["age_group"], dtype="float64"))
        decoded["prob_group"] = prob_group
        decoded["group_pred"] = prob_group.argmax(axis=-1)
        decoded["age_pred"] = labels.group_centre_ages(prob_group)
        decoded["age_pred_expected"] = labels.expected_ages(prob_group)
    else:
        # Predictions are clipped to the target range, like the true ages.
        decoded["age_pred"] = labels.clip_age(np.asarray(outputs["age"], dtype="float32").reshape(-1))
        decoded["group_pred"] = labels.age_to_group(decoded["age_pred"])

    if task.predicts_gender:
        prob_gender = _softmax(np.asarray(outputs["gender"], dtype="float64"))
        decoded["prob_female"] = prob_gender[:, labels.FEMALE]
        decoded["gender_pred"] = prob_gender.argmax(axis=-1)
    return decoded


def predictions_frame(task, table, outputs):
    """Build the test predictions table (one row per face) of `table` and model `outputs`."""
    decoded = decode_outputs(task, outputs)
    missing = np.full(len(table), np.nan)
    frame = pd.DataFrame(
        {
            "image_name": table["image_name"].to_numpy(),
            "age_true": table["age_clipped"].to_numpy(dtype="float32"),
            "age_pred": decoded["age_pred"],
            "group_true": table["group"].to_numpy(),
            "group_pred": decoded["group_pred"],
            "gender_true": table["gender"].to_numpy(),
            "gender_pred": decoded.get("gender_pred", missing),
            "prob_female": decoded.get("prob_female", missing),
        }
    )
    if "age_pred_expected" in decoded:
        frame["age_pred_expected"] = decoded["age_pred_expected"]
        for index in range(labels.NUM_AGE_GROUPS):
            frame[f"prob_group_{index}"] = decoded["prob_group"][:, index]
    return frame


def validation_scores(task, table, outputs):
    """Return flat epoch metrics: `mae`, `mae_<group>`, and the accuracies the model has.

    For group models `mae` uses the group centre and `mae_expected` the
    expectation over the group probabilities.
    """
    frame = predictions_frame(task, table, outputs)
    age_true = frame["age_true"].to_numpy()
    scores = {"mae": metrics.mean_absolute_error(age_true, frame["age_pred"])}
    for suffix, value in zip(metrics.GROUP_METRIC_SUFFIXES, metrics.groupwise_mae(age_true, frame["age_pred"]).values()):
        scores[f"mae_{suffix}"] = value
    if task.predicts_age_group:
        scores["mae_expected"] = metrics.mean_absolute_error(age_true, frame["age_pred_expected"])
        scores["age_group_accuracy"] = metrics.age_group_accuracy(frame["group_true"], frame["group_pred"])
    if task.predicts_gender:
        scores["gender_accuracy"] = float(np.mean(frame["gender_true"] == frame["gender_pred"]))
    return scores


def _json_safe(value):
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evaluate_predictions(frame, model_name, out_dir, *, title_prefix="", extra_metrics=None):
    """Write `test_predictions.csv`, `metrics.json`, `test_scatter.png` and `residuals.png`.

    Undefined metrics (nan) are written as JSON null. `extra_metrics` (a dict,
    e.g. the best epoch) is added to `metrics.json` and to the returned dict.

    Returns:
        The metrics dict.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out_dir / "test_predictions.csv", index=False)

    summary = metrics.summarize_predictions(frame, model_name=model_name)
    summary.update(extra_metrics or {})
    (out_dir / "metrics.json").write_text(json.dumps(_json_safe(summary), indent=2) + "\n")

    title = f"{title_prefix}{model_name}: test set ({len(frame)} faces)"
    plots.plot_scatter(frame["age_true"], frame["age_pred"], out_dir / "test_scatter.png", title=title)
    plots.plot_residuals(frame["age_true"], frame["age_pred"], out_dir / "residuals.png", title=title)
    logger.info("Test MAE %.2f years on %d faces; results in %s.", summary["mae"], len(frame), out_dir)
    return summary
