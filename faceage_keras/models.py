"""The five models of the thesis as Keras functional graphs around a timm backbone.

| name | outputs | loss |
|------|---------|------|
| m1 | `age`, `gender` | MSE(age) + 8 x focal(gender) |
| m2 | `age` | MSE(age) |
| m3 | `age_group`, `gender` | cross-entropy(age_group) + 8 x focal(gender) |
| m4 | `age_group` | cross-entropy(age_group) |
| m5 | `gender`, `age_male`, `age_female`, `age` | as m1, each face's age loss on the head of its true gender |

`age` is in years, `gender` and `age_group` are logits (gender 0 = male,
1 = female; groups <19, 19-29, 30-39, 40-59, 60+).
"""

import dataclasses

import keras
import numpy as np

from faceage_keras.backbone import TimmBackbone
from faceage_keras.labels import FEMALE, NUM_AGE_GROUPS
from faceage_keras.losses import FocalLoss

GENDER_LOSS_WEIGHT = 8.0


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """The heads, losses and targets of one of the five models.

    Attributes:
        name: str. `m1` ... `m5`.
        description: str. One line for logs and tables.
        heads: dict. Output name to number of units of a dense head on the
            backbone features.
        losses: dict. Output name to a callable returning a fresh loss.
        loss_weights: dict. Output name to loss weight.
        cascade: bool. Whether an `age` output selects between `age_male`
            and `age_female` by the predicted gender.
    """

    name: str
    description: str
    heads: dict
    losses: dict
    loss_weights: dict
    cascade: bool = False

    @property
    def predicts_age(self):
        return "age" in self.heads or self.cascade

    @property
    def predicts_gender(self):
        return "gender" in self.heads

    @property
    def predicts_age_group(self):
        return "age_group" in self.heads

    @property
    def output_names(self):
        return tuple(self.heads) + (("age",) if self.cascade else ())

    def targets(self, ages, genders, groups, weights=None):
        """Return the `y` dict and `sample_weight` dict (or None) for a batch.

        Args:
            ages: float array (batch,). Clipped ages in years.
            genders: int array (batch,). 0 = male, 1 = female.
            groups: int array (batch,). Age-group indices.
            weights: float array (batch,) or None. Per-face loss weights, e.g.
                from balancing; they multiply every output's loss.
        """
        columns = {
            "age": np.asarray(ages, dtype="float32").reshape(-1, 1),
            "gender": np.asarray(genders, dtype="int64"),
            "age_group": np.asarray(groups, dtype="int64"),
        }
        if self.cascade:
            targets = {
                "gender": columns["gender"],
                "age_male": columns["age"],
                "age_female": columns["age"],
                "age": columns["age"],
            }
            # Each face trains only the age head of its true gender.
            is_female = (columns["gender"] == FEMALE).astype("float32")
            sample_weight = {
                "gender": np.ones_like(is_female),
                "age_male": 1.0 - is_female,
                "age_female": is_female,
                "age": np.ones_like(is_female),
            }
        else:
            targets = {name: columns[name] for name in self.heads}
            sample_weight = None

        if weights is None:
            return targets, sample_weight
        weights = np.asarray(weights, dtype="float32").reshape(-1)
        if sample_weight is None:
            sample_weight = {name: np.ones_like(weights) for name in targets}
        return targets, {name: value * weights for name, value in sample_weight.items()}


_TASKS = {}


def _register(builder):
    spec = builder()
    _TASKS[spec.name] = spec
    return builder


def _focal_gender_loss():
    return FocalLoss(gamma=2.0, alpha=(0.2, 0.8), name="gender_focal")


def _age_group_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@_register
def _m1():
    return TaskSpec(
        name="m1",
        description="age regression + gender classification",
        heads={"age": 1, "gender": 2},
        losses={"age": keras.losses.MeanSquaredError, "gender": _focal_gender_loss},
        loss_weights={"age": 1.0, "gender": GENDER_LOSS_WEIGHT},
    )


@_register
def _m2():
    return TaskSpec(
        name="m2",
        description="age regression",
        heads={"age": 1},
        losses={"age": keras.losses.MeanSquaredError},
        loss_weights={"age": 1.0},
    )


@_register
def _m3():
    return TaskSpec(
        name="m3",
        description="five age groups + gender classification",
        heads={"age_group": NUM_AGE_GROUPS, "gender": 2},
        losses={"age_group": _age_group_loss, "gender": _focal_gender_loss},
        loss_weights={"age_group": 1.0, "gender": GENDER_LOSS_WEIGHT},
    )


