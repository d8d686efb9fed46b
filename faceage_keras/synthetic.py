"""Synthetic portraits whose drawn features depend on age and gender.

When no real data is given, training falls back to a small portrait set drawn
here with Pillow, so that every command runs without downloads. The faces are
cartoons, but the cues vary with the labels in ways a small CNN can learn:

* age: children have rounder heads, larger eyes set lower in the face, rosy
  cheeks and smaller noses. Hair greys from about 40, wrinkles on the forehead
  and around the eyes appear from about 35, and the jaw sags from about 55.
  Older men are often bald on the crown.
* gender: long hair is more likely for women (but neither always nor only),
  men have wider jaws and thicker eyebrows, some adult men have a beard or a
  moustache, and many adult women wear lipstick.

Random skin tone, hair colour, head position and size, background, rotation,
brightness, blur and noise keep the task from being trivial. Every cue is
drawn with randomness, so no single feature gives the label away.
"""

import csv
import json
import logging
import math
import os
import pathlib
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from faceage_keras.labels import FEMALE, MALE

logger = logging.getLogger(__name__)

# Increase when the drawing changes, so that sets written by an older version
# are redrawn instead of reused.
GENERATOR_VERSION = 1

MIN_SYNTHETIC_AGE = 1
MAX_SYNTHETIC_AGE = 80
MIN_IMAGE_SIZE = 16

LABELS_FILE_NAME = "labels.csv"
IMAGES_DIR_NAME = "images"
MARKER_FILE_NAME = "synthetic.json"
IMAGE_NAME_PREFIX = "synthetic_"
IMAGE_SUFFIX = ".png"

# Images are drawn at this multiple of the output size and then reduced,
# which smooths the edges of the drawn shapes.
SUPERSAMPLING = 2

GREY_HAIR = np.array([205.0, 205.0, 210.0])
BASE_HAIR_COLOURS = np.array(
    [
        [28.0, 22.0, 20.0],  # black
        [65.0, 42.0, 28.0],  # dark brown
        [110.0, 74.0, 44.0],  # brown
        [145.0, 72.0, 35.0],  # auburn
        [196.0, 160.0, 98.0],  # blond
    ]
)
LIGHT_SKIN = np.array([242.0, 208.0, 182.0])
DARK_SKIN = np.array([92.0, 60.0, 42.0])
IRIS_COLOURS = np.array(
    [
        [70.0, 45.0, 25.0],
        [40.0, 90.0, 150.0],
        [70.0, 110.0, 60.0],
        [110.0, 90.0, 60.0],
    ]
)


def _ramp(value, start, end):
    """Map `value` linearly from [start, end] to [0, 1], clipped."""
    return float(np.clip((value - start) / (end - start), 0.0, 1.0))


def _mix(colour_a, colour_b, weight):
    """Blend two RGB colours, `weight` 0 giving `colour_a` and 1 giving `colour_b`."""
    return (1.0 - weight) * np.asarray(colour_a, dtype=float) + weight * np.asarray(colour_b, dtype=float)


def _rgba(colour, alpha=255):
    """Convert a float RGB colour to a clipped integer RGBA tuple for ImageDraw."""
    red, green, blue = (int(round(channel)) for channel in np.clip(colour, 0, 255))
    return (red, green, blue, alpha)


@dataclass
class _FaceTraits:
    """Random appearance of one portrait.

    Positions and sizes are fractions of the canvas size unless the field comment names another unit.
    """

    centre_x: float
    centre_y: float
    half_height: float
    half_width: float
    jaw_width: float  # half-width of the lower face relative to `half_width`
    sag: float  # 0 (firm jaw) to 1 (strong jowls)
    skin: np.ndarray
    hair: np.ndarray
    hair_style: str  # "short", "medium", "long" or "baby"
    bald: bool
    hairline: float  # hairline height above the centre, relative to `half_height`
    eye_height: float  # eye line relative to the centre, in `half_height` (positive is lower)
    eye_radius: float  # eye half-width relative to `half_width`
    iris: np.ndarray
    brow_thickness: float  # eyebrow line width as a fraction of the canvas size
    nose_length: float  # relative to `half_height`
    lip_colour: np.ndarray
    lip_height: float  # relative to `half_height`
    wrinkles: float  # wrinkle strength, 0 (none) to 1
    childness: float  # 1 for a baby, 0 from 18 years on
    beard: str  # "none", "stubble", "moustache" or "full"
    cheek_blush: float  # blush strength, 0 (none) to 1


