"""Model outputs for face images, preprocessed as in evaluation, with optional mirror averaging (TTA)."""

import os

import numpy as np
from PIL import Image
from scipy.special import softmax

from faceage_keras.dataset import normalize
from faceage_keras.images import load_rgb, to_rgb

# Outputs that are logits; the others are ages in years.
LOGIT_OUTPUTS = ("gender", "age_group")


def prepare_face(face, image_size):
    """Return one face as a uint8 array of `image_size` x `image_size` x 3, as `FaceDataset` evaluates it.

    Args:
        face: a path, a PIL image, or a uint8 numpy array of shape (height, width, 3).
        image_size: int. Input side of the model in pixels.

    Raises:
        ImageReadError: a path that is missing or does not decode.
        TypeError, ValueError: another kind of input, or an array of another shape or dtype.
    """
    if isinstance(face, (str, os.PathLike)):
        image = load_rgb(face)
    elif isinstance(face, Image.Image):
        image = to_rgb(face)
    elif isinstance(face, np.ndarray):
        if face.ndim != 3 or face.shape[-1] != 3 or face.dtype != np.uint8:
            raise ValueError(
                f"A face array must be uint8 RGB of shape (height, width, 3). "
                f"Received shape {face.shape} and dtype {face.dtype}."
            )
        image = Image.fromarray(face, mode="RGB")
    else:
        raise TypeError(
            f"A face must be a path, a PIL image or a uint8 array of shape (height, width, 3). "
            f"Received: {type(face).__name__}"
        )
    # Bilinear resizing to the input size, as `FaceDataset` does for evaluation.
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.BILINEAR)
    return np.asarray(image, dtype="uint8")


def predict_views(model, batches, *, tta=False):
    """Run `model` on batches of uint8 faces, and also on their mirror images when `tta` is set.

    Args:
        model: a Keras model of this package.
        batches: iterable of uint8 arrays (batch, size, size, 3).
        tta: bool. Also predict the horizontally mirrored faces.

    Returns:
        A list with one dict of concatenated outputs per view: the original
        faces first, then the mirrored ones when `tta` is set.
    """
    num_views = 2 if tta else 1
    collected = [dict() for _ in range(num_views)]
    for batch in batches:
        views = [batch, batch[:, :, ::-1]] if tta else [batch]
        for outputs, faces in zip(collected, views):
            for name, values in model.predict_on_batch(normalize(faces)).items():
                outputs.setdefault(name, []).append(np.asarray(values))
    return [{name: np.concatenate(parts) for name, parts in outputs.items()} for outputs in collected]


def average_views(views):
    """Average the outputs of several views of the same faces.

    Ages are averaged in years and classes by their probabilities. The mean
    probabilities go back as log-probabilities, which act as logits for
    `evaluation.decode_outputs`.
    """
    if len(views) == 1:
        return views[0]
    averaged = {}
    for name in views[0]:
        stacked = np.stack([np.asarray(view[name], dtype="float64") for view in views])
        if name in LOGIT_OUTPUTS:
            averaged[name] = np.log(softmax(stacked, axis=-1).mean(axis=0))
        else:
            averaged[name] = stacked.mean(axis=0)
    return averaged


def face_batches(faces, image_size, batch_size):
    """Yield uint8 arrays of up to `batch_size` prepared faces (see `prepare_face`)."""
    for start in range(0, len(faces), batch_size):
        yield np.stack([prepare_face(face, image_size) for face in faces[start : start + batch_size]])
