"""Training the heads of a frozen-backbone model from backbone features cached on disk.

With a frozen backbone (BatchNorm statistics included) the features of a
face do not change between epochs, so they are computed once. Every epoch,
and every model of a grid that shares the backbone, then trains its heads
from the cache. The heads live in the full `FaceAgeModel`, so the saved
`.keras` file works on images exactly like a model trained end to end.

Training faces can be cached as `views` augmented renderings each; epoch `e`
then reads view `e % views`. With `views = 0` the training features are of
the plain resized faces, as for validation and test.
"""

import hashlib
import json
import logging
import math
import os
import pathlib

import keras
import numpy as np

from faceage_keras.balance import check_balance, inverse_frequency_weights
from faceage_keras.dataset import FaceDataset, epoch_order, normalize, num_batches
from faceage_keras.models import GenderGatedAge

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1


def feature_extractor(model):
    """Return a model from `model`'s images to its backbone features (shared layers)."""
    return keras.Model(model.inputs, model.get_layer("backbone").output, name=f"{model.name}_features")


def head_model(model):
    """Return a model from backbone features to `model`'s outputs that shares its head layers.

    Training it trains the heads of `model`.
    """
    num_features = model.get_layer("backbone").output.shape[-1]
    features = keras.Input((num_features,), name="features")
    hidden = model.get_layer("head_dropout")(features)
    outputs = {name: model.get_layer(name)(hidden) for name in model.task.heads}
    if model.task.cascade:
        gate = model.get_layer("age")
        if not isinstance(gate, GenderGatedAge):
            raise TypeError(f"Layer 'age' of a cascade model must be GenderGatedAge. Received: {type(gate).__name__}")
        outputs["age"] = gate([outputs["gender"], outputs["age_male"], outputs["age_female"]])
    return keras.Model(features, outputs, name=f"{model.name}_heads")


class _FaceImages(keras.utils.PyDataset):
    """Image batches of a table in row order, each face rendered as one view."""

    def __init__(self, faces, view, seed, **kwargs):
        super().__init__(**kwargs)
        self.faces = faces
        self.view = view
        self.seed = seed

    def __len__(self):
        return math.ceil(len(self.faces.table) / self.faces.batch_size)

    def __getitem__(self, batch_index):
        size = self.faces.batch_size
        indices = range(batch_index * size, min((batch_index + 1) * size, len(self.faces.table)))
        images = []
        for index in indices:
            # View 0 with no augmentation is the evaluation rendering.
            rng = np.random.default_rng([self.seed, self.view, index]) if self.view > 0 else None
            images.append(self.faces.load_image(index, rng))
        return normalize(np.stack(images))