def _sample_traits(age, gender, rng):
    """Draw the random traits of a face, with distributions that depend on age and gender."""
    childness = _ramp(18.0 - age, 0.0, 17.0)
    male = gender == MALE

    half_height = 0.30 * rng.uniform(0.88, 1.1)
    adult_ratio = 0.80 if male else 0.73
    width_ratio = _mix(adult_ratio, 0.93, childness) + rng.normal(0.0, 0.025)
    adult_jaw = 0.92 if male else 0.72
    jaw_width = _mix(adult_jaw, 0.82, childness) + rng.normal(0.0, 0.04)

    skin = _mix(LIGHT_SKIN, DARK_SKIN, rng.uniform() ** 1.3) + rng.normal(0.0, 6.0, size=3)
    base_hair = BASE_HAIR_COLOURS[rng.integers(len(BASE_HAIR_COLOURS))]
    # People grey at different ages, so the onset moves by a few years per face.
    greyness = _ramp(age + rng.normal(0.0, 6.0), 40.0, 72.0)
    hair = _mix(base_hair, GREY_HAIR, greyness) + rng.normal(0.0, 5.0, size=3)

    if age < 3:
        hair_style = "baby"
    elif male:
        hair_style = str(rng.choice(["short", "medium", "long"], p=[0.8, 0.12, 0.08]))
    else:
        long_probability = 0.75 - 0.35 * _ramp(age, 40.0, 80.0)
        short_probability = 0.1 + 0.3 * _ramp(age, 40.0, 80.0)
        hair_style = str(
            rng.choice(
                ["short", "medium", "long"],
                p=[short_probability, 1.0 - long_probability - short_probability, long_probability],
            )
        )
    bald = bool(male and rng.uniform() < 0.65 * _ramp(age, 30.0, 75.0))
    hairline = 0.5 + 0.25 * _ramp(age, 25.0, 70.0) * rng.uniform() + rng.normal(0.0, 0.04)

    old_age = _ramp(age, 55.0, 80.0)
    eye_height = _mix(-0.05, 0.14, childness) + rng.normal(0.0, 0.02)
    eye_radius = _mix(0.105, 0.15, childness) * (1.0 - 0.12 * old_age) * rng.uniform(0.92, 1.08)
    brow_thickness = (0.0135 if male else 0.0075) * rng.uniform(0.8, 1.25)
    nose_length = _mix(0.36, 0.22, childness) + 0.06 * old_age + rng.normal(0.0, 0.02)

    natural_lips = _mix(skin, [190.0, 90.0, 90.0], 0.35)
    wears_lipstick = (not male) and age >= 15 and rng.uniform() < 0.7
    if wears_lipstick:
        lip_colour = np.array([rng.uniform(160, 215), rng.uniform(20, 55), rng.uniform(40, 80)])
    else:
        lip_colour = natural_lips
    lip_height = _mix(0.07, 0.045, old_age) * rng.uniform(0.85, 1.15)

    wrinkles = _ramp(age + rng.normal(0.0, 4.0), 35.0, 78.0)
    sag = _ramp(age + rng.normal(0.0, 4.0), 55.0, 82.0)

    cheek_blush = 0.6 * childness
    if not male and rng.uniform() < 0.4:
        cheek_blush += 0.3

    beard = "none"
    if male and rng.uniform() < 0.5 * _ramp(age, 16.0, 25.0):
        beard = str(rng.choice(["stubble", "moustache", "full"], p=[0.35, 0.25, 0.4]))

    return _FaceTraits(
        centre_x=0.5 + float(np.clip(rng.normal(0.0, 0.03), -0.07, 0.07)),
        centre_y=0.5 + float(np.clip(rng.normal(0.0, 0.025), -0.06, 0.06)),
        half_height=half_height,
        half_width=half_height * width_ratio,
        jaw_width=jaw_width,
        sag=sag,
        skin=skin,
        hair=hair,
        hair_style=hair_style,
        bald=bald,
        hairline=hairline,
        eye_height=eye_height,
        eye_radius=eye_radius,
        iris=IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))],
        brow_thickness=brow_thickness,
        nose_length=nose_length,
        lip_colour=lip_colour,
        lip_height=lip_height,
        wrinkles=wrinkles,
        childness=childness,
        beard=beard,
        cheek_blush=cheek_blush,
    )