@_register
def _m4():
    return TaskSpec(
        name="m4",
        description="five age groups",
        heads={"age_group": NUM_AGE_GROUPS},
        losses={"age_group": _age_group_loss},
        loss_weights={"age_group": 1.0},
    )


@_register
def _m5():
    return TaskSpec(
        name="m5",
        description="gender, then gender-specific age regression (cascade)",
        heads={"gender": 2, "age_male": 1, "age_female": 1},
        losses={
            "gender": _focal_gender_loss,
            "age_male": keras.losses.MeanSquaredError,
            "age_female": keras.losses.MeanSquaredError,
        },
        loss_weights={"gender": GENDER_LOSS_WEIGHT, "age_male": 1.0, "age_female": 1.0},
        cascade=True,
    )


MODEL_NAMES = tuple(sorted(_TASKS))


def get_task(name):
    """Return the `TaskSpec` of model `name` (`m1` ... `m5`)."""
    key = str(name).lower()
    if key not in _TASKS:
        raise ValueError(f"Unknown model {name!r}. Expected one of {', '.join(MODEL_NAMES)}.")
    return _TASKS[key]


@keras.saving.register_keras_serializable(package="faceage_keras")
class GenderGatedAge(keras.layers.Layer):
    """Select the male or the female age prediction by the predicted gender.

    Takes `[gender_logits, age_male, age_female]` and returns, per face, the
    age head of the gender with the larger logit.
    """

    def call(self, inputs):
        gender_logits, age_male, age_female = inputs
        predicted = keras.ops.argmax(gender_logits, axis=-1)
        is_female = keras.ops.expand_dims(keras.ops.equal(predicted, FEMALE), -1)
        return keras.ops.where(is_female, age_female, age_male)

    def compute_output_shape(self, input_shapes):
        return input_shapes[1]


def _default_metrics(task):
    metrics = {}
    if "age" in task.output_names:
        metrics["age"] = [keras.metrics.MeanAbsoluteError(name="mae")]
    if task.predicts_gender:
        metrics["gender"] = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if task.predicts_age_group:
        metrics["age_group"] = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    return metrics