def cache_key(model, table, *, image_size, views, augment, seed):
    """Return a hex digest that names the cached features of `table`.

    It covers the backbone and its weights (through the backbone config and
    a checksum of its parameters), the image size, the faces (name, path,
    file size and modification time) and, for augmented views, the
    augmentation settings and seed.
    """
    digest = hashlib.sha256()
    backbone = model.get_layer("backbone")
    description = {
        "format": CACHE_FORMAT_VERSION,
        "backbone": backbone.get_config(),
        "image_size": int(image_size),
        "views": int(views),
        "augment": repr(augment) if views else None,
        "seed": int(seed) if views else None,
    }
    digest.update(json.dumps(description, sort_keys=True, default=str).encode())
    for weight in backbone.weights:
        values = keras.ops.convert_to_numpy(weight.value)
        digest.update(np.ascontiguousarray(values, dtype="float32").tobytes())
    if "image_bytes" in table:
        # Faces read from a TFDS data set: their encoded bytes are the data.
        for name, encoded in zip(table["image_name"], table["image_bytes"]):
            digest.update(f"{name}\0".encode() + hashlib.sha256(encoded).digest())
    else:
        for name, path in zip(table["image_name"], table["path"]):
            stat = os.stat(path)
            digest.update(f"{name}\0{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def compute_features(model, table, *, image_size, batch_size, views=0, augment=None, seed=42, workers=1):
    """Return backbone features of `table`'s faces, in row order.

    Returns:
        float32 array `(n, features)` for `views == 0`, else
        `(views, n, features)` with augmented renderings.
    """
    extractor = feature_extractor(model)
    faces = FaceDataset(table, model.task, image_size=image_size, batch_size=batch_size, augment=augment)
    rendered = []
    for view in range(max(views, 1)):
        batches = _FaceImages(faces, view + 1 if views else 0, seed, workers=workers)
        rendered.append(np.asarray(extractor.predict(batches, verbose=0), dtype="float32"))
    return np.stack(rendered) if views else rendered[0]


def cached_features(model, table, cache_dir, *, image_size, batch_size, views=0, augment=None, seed=42, workers=1):
    """Return `compute_features(...)`, read from `cache_dir` when computed before.

    New features are written to a temporary file and renamed, so an
    interrupted run never leaves a partial cache entry.
    """
    cache_dir = pathlib.Path(cache_dir)
    key = cache_key(model, table, image_size=image_size, views=views, augment=augment, seed=seed)
    path = cache_dir / f"{key}.npy"
    if path.is_file():
        features = np.load(path)
        logger.info("Read cached features %s %s from %s.", features.shape, features.dtype, path)
        return features

    logger.info("Computing backbone features of %d faces (%d augmented views).", len(table), views)
    features = compute_features(
        model, table, image_size=image_size, batch_size=batch_size, views=views, augment=augment, seed=seed, workers=workers
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial.npy")
    np.save(partial, features)
    os.replace(partial, path)
    logger.info("Cached features %s in %s.", features.shape, path)
    return features


class FeatureDataset(keras.utils.PyDataset):
    """Batches of cached backbone features with the targets of a model.

    The counterpart of `FaceDataset` for `head_model`: same targets, sample
    weights, per-epoch shuffling and balancing, with features in place of
    images. It has the `table` and `task` attributes that
    `callbacks.ValidationMetrics` reads.

    Args:
        features: float32 array `(n, features)`, or `(views, n, features)`
            with one view per epoch in turn.
        table: DataFrame of the same `n` faces in the same order.
        task: `TaskSpec`.
        batch_size: int. Faces per batch.
        training: bool. Reshuffle every epoch.
        seed: int. Seed of the shuffling and oversampling.
        balance: str. `"none"`, `"oversample"` or `"reweight"` (training only).
    """

    def __init__(self, features, table, task, *, batch_size=64, training=False, seed=42, balance="none", **kwargs):
        super().__init__(**kwargs)
        features = np.asarray(features, dtype="float32")
        self.views = features if features.ndim == 3 else features[np.newaxis]
        if self.views.shape[1] != len(table):
            raise ValueError(f"Got features of {self.views.shape[1]} faces for a table of {len(table)} faces.")
        self.table = table.reset_index(drop=True)
        self.task = task
        self.batch_size = int(batch_size)
        self.training = bool(training)
        self.seed = int(seed)
        self.balance = check_balance(balance) if self.training else "none"
        self.epoch = 0

        self._ages = self.table["age_clipped"].to_numpy(dtype="float32")
        self._genders = self.table["gender"].to_numpy(dtype="int64")
        self._groups = self.table["group"].to_numpy(dtype="int64")
        self._weights = None
        if self.balance == "reweight":
            self._weights = inverse_frequency_weights(self._groups, self._genders)
        self._order = self._epoch_order()

    def _epoch_order(self):
        return epoch_order(
            self._groups, self._genders, training=self.training, balance=self.balance, seed=self.seed, epoch=self.epoch
        )

    def __len__(self):
        return num_batches(len(self._order), self.batch_size, training=self.training)

    def __getitem__(self, batch_index):
        if not 0 <= batch_index < len(self):
            raise IndexError(f"Batch {batch_index} out of range for {len(self)} batches.")
        indices = self._order[batch_index * self.batch_size : (batch_index + 1) * self.batch_size]
        features = self.views[self.epoch % len(self.views)][indices]

        weights = None if self._weights is None else self._weights[indices]
        targets, sample_weight = self.task.targets(
            self._ages[indices], self._genders[indices], self._groups[indices], weights
        )
        if sample_weight is None:
            return features, targets
        return features, targets, sample_weight

    def set_epoch(self, epoch):
        """Select the epoch whose order and augmented view the following batches use."""
        self.epoch = int(epoch)
        self._order = self._epoch_order()

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)