class _Canvas:
    """Converts face-relative coordinates to pixels of the supersampled layer."""

    def __init__(self, traits, pixels):
        self.traits = traits
        self.pixels = pixels

    def x(self, offset):
        """Return the pixel column at `offset` head half-widths right of the centre."""
        return (self.traits.centre_x + offset * self.traits.half_width) * self.pixels

    def y(self, offset):
        """Return the pixel row at `offset` head half-heights below the centre."""
        return (self.traits.centre_y + offset * self.traits.half_height) * self.pixels

    def box(self, centre_x, centre_y, radius_x, radius_y):
        """Return the pixel bounding box of an ellipse given in face-relative units."""
        return [
            self.x(centre_x - radius_x),
            self.y(centre_y - radius_y),
            self.x(centre_x + radius_x),
            self.y(centre_y + radius_y),
        ]

    def width(self, fraction):
        """Return a line width of `fraction` of the canvas, at least one pixel."""
        return max(1, int(round(fraction * self.pixels)))


def _draw_background(pixels, rng):
    """Return an RGBA vertical gradient between two random colours."""
    top = rng.uniform(40, 230, size=3)
    bottom = _mix(top, rng.uniform(40, 230, size=3), rng.uniform(0.3, 1.0))
    weights = np.linspace(0.0, 1.0, pixels)[:, None, None]
    gradient = (1.0 - weights) * top + weights * bottom
    array = np.broadcast_to(gradient, (pixels, pixels, 3)).astype(np.uint8)
    return Image.fromarray(array, "RGB").convert("RGBA")


def _draw_body_and_back_hair(draw, canvas, rng):
    """Draw long or medium hair behind the head, the neck and the shoulders."""
    traits = canvas.traits
    if traits.hair_style in ("long", "medium") and not traits.bald:
        bottom = rng.uniform(1.5, 2.1) if traits.hair_style == "long" else rng.uniform(0.7, 1.0)
        draw.rounded_rectangle(
            [canvas.x(-1.22), canvas.y(-1.08), canvas.x(1.22), canvas.y(bottom)],
            radius=canvas.width(0.12),
            fill=_rgba(traits.hair),
        )

    clothes = rng.uniform(20, 235, size=3)
    draw.ellipse(canvas.box(0.0, 2.05, 2.1, 0.75), fill=_rgba(clothes))
    neck = _mix(traits.skin, [0.0, 0.0, 0.0], 0.12)
    draw.rectangle([canvas.x(-0.42), canvas.y(0.6), canvas.x(0.42), canvas.y(1.55)], fill=_rgba(neck))
    if traits.hair_style == "long" and not traits.bald:
        # Locks that fall over the shoulders, in front of the clothes.
        for side in (-1.0, 1.0):
            left, right = sorted([canvas.x(side * 1.22), canvas.x(side * 0.72)])
            draw.rounded_rectangle(
                [left, canvas.y(0.0), right, canvas.y(rng.uniform(1.5, 2.0))],
                radius=canvas.width(0.05),
                fill=_rgba(traits.hair),
            )


def _draw_head(draw, canvas):
    """Draw the ears, the cranium, the lower face with its jaw width and sagging jowls."""
    traits = canvas.traits
    skin = _rgba(traits.skin)
    for side in (-1.0, 1.0):
        draw.ellipse(canvas.box(side * 0.97, 0.02, 0.14, 0.22), fill=_rgba(_mix(traits.skin, [0, 0, 0], 0.08)))
    draw.ellipse(canvas.box(0.0, 0.0, 1.0, 1.0), fill=skin)
    # The lower face is a second ellipse, so the jaw width changes independently of the cranium.
    chin_drop = 0.05 * traits.sag
    draw.ellipse(canvas.box(0.0, 0.42 + chin_drop, traits.jaw_width, 0.6), fill=skin)
    if traits.sag > 0.0:
        for side in (-1.0, 1.0):
            jowl_x = side * traits.jaw_width * 0.72
            draw.ellipse(canvas.box(jowl_x, 0.68 + 0.1 * traits.sag, 0.22, 0.1 + 0.12 * traits.sag), fill=skin)


