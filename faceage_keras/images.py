"""Decoding of face images into 8-bit RGB, whatever the file's mode."""

import io

import numpy as np
from PIL import Image, ImageOps

# Modes with more than 8 bits per sample; PIL's own conversion to RGB clips them.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


class ImageReadError(ValueError):
    """An image file that is missing or cannot be decoded."""


def to_rgb(image):
    """Convert a PIL image of any mode to RGB, applying its EXIF orientation.

    16-bit and float images are rescaled from their own minimum and maximum to
    0-255 before conversion, and transparent images are composited on white.
    """
    image = ImageOps.exif_transpose(image)

    if image.mode in _WIDE_MODES:
        values = np.asarray(image, dtype="float64")
        low, high = float(values.min()), float(values.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        image = Image.fromarray(((values - low) * scale).astype("uint8"), mode="L")

    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def _decode(path, draft_size=None, data=None):
    """Decode the file at `path`, or the encoded bytes `data` when given (`path` then names them in errors)."""
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as image:
            if draft_size is not None:
                image.draft("RGB", draft_size)
            image.load()
            return to_rgb(image)
    except FileNotFoundError as error:
        raise ImageReadError(f"Image not found: {path}") from error
    except Exception as error:
        # Malformed files make Pillow raise many exception types (OSError,
        # SyntaxError, struct.error from EXIF parsing, ...), all of them "unreadable".
        raise ImageReadError(f"Cannot decode image {path}: {type(error).__name__}: {error}") from error


def load_rgb(path):
    """Read an image file as an RGB PIL image, raising `ImageReadError` with the reason."""
    return _decode(path)


def decode_rgb(data, name):
    """Decode encoded image bytes (a file's content) as an RGB PIL image, naming them `name` in errors."""
    return _decode(name, data=data)


def check_readable(path):
    """Raise `ImageReadError` unless `path` decodes, EXIF included; JPEGs decode at reduced scale."""
    _decode(path, draft_size=(64, 64))
