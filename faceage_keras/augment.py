"""Training-time augmentation of face crops, driven by an explicit random generator."""

import dataclasses

from PIL import Image, ImageEnhance

from faceage_keras.historical import HistoricalLook, apply_historical_look


@dataclasses.dataclass
class AugmentConfig:
    """Strengths of the training augmentations.

    Attributes:
        crop_scale: tuple of float. Range of the area fraction kept by the
            random resized crop.
        flip_probability: float. Probability of a horizontal flip.
        brightness: float. Maximum relative change of brightness.
        contrast: float. Maximum relative change of contrast.
        saturation: float. Maximum relative change of saturation.
        rotation_degrees: float. Maximum rotation either way, in degrees.
        historical: `HistoricalLook` or None. Look of an old photograph,
            applied after the other augmentations; None turns it off. A dict
            (a TOML `[augment.historical]` table) is read with
            `HistoricalLook.from_dict`.
    """

    crop_scale: tuple = (0.8, 1.0)
    flip_probability: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    rotation_degrees: float = 10.0
    historical: HistoricalLook | None = None

    def __post_init__(self):
        crop_scale = self.crop_scale
        if isinstance(crop_scale, str) or not hasattr(crop_scale, "__len__") or len(crop_scale) != 2:
            raise ValueError(f"`crop_scale` must be a pair (low, high). Received: crop_scale={crop_scale!r}")
        _check_number("crop_scale", crop_scale[0], 1e-6, 1.0)
        _check_number("crop_scale", crop_scale[1], crop_scale[0], 1.0)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))

        _check_number("flip_probability", self.flip_probability, 0.0, 1.0)
        for name in ("brightness", "contrast", "saturation"):
            _check_number(name, getattr(self, name), 0.0, 1.0)
        _check_number("rotation_degrees", self.rotation_degrees, 0.0, 180.0)

        if isinstance(self.historical, dict):
            self.historical = HistoricalLook.from_dict(self.historical)
        if self.historical is not None and not isinstance(self.historical, HistoricalLook):
            raise ValueError(
                f"`historical` must be a table of historical-look settings, or left out to turn the look off. "
                f"Received: historical={self.historical!r}"
            )


def _check_number(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"`{name}` must be a number in [{low}, {high}]. Received: {name}={value!r}")


def augment_face(image, size, config, rng):
    """Return a randomly cropped, flipped, colour-jittered and rotated RGB face of `size` x `size` pixels.

    With `config.historical` set, the face may also get the look of an old
    photograph (see `faceage_keras.historical`).

    Args:
        image: PIL RGB image.
        size: int. Output side in pixels.
        config: `AugmentConfig`.
        rng: `numpy.random.Generator` that draws every random choice.
    """
    width, height = image.size

    # Random resized crop with the aspect ratio kept, as faces are centred crops.
    scale = rng.uniform(*config.crop_scale)
    crop_width, crop_height = width * scale**0.5, height * scale**0.5
    left = rng.uniform(0, width - crop_width)
    top = rng.uniform(0, height - crop_height)
    box = (left, top, left + crop_width, top + crop_height)
    image = image.resize((size, size), Image.BILINEAR, box=box)

    if rng.random() < config.flip_probability:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)

    for enhancer, strength in (
        (ImageEnhance.Brightness, config.brightness),
        (ImageEnhance.Contrast, config.contrast),
        (ImageEnhance.Color, config.saturation),
    ):
        if strength > 0:
            image = enhancer(image).enhance(rng.uniform(1 - strength, 1 + strength))

    if config.rotation_degrees > 0:
        angle = rng.uniform(-config.rotation_degrees, config.rotation_degrees)
        image = image.rotate(angle, resample=Image.BILINEAR, fillcolor=(0, 0, 0))

    if config.historical is not None:
        image = apply_historical_look(image, config.historical, rng)
    return image