@keras.saving.register_keras_serializable(package="faceage_keras")
class FaceAgeModel(keras.Model):
    """One of the five thesis models: a timm backbone with dense heads.

    The model is a functional graph with named outputs (see the module
    docstring). `compile()` without arguments uses the thesis defaults:
    SGD (learning rate 1e-3, momentum 0.9, global gradient-norm clip 5), the losses
    and loss weights of the task, and MAE and accuracy metrics.

    Args:
        task: str. `"m1"` ... `"m5"`.
        backbone: str. A timm model name. Defaults to `"tf_efficientnet_lite0"`.
        weights: str or None. Backbone weights, as for `TimmBackbone`.
        image_size: int. Side of the square input images in pixels.
        freeze_backbone: bool. Freeze the backbone, BatchNorm statistics included.
        unfrozen_backbone_groups: int. With `freeze_backbone`, train the last
            this many parameter groups of the backbone all the same (see
            `unfreeze_backbone_groups`); 0 keeps the whole backbone frozen.
        dropout: float. Dropout rate before the heads.
        age_bias: float. Initial bias of the age heads in years, so that
            training starts near a typical age instead of 0.
        model_kwargs: dict or None. Extra `timm.create_model` arguments.
        **kwargs: Standard `keras.Model` arguments (`name`).

    Example:
    >>> model = FaceAgeModel("m4", backbone="tf_efficientnet_lite0", image_size=112)
    >>> model.compile()
    >>> logits = model.predict(images)["age_group"]  # images: (n, 112, 112, 3) in [-1, 1]
    """

    def __init__(
        self,
        task="m1",
        backbone="tf_efficientnet_lite0",
        weights="none",
        image_size=224,
        freeze_backbone=False,
        unfrozen_backbone_groups=0,
        dropout=0.0,
        age_bias=33.0,
        model_kwargs=None,
        **kwargs,
    ):
        spec = get_task(task)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout}")
        if int(image_size) < 32:
            raise ValueError(f"`image_size` must be at least 32 pixels. Received: image_size={image_size}")

        # Layers.
        feature_extractor = TimmBackbone(
            backbone, weights=weights, image_size=image_size, model_kwargs=model_kwargs, name="backbone"
        )
        feature_extractor.trainable = not freeze_backbone
        if unfrozen_backbone_groups and not freeze_backbone:
            raise ValueError(
                f"`unfrozen_backbone_groups` needs `freeze_backbone=True`, because otherwise the whole backbone "
                f"trains. Received: unfrozen_backbone_groups={unfrozen_backbone_groups}"
            )
        head_dropout = keras.layers.Dropout(dropout, name="head_dropout")
        heads = {}
        for output_name, units in spec.heads.items():
            bias = keras.initializers.Constant(age_bias if units == 1 else 0.0)
            heads[output_name] = keras.layers.Dense(units, bias_initializer=bias, name=output_name)

        # Graph.
        images = keras.Input((image_size, image_size, 3), name="image")
        features = head_dropout(feature_extractor(images))
        outputs = {output_name: head(features) for output_name, head in heads.items()}
        if spec.cascade:
            outputs["age"] = GenderGatedAge(name="age")(
                [outputs["gender"], outputs["age_male"], outputs["age_female"]]
            )
        kwargs.setdefault("name", spec.name)
        super().__init__(inputs=images, outputs=outputs, **kwargs)

        # Config.
        self.task = spec
        self.backbone_name = backbone
        self.image_size = int(image_size)
        self.freeze_backbone = bool(freeze_backbone)
        self.unfrozen_backbone_groups = 0
        if unfrozen_backbone_groups:
            self.unfreeze_backbone_groups(unfrozen_backbone_groups)
        self.dropout = float(dropout)
        self.age_bias = float(age_bias)
        self.model_kwargs = dict(model_kwargs or {})

    def unfreeze_backbone_groups(self, num_groups):
        """Train the last `num_groups` parameter groups of the frozen backbone from now on.

        The groups are those of timm's coarse `group_matcher` (stem, then
        blocks or stages, then the last convolution). The earlier groups stay
        frozen, BatchNorm statistics included. The setting is part of the
        saved config. Recompile before training.
        """
        if not self.freeze_backbone:
            raise ValueError("`unfreeze_backbone_groups` applies to a model built with `freeze_backbone=True`.")
        self.get_layer("backbone").unfreeze_last_groups(num_groups)
        self.unfrozen_backbone_groups = int(num_groups)

    def compile(self, optimizer=None, loss=None, loss_weights=None, metrics=None, **kwargs):
        """Configure training; arguments left as None take the task's defaults."""
        defaults = default_compile_args(self.task.name)
        super().compile(
            optimizer=defaults["optimizer"] if optimizer is None else optimizer,
            loss=defaults["loss"] if loss is None else loss,
            loss_weights=defaults["loss_weights"] if loss_weights is None else loss_weights,
            metrics=defaults["metrics"] if metrics is None else metrics,
            **kwargs,
        )

    def compile_from_config(self, config):
        # Keras skips restoring the compile state of models that override
        # `compile`; this one only fills in defaults, so restoring is safe.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        # Weights are not part of the config: loading restores the saved ones.
        return {
            "task": self.task.name,
            "backbone": self.backbone_name,
            "image_size": self.image_size,
            "freeze_backbone": self.freeze_backbone,
            "unfrozen_backbone_groups": self.unfrozen_backbone_groups,
            "dropout": self.dropout,
            "age_bias": self.age_bias,
            "model_kwargs": self.model_kwargs,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def build_model(name, backbone="tf_efficientnet_lite0", weights="none", image_size=224, **kwargs):
    """Build model `name` (`m1` ... `m5`) as a `FaceAgeModel`.

    Args:
        name: str. Which of the five thesis models.
        backbone: str. A timm model name.
        weights: str or None. `"none"`, `"imagenet"`, `"efficientnet-lite0-package"`
            or a checkpoint path (see `TimmBackbone`).
        image_size: int. Side of the square input images in pixels.
        **kwargs: More `FaceAgeModel` arguments (`freeze_backbone`,
            `unfrozen_backbone_groups`, `dropout`, `age_bias`).

    Returns:
        A `keras.Model` whose `compile()` needs no arguments.
    """
    return FaceAgeModel(name, backbone=backbone, weights=weights, image_size=image_size, **kwargs)


def default_compile_args(name, *, learning_rate=1e-3, momentum=0.9, global_clipnorm=5.0):
    """Return the thesis' `compile` arguments for model `name` as a dict.

    SGD with momentum and global gradient-norm clipping, the task's losses and loss
    weights, MAE on age outputs and accuracy on class outputs.
    """
    task = get_task(name)
    return {
        "optimizer": keras.optimizers.SGD(
            learning_rate=learning_rate, momentum=momentum, global_clipnorm=global_clipnorm
        ),
        "loss": {output_name: make_loss() for output_name, make_loss in task.losses.items()},
        "loss_weights": dict(task.loss_weights),
        "metrics": _default_metrics(task),
    }


__all__ = [
    "MODEL_NAMES",
    "FaceAgeModel",
    "GenderGatedAge",
    "TaskSpec",
    "build_model",
    "default_compile_args",
    "get_task",
]