def _draw_top_hair(draw, canvas, rng):
    """Draw the hair on the crown, or only a ring at the sides for a bald head."""
    traits = canvas.traits
    hair = _rgba(traits.hair)
    box = canvas.box(0.0, -0.04, 1.07, 1.08)
    if traits.bald:
        for start, end in ((140, 215), (325, 40)):
            draw.chord(box, start, end, fill=hair)
        # The bald crown is redrawn in skin colour over the upper part of the ring.
        draw.chord(canvas.box(0.0, 0.0, 1.0, 1.0), 195, 345, fill=_rgba(traits.skin))
        return

    # A chord whose flat side is the hairline: its angle comes from the hairline height.
    sine = float(np.clip(traits.hairline / 1.08, 0.05, 0.99))
    angle = math.degrees(math.asin(sine))
    if traits.hair_style == "baby":
        hair = _rgba(_mix(traits.hair, traits.skin, 0.45))
        angle = max(angle, 50.0)
    draw.chord(box, 180 + angle, 360 - angle, fill=hair)
    # Hair at the temples, down to the ears unless the hair is very short.
    side_depth = rng.uniform(170, 200) if traits.hair_style != "baby" else 185
    draw.chord(box, side_depth, 180 + angle + 5, fill=hair)
    draw.chord(box, 360 - angle - 5, 360 - (side_depth - 180), fill=hair)
    if traits.hair_style != "short" and traits.hair_style != "baby" and rng.uniform() < 0.5:
        # A fringe, swept to one side.
        fringe_side = rng.choice([-1.0, 1.0])
        draw.ellipse(
            canvas.box(fringe_side * 0.35, -traits.hairline - 0.02, 0.6, 0.16),
            fill=hair,
        )


def _draw_eyes_and_brows(draw, canvas, rng):
    """Draw both eyes with irises, droopy lids with age, and eyebrows."""
    traits = canvas.traits
    radius_x = traits.eye_radius
    radius_y = radius_x * traits.half_width / traits.half_height * 0.62
    spacing = 0.38 + rng.normal(0.0, 0.02)
    lid_colour = _rgba(_mix(traits.skin, [0, 0, 0], 0.1))
    outline = _rgba(_mix(traits.skin, [0, 0, 0], 0.55))
    for side in (-1.0, 1.0):
        eye_x = side * spacing
        eye_box = canvas.box(eye_x, traits.eye_height, radius_x, radius_y)
        draw.ellipse(eye_box, fill=(245, 245, 240, 255), outline=outline, width=canvas.width(0.006))
        iris_radius = radius_x * 0.55
        draw.ellipse(
            canvas.box(eye_x, traits.eye_height, iris_radius, iris_radius * traits.half_width / traits.half_height),
            fill=_rgba(traits.iris),
        )
        pupil_radius = iris_radius * 0.45
        draw.ellipse(
            canvas.box(eye_x, traits.eye_height, pupil_radius, pupil_radius * traits.half_width / traits.half_height),
            fill=(10, 10, 10, 255),
        )
        # Upper lids cover more of the eye as the wrinkles increase.
        droop = 0.15 + 0.45 * traits.wrinkles
        lid_box = canvas.box(eye_x, traits.eye_height - radius_y * (1.0 - droop) * 1.1, radius_x * 1.1, radius_y)
        draw.chord(lid_box, 180, 360, fill=lid_colour)

        brow_y = traits.eye_height - radius_y - 0.1 - 0.05 * (1.0 - traits.childness)
        brow_box = canvas.box(eye_x, brow_y + 0.06, radius_x * 1.35, 0.1)
        start, end = (200, 320) if side < 0 else (220, 340)
        draw.arc(brow_box, start, end, fill=_rgba(traits.hair * 0.8), width=canvas.width(traits.brow_thickness))


