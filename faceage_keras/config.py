"""Experiment configuration: a dataclass read from TOML files and command-line overrides."""

import dataclasses
import json
import pathlib
import tomllib
import typing

import timm

from faceage_keras.augment import AugmentConfig
from faceage_keras.backbone import CHECKPOINT_SUFFIXES, LITE0_MODEL_NAME, LITE0_PACKAGE_WEIGHTS, NAMED_WEIGHTS
from faceage_keras.balance import BALANCE_METHODS
from faceage_keras.models import get_task
from faceage_keras.splits import MIN_FACES

OPTIMIZERS = ("sgd", "adamw")
MIXED_PRECISION = ("bfloat16",)


class ConfigError(ValueError):
    """An invalid experiment setting."""


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on.

    TOML files set these fields as top-level keys, with the augmentation
    strengths in an `[augment]` table (see `AugmentConfig`) and the look of
    old photographs, off unless given, in an `[augment.historical]` table (see
    `faceage_keras.historical.HistoricalLook`). The defaults are the CPU
    recipe of `experiments/cpu/`.

    Attributes:
        model: str. `m1` ... `m5`.
        backbone: str. timm model name.
        weights: str. Backbone weights: `none`, `imagenet`,
            `efficientnet-lite0-package` or a checkpoint path.
        image_size: int. Side of the square input in pixels.
        freeze_backbone: bool. Train only the heads.
        cache_features: bool. With a frozen backbone, compute the backbone
            features once, cache them on disk and train the heads from the
            cache (see `faceage_keras.feature_cache`).
        cache_views: int. Augmented views cached per training face; 0 caches
            the plain resized faces (no training augmentation).
        finetune_stages: int. After training the heads of a frozen
            backbone, unfreeze this many of the backbone's last parameter
            groups (timm's coarse `group_matcher`) and train the model on
            images for `finetune_epochs` more epochs; 0 skips this second
            stage (see docs/finetune.md).
        finetune_epochs: int. Maximum number of second-stage epochs.
        finetune_learning_rate: float. Initial learning rate of the second
            stage, stepped by `lr_step_factor` every `lr_step_epochs`
            epochs of that stage.
        balance: str. `none`, `oversample` or `reweight` over age groups
            and genders (see `faceage_keras.balance`).
        dropout: float. Dropout rate before the heads.
        age_bias: float. Initial bias of age heads, in years.
        epochs: int. Maximum number of epochs.
        batch_size: int. Faces per training step.
        optimizer: str. `sgd` (with momentum) or `adamw`.
        learning_rate: float. Initial learning rate.
        momentum: float. SGD momentum.
        weight_decay: float. AdamW decoupled weight decay.
        global_clipnorm: float or None. Clip of the global gradient norm (as
            `torch.nn.utils.clip_grad_norm_` does); 0 or None disables it.
        lr_step_epochs: int. Multiply the learning rate by `lr_step_factor`
            every this many epochs.
        lr_step_factor: float. Factor of each learning-rate step.
        early_stopping_patience: int. Stop after this many epochs without a
            better validation score.
        seed: int. Seed of the splits, shuffling and augmentation.
        workers: int. Threads that decode and augment images.
        limit: int or None. Use only the first N faces after a seeded shuffle.
        skip_bad_rows: bool. Drop invalid metadata rows instead of failing.
        augment: AugmentConfig. Training augmentation.
        model_kwargs: dict. Extra `timm.create_model` arguments, e.g.
            `{img_size = 112}` for a ViT at 112 px.
        channels_last: bool. Run the backbone in channels-last memory
            format, for GPUs (see `faceage_keras.acceleration`).
        mixed_precision: str or None. `"bfloat16"` runs the backbone under
            bfloat16 autocast, for GPUs; None trains in float32.
    """

    model: str = "m1"
    backbone: str = "tf_efficientnet_lite0"
    weights: str = "efficientnet-lite0-package"
    image_size: int = 112
    freeze_backbone: bool = False
    cache_features: bool = False
    cache_views: int = 0
    finetune_stages: int = 0
    finetune_epochs: int = 2
    finetune_learning_rate: float = 5e-5
    balance: str = "none"
    dropout: float = 0.0
    age_bias: float = 33.0
    epochs: int = 4
    batch_size: int = 64
    optimizer: str = "adamw"
    learning_rate: float = 5e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    global_clipnorm: float | None = 5.0
    lr_step_epochs: int = 3
    lr_step_factor: float = 0.2
    early_stopping_patience: int = 4
    seed: int = 42
    workers: int = 2
    limit: int | None = None
    skip_bad_rows: bool = False
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    channels_last: bool = False
    mixed_precision: str | None = None

    def __post_init__(self):
        _check_types(self)
        if isinstance(self.augment, dict):
            self.augment = _from_dict(AugmentConfig, self.augment, "[augment]")
        if not isinstance(self.augment, AugmentConfig):
            raise ValueError(f"`augment` must be a table of augmentation settings. Received: augment={self.augment!r}")
        self.model = get_task(self.model).name

        if not timm.is_model(self.backbone.split(".", 1)[0]):
            raise ValueError(f"`backbone` must be a timm model name. Received: backbone={self.backbone!r}")
        if self.weights not in NAMED_WEIGHTS and not str(self.weights).endswith(CHECKPOINT_SUFFIXES):
            raise ValueError(
                f"`weights` must be one of {NAMED_WEIGHTS} or a checkpoint path ending in "
                f"{CHECKPOINT_SUFFIXES}. Received: weights={self.weights!r}"
            )
        if self.balance not in BALANCE_METHODS:
            raise ValueError(f"`balance` must be one of {BALANCE_METHODS}. Received: balance={self.balance!r}")
        if self.cache_features and not self.freeze_backbone:
            raise ValueError(
                "`cache_features = true` needs `freeze_backbone = true`: features of a backbone "
                "that trains change every step."
            )
        if self.finetune_stages and not self.freeze_backbone:
            raise ValueError(
                "`finetune_stages` needs `freeze_backbone = true`: without it the whole backbone already "
                f"trains in the first stage. Received: finetune_stages={self.finetune_stages}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}. Received: optimizer={self.optimizer!r}")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"`mixed_precision` must be one of {MIXED_PRECISION}, or left out for float32. float16 is not "
                f"offered because it needs loss scaling. Received: mixed_precision={self.mixed_precision!r}"
            )

        if self.weights == LITE0_PACKAGE_WEIGHTS and self.backbone != LITE0_MODEL_NAME:
            raise ValueError(
                f"weights={LITE0_PACKAGE_WEIGHTS!r} fits only backbone={LITE0_MODEL_NAME!r}. "
                f"Received: backbone={self.backbone!r}"
            )

        for name, low, high in _RANGES:
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise ValueError(f"`{name}` must be in [{low}, {high}]. Received: {name}={value}")
        if not 0 < self.lr_step_factor <= 1:
            raise ValueError(f"`lr_step_factor` must be in (0, 1]. Received: lr_step_factor={self.lr_step_factor}")
        if self.learning_rate <= 0:
            raise ValueError(f"`learning_rate` must be positive. Received: learning_rate={self.learning_rate}")
        if self.finetune_learning_rate <= 0:
            raise ValueError(
                f"`finetune_learning_rate` must be positive. Received: finetune_learning_rate={self.finetune_learning_rate}"
            )
        if self.global_clipnorm is not None and self.global_clipnorm < 0:
            raise ValueError(
                f"`global_clipnorm` must be positive, or 0 to disable clipping. "
                f"Received: global_clipnorm={self.global_clipnorm}"
            )
        if self.global_clipnorm == 0:
            self.global_clipnorm = None

    def to_dict(self):
        return dataclasses.asdict(self)

    def save(self, path):
        """Write the resolved config as JSON."""
        pathlib.Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


# Inclusive bounds of numeric settings.
_RANGES = (
    ("image_size", 32, 4096),
    ("epochs", 1, 100_000),
    # A training batch of one face breaks BatchNorm in train mode.
    ("batch_size", 2, 100_000),
    ("lr_step_epochs", 1, 100_000),
    ("early_stopping_patience", 1, 100_000),
    ("workers", 1, 256),
    ("cache_views", 0, 1000),
    ("finetune_stages", 0, 1000),
    ("finetune_epochs", 1, 100_000),
    ("limit", MIN_FACES, 10**9),
    ("seed", 0, 2**32 - 1),
    ("dropout", 0.0, 0.99),
    ("momentum", 0.0, 0.999),
    ("weight_decay", 0.0, 1.0),
)


def _check_types(config):
    """Raise ValueError for a setting of the wrong type, e.g. `epochs = "4"` in TOML."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        allowed = [arg for arg in typing.get_args(field.type) if arg is not type(None)] or [field.type]
        if value is None and len(allowed) < len(typing.get_args(field.type)):
            continue
        expected = allowed[0]
        if expected is float:
            valid = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif expected is int:
            valid = isinstance(value, int) and not isinstance(value, bool)
        elif expected in (bool, str, dict):
            valid = isinstance(value, expected)
        else:
            continue
        if not valid:
            raise ValueError(
                f"`{field.name}` must be of type {expected.__name__}. Received: {field.name}={value!r} "
                f"of type {type(value).__name__}"
            )


def _from_dict(cls, values, where):
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown key(s) {unknown} in {where}. Accepted keys: {sorted(known)}")
    return cls(**values)


def load_config(path=None, **overrides):
    """Build a `TrainConfig` from an optional TOML or JSON file and overrides.

    Overrides that are None are ignored, so command-line options that were
    not given keep the file's values.
    """
    values = {}
    if path is not None:
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Config file not found: {path}")
        try:
            if path.suffix == ".json":
                values = json.loads(path.read_text())
            else:
                with path.open("rb") as file:
                    values = tomllib.load(file)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"Cannot parse config file {path}: {error}") from error
    values.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return _from_dict(TrainConfig, values, str(path) if path else "the config")
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from error
