"""A `keras.utils.PyDataset` of face images and the targets of one model."""

import math

import keras
import numpy as np
from PIL import Image

from faceage_keras.augment import AugmentConfig, augment_face
from faceage_keras.balance import check_balance, inverse_frequency_weights, oversampled_order
from faceage_keras.images import decode_rgb, load_rgb
from faceage_keras.models import get_task


def normalize(pixels):
    """Map uint8 RGB pixels to float32 in [-1, 1]."""
    # The backbone layer maps [-1, 1] to the mean and std its weights expect.
    return np.asarray(pixels, dtype="float32") / 127.5 - 1.0


def epoch_order(groups, genders, *, training, balance, seed, epoch):
    """Return the face indices of one epoch: in row order for evaluation, else shuffled or oversampled.

    The order depends only on `seed` and `epoch`, so a resumed run trains on the
    same epochs as an uninterrupted one.
    """
    if not training:
        return np.arange(len(groups))
    rng = np.random.default_rng([seed, epoch])
    if balance == "oversample":
        return oversampled_order(groups, genders, rng)
    return rng.permutation(len(groups))


def num_batches(num_faces, batch_size, *, training):
    """Return the number of batches of an epoch of `num_faces` faces.

    A training batch of one face breaks BatchNorm in train mode, so a last
    batch of one is left out. The next epoch's shuffle includes that face.
    """
    count = math.ceil(num_faces / batch_size)
    if training and count > 1 and num_faces % batch_size == 1:
        count -= 1
    return count


class FaceDataset(keras.utils.PyDataset):
    """Batches of normalised face images with the targets a model needs.

    Each batch is `(images, targets)`, or `(images, targets, sample_weight)`
    for the cascade model m5 and for `balance="reweight"`. Images are float32
    `(batch, size, size, 3)` in [-1, 1]. Targets are a dict keyed by the
    model's output names.

    Args:
        table: DataFrame with `path`, `age_clipped`, `gender` and `group`
            columns (see `faceage_keras.sources.load_face_table`). An
            optional `image_bytes` column contains each face's encoded file
            content, which is then decoded instead of reading `path`.
        task: str or `TaskSpec`. The model the targets are for.
        image_size: int. Output side in pixels.
        batch_size: int. Faces per batch.
        training: bool. Augment and reshuffle every epoch.
        augment: `AugmentConfig` or None. Augmentation strengths when training.
        seed: int. Seed of the shuffling and augmentation. Each batch is
            drawn from its own generator seeded with (seed, epoch, batch
            index), so a run repeats exactly for the same seed and `workers`.
        balance: str. `"none"`, `"oversample"` or `"reweight"` over the
            age-group x gender cells (see `faceage_keras.balance`). Only
            applies when `training` is True.
        transform: callable or None. `transform(pixels, index)` maps a
            face's resized uint8 pixels to new uint8 pixels of the same
            shape, after any augmentation; evaluation uses it to render the
            test faces differently, e.g. with a historical-photo look.
        **kwargs: `keras.utils.PyDataset` arguments (`workers`,
            `use_multiprocessing`, `max_queue_size`).
    """

    def __init__(
        self,
        table,
        task,
        *,
        image_size,
        batch_size=64,
        training=False,
        augment=None,
        seed=42,
        balance="none",
        transform=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if len(table) == 0:
            raise ValueError("`table` is empty: a data set needs at least one face.")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be at least 1. Received: batch_size={batch_size}")
        self.table = table.reset_index(drop=True)
        self.task = get_task(task) if isinstance(task, str) else task
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.training = bool(training)
        self.augment = augment or AugmentConfig()
        self.seed = int(seed)
        self.balance = check_balance(balance) if self.training else "none"
        self.transform = transform
        self.epoch = 0

        self._paths = self.table["path"].to_numpy()
        self._encoded = self.table["image_bytes"].to_numpy() if "image_bytes" in self.table else None
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

    def set_epoch(self, epoch):
        """Select the epoch whose shuffle and augmentation the following batches use."""
        self.epoch = int(epoch)
        self._order = self._epoch_order()

    def _batch_rng(self, batch_index):
        if not self.training:
            return None
        return np.random.default_rng([self.seed, self.epoch, batch_index])

    def load_image(self, index, rng=None):
        """Return face `index` as a uint8 array, augmented when `rng` is given."""
        if self._encoded is None:
            image = load_rgb(self._paths[index])
        else:
            image = decode_rgb(self._encoded[index], self._paths[index])
        if rng is not None:
            image = augment_face(image, self.image_size, self.augment, rng)
        elif image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), Image.BILINEAR)
        pixels = np.asarray(image, dtype="uint8")
        if self.transform is not None:
            pixels = np.asarray(self.transform(pixels, index), dtype="uint8")
        return pixels

    def __getitem__(self, batch_index):
        if not 0 <= batch_index < len(self):
            raise IndexError(f"Batch {batch_index} out of range for {len(self)} batches.")
        indices = self._order[batch_index * self.batch_size : (batch_index + 1) * self.batch_size]

        rng = self._batch_rng(batch_index)
        images = normalize(np.stack([self.load_image(index, rng) for index in indices]))

        weights = None if self._weights is None else self._weights[indices]
        targets, sample_weight = self.task.targets(
            self._ages[indices], self._genders[indices], self._groups[indices], weights
        )
        if sample_weight is None:
            return images, targets
        return images, targets, sample_weight

    def on_epoch_end(self):
        # NOTE: Keras calls this once more before training when `workers` is 1
        # than when it is larger, so with a plain `fit` the augmentation depends
        # on `workers`. `train` avoids that with `DatasetEpoch`, which calls
        # `set_epoch` at the start of every epoch.
        self.epoch += 1
        self._order = self._epoch_order()