def _draw_nose_and_mouth(draw, canvas, rng):
    """Draw the nose, the lips and rosy cheeks."""
    traits = canvas.traits
    shade = _rgba(_mix(traits.skin, [0, 0, 0], 0.3))
    nose_top = traits.eye_height + 0.05
    nose_bottom = nose_top + traits.nose_length
    nose_width = 0.12 if traits.childness < 0.5 else 0.1
    draw.line(
        [(canvas.x(0.02), canvas.y(nose_top)), (canvas.x(0.06), canvas.y(nose_bottom - 0.04))],
        fill=shade,
        width=canvas.width(0.006),
    )
    draw.arc(
        canvas.box(0.0, nose_bottom - 0.04, nose_width, 0.06),
        20,
        160,
        fill=shade,
        width=canvas.width(0.008),
    )

    mouth_y = nose_bottom + 0.17 + 0.05 * traits.sag
    mouth_half_width = 0.3 * rng.uniform(0.85, 1.15) * (0.85 if traits.childness > 0.5 else 1.0)
    lips = _rgba(traits.lip_colour)
    draw.chord(canvas.box(0.0, mouth_y, mouth_half_width, traits.lip_height), 180, 360, fill=lips)
    draw.chord(canvas.box(0.0, mouth_y, mouth_half_width * 0.9, traits.lip_height * 1.3), 0, 180, fill=lips)
    draw.line(
        [(canvas.x(-mouth_half_width), canvas.y(mouth_y)), (canvas.x(mouth_half_width), canvas.y(mouth_y))],
        fill=_rgba(_mix(traits.lip_colour, [0, 0, 0], 0.5)),
        width=canvas.width(0.005),
    )

    if traits.cheek_blush > 0.05:
        blush = _rgba(_mix(traits.skin, [235.0, 110.0, 120.0], 0.35 * traits.cheek_blush))
        for side in (-1.0, 1.0):
            draw.ellipse(canvas.box(side * 0.55, nose_bottom - 0.05, 0.16, 0.09), fill=blush)
    return nose_bottom, mouth_y


def _draw_wrinkles(draw, canvas, rng, nose_bottom, mouth_y):
    """Draw forehead lines, crow's feet, under-eye bags and nasolabial folds by wrinkle level."""
    traits = canvas.traits
    if traits.wrinkles <= 0.0:
        return
    line_colour = _rgba(_mix(traits.skin, [40.0, 20.0, 10.0], 0.3 + 0.3 * traits.wrinkles))
    line_width = canvas.width(0.005 + 0.006 * traits.wrinkles)

    forehead_lines = int(round(1 + 3 * traits.wrinkles + rng.normal(0.0, 0.5)))
    top = -traits.hairline + 0.12 if not traits.bald else -0.75
    bottom = traits.eye_height - 0.32
    for row in np.linspace(top, bottom, max(forehead_lines, 1) + 2)[1:-1]:
        half_width = rng.uniform(0.3, 0.5)
        draw.arc(canvas.box(0.0, row + 0.15, half_width, 0.15), 215, 325, fill=line_colour, width=line_width)

    corner_x = 0.38 + traits.eye_radius + 0.05
    for side in (-1.0, 1.0):
        for step in range(1 + int(round(2 * traits.wrinkles))):
            dy = (step - 1) * 0.05
            draw.line(
                [
                    (canvas.x(side * corner_x), canvas.y(traits.eye_height + dy * 0.5)),
                    (canvas.x(side * (corner_x + 0.12)), canvas.y(traits.eye_height + dy)),
                ],
                fill=line_colour,
                width=line_width,
            )
        draw.arc(
            canvas.box(side * 0.38, traits.eye_height + 0.1, traits.eye_radius * 0.9, 0.06),
            20,
            160,
            fill=line_colour,
            width=line_width,
        )
        if traits.wrinkles > 0.3:
            fold_box = canvas.box(side * 0.25, (nose_bottom + mouth_y) / 2, 0.2, (mouth_y - nose_bottom) / 2 + 0.05)
            start, end = (100, 250) if side < 0 else (290, 80)
            draw.arc(fold_box, start, end, fill=line_colour, width=line_width)


def _draw_beard(draw, canvas, rng, mouth_y):
    """Draw stubble, a moustache or a full beard in the hair colour."""
    traits = canvas.traits
    if traits.beard == "none":
        return
    beard = _rgba(traits.hair)
    if traits.beard == "stubble":
        stubble = _rgba(_mix(traits.skin, traits.hair, 0.35))
        draw.chord(canvas.box(0.0, 0.42 + 0.05 * traits.sag, traits.jaw_width, 0.6), 10, 170, fill=stubble)
        draw.chord(canvas.box(0.0, mouth_y, 0.34, traits.lip_height * 1.5), 180, 360, fill=_rgba(traits.lip_colour))
        return
    if traits.beard == "full":
        draw.chord(canvas.box(0.0, 0.44 + 0.05 * traits.sag, traits.jaw_width * 1.02, 0.62), 0, 180, fill=beard)
        draw.chord(canvas.box(0.0, mouth_y, 0.3, traits.lip_height * 1.3), 0, 180, fill=_rgba(traits.lip_colour))
    draw.chord(
        canvas.box(0.0, mouth_y - traits.lip_height * 0.6, 0.36, 0.09 * rng.uniform(0.8, 1.2)),
        180,
        360,
        fill=beard,
    )


def _apply_nuisance(image, rng):
    """Vary brightness and contrast, blur slightly and add Gaussian pixel noise."""
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.75, 1.25))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.8, 1.15))
    blur_radius = rng.uniform(0.0, 0.9)
    if blur_radius > 0.2:
        image = image.filter(ImageFilter.GaussianBlur(blur_radius))
    noise_std = rng.uniform(0.0, 7.0)
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels + rng.normal(0.0, noise_std, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def draw_portrait(age: float, gender: int, rng: np.random.Generator, size: int = 128) -> Image.Image:
    """Draw one synthetic RGB portrait whose features depend on age and gender.

    Args:
        age: Age in years. The age cues stop changing at about 80 years.
        gender: 0 for male, 1 for female, as in `faceage_keras.labels`.
        rng: Source of all randomness, so equal generator states give equal images.
        size: Width and height of the square output image in pixels.

    Returns:
        An RGB image of `size` x `size` pixels.

    Raises:
        ValueError: If the age is negative or not finite, the gender is not 0
            or 1, or the size is below 16 pixels.
    """
    if not np.isfinite(age) or age < 0:
        raise ValueError(f"Invalid age {age!r}: expected a finite number of years >= 0.")
    if gender not in (MALE, FEMALE):
        raise ValueError(f"Invalid gender {gender!r}: expected 0 (male) or 1 (female).")
    if int(size) != size or size < MIN_IMAGE_SIZE:
        raise ValueError(f"Invalid image size {size!r}: expected an integer >= {MIN_IMAGE_SIZE}.")
    size = int(size)

    pixels = size * SUPERSAMPLING
    traits = _sample_traits(float(age), int(gender), rng)
    canvas = _Canvas(traits, pixels)
    background = _draw_background(pixels, rng)

    # The person is drawn on a transparent layer, so rotating it leaves no empty corners.
    layer = Image.new("RGBA", (pixels, pixels), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    _draw_body_and_back_hair(draw, canvas, rng)
    _draw_head(draw, canvas)
    _draw_top_hair(draw, canvas, rng)
    _draw_eyes_and_brows(draw, canvas, rng)
    nose_bottom, mouth_y = _draw_nose_and_mouth(draw, canvas, rng)
    _draw_wrinkles(draw, canvas, rng, nose_bottom, mouth_y)
    _draw_beard(draw, canvas, rng, mouth_y)

    angle = float(np.clip(rng.normal(0.0, 5.0), -12.0, 12.0))
    layer = layer.rotate(angle, resample=Image.Resampling.BILINEAR, center=(canvas.x(0.0), canvas.y(0.0)))
    image = Image.alpha_composite(background, layer).convert("RGB")
    image = image.reduce(SUPERSAMPLING)
    return _apply_nuisance(image, rng)


def _sample_age(rng):
    """Draw an integer age in years, mixing a uniform 1-80 with a peak around 30."""
    if rng.uniform() < 0.7:
        age = rng.uniform(MIN_SYNTHETIC_AGE, MAX_SYNTHETIC_AGE + 1)
    else:
        age = rng.normal(30.0, 12.0)
    return int(np.clip(np.floor(age), MIN_SYNTHETIC_AGE, MAX_SYNTHETIC_AGE))


def _image_name(index):
    """Return the file name of image number `index`."""
    return f"{IMAGE_NAME_PREFIX}{index:05d}{IMAGE_SUFFIX}"


def _read_marker(path):
    """Return the settings stored in the marker file, or None when it is missing or invalid."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        logger.warning("Ignoring unreadable synthetic dataset marker %s: %s", path, error)
        return None


def _is_complete(directory, settings):
    """Return whether `directory` contains a complete set written with `settings`."""
    if _read_marker(directory / MARKER_FILE_NAME) != settings:
        return False
    labels_path = directory / LABELS_FILE_NAME
    try:
        with open(labels_path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return False
    names = [row.get("image_name") for row in rows]
    if len(names) != settings["num_images"] or not all(names):
        return False
    images_dir = directory / IMAGES_DIR_NAME
    return all((images_dir / name).is_file() for name in names)


def _write_text_atomically(path, text):
    """Write `text` to a temporary file next to `path`, then rename it to `path`."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_synthetic_dataset(directory, num_images: int = 600, seed: int = 0, size: int = 128) -> pathlib.Path:
    """Write a synthetic portrait set with labels into a directory, or reuse an existing one.

    The directory receives `labels.csv` with the columns `image_name`, `age`
    (integer years from 1 to 80) and `gender` (`Male` or `Female`), and the
    PNG images under `images/`. `image_name` is the file name inside
    `images/`, extension included. Image `i` depends only on `seed`, `i` and
    `size`, so the output is deterministic.

    The arguments are recorded in `synthetic.json`, which is written last.
    When that file matches the arguments and every listed image exists, the
    set is reused without redrawing. A write that was interrupted leaves no
    matching marker, so the next call redraws the set.

    Args:
        directory: Output directory, created if missing.
        num_images: Number of portraits to draw.
        seed: Non-negative seed of the random generator.
        size: Width and height of each square image in pixels.

    Returns:
        The output directory as a `pathlib.Path`.

    Raises:
        ValueError: If `num_images` is below 1, `seed` is negative or `size`
            is below 16 pixels.
    """
    if int(num_images) != num_images or num_images < 1:
        raise ValueError(f"Invalid num_images {num_images!r}: expected an integer >= 1.")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"Invalid seed {seed!r}: expected an integer >= 0.")
    if int(size) != size or size < MIN_IMAGE_SIZE:
        raise ValueError(f"Invalid image size {size!r}: expected an integer >= {MIN_IMAGE_SIZE}.")

    directory = pathlib.Path(directory)
    settings = {
        "generator_version": GENERATOR_VERSION,
        "num_images": int(num_images),
        "seed": int(seed),
        "size": int(size),
    }
    if _is_complete(directory, settings):
        logger.info("Reusing %d synthetic images in %s", settings["num_images"], directory)
        return directory

    start = time.perf_counter()
    marker_path = directory / MARKER_FILE_NAME
    # Remove the marker first, so a set that is half overwritten is never taken as complete.
    marker_path.unlink(missing_ok=True)
    images_dir = directory / IMAGES_DIR_NAME
    images_dir.mkdir(parents=True, exist_ok=True)

    rows = []
    for index in range(settings["num_images"]):
        # One generator per image keeps image `index` the same whatever `num_images` is.
        rng = np.random.default_rng([settings["seed"], index])
        age = _sample_age(rng)
        gender = int(rng.integers(2))
        name = _image_name(index)
        draw_portrait(age, gender, rng, size=settings["size"]).save(images_dir / name, compress_level=1)
        rows.append((name, age, "Male" if gender == MALE else "Female"))

    # Images left over from an earlier, larger set with this naming scheme would be stale.
    current_names = {row[0] for row in rows}
    for stale in images_dir.glob(f"{IMAGE_NAME_PREFIX}*{IMAGE_SUFFIX}"):
        if stale.name not in current_names:
            stale.unlink()

    lines = ["image_name,age,gender"] + [f"{name},{age},{gender}" for name, age, gender in rows]
    _write_text_atomically(directory / LABELS_FILE_NAME, "\n".join(lines) + "\n")
    _write_text_atomically(marker_path, json.dumps(settings, indent=2) + "\n")
    logger.info(
        "Wrote %d synthetic images of %d px to %s in %.1f s",
        settings["num_images"],
        settings["size"],
        directory,
        time.perf_counter() - start,
    )
    return directory
