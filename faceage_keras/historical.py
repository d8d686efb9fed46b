"""A historical-photograph look for modern face crops: toning, fading, grain, blur, vignetting and damage.

Models trained on modern faces are applied to old photographs. `HistoricalLook`
sets how often and how strongly each effect of an old print or scan is drawn.
`apply_historical_look` draws the effects with a `numpy.random.Generator`
during training. `render_historical` renders the fixed `EVALUATION_LOOK` for a
seed, so that an evaluation on "historical" faces repeats exactly.

Effects run in the order of `EFFECTS`, from the camera to the scanner:

- `blur`: Gaussian blur of an out-of-focus lens or a soft print.
- `grayscale`: removal of colour (monochrome film).
- `sepia`: brown toning of a monochrome print.
- `vignette`: darker corners of an old lens.
- `grain`: film grain, strongest in the midtones.
- `fade`: lower contrast with raised blacks and dimmed whites of an aged print.
- `dust`: light and dark specks and fibres.
- `scratches`: thin, long, mostly vertical light lines.
- `jpeg`: block artefacts of a low-quality digitisation.
"""

import dataclasses
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

EFFECTS = ("blur", "grayscale", "sepia", "vignette", "grain", "fade", "dust", "scratches", "jpeg")

# Effect sizes at amount 1, the largest amount that a strength of 1 draws.
# Sizes are fractions of the shorter image side, so the look does not depend
# on the resolution. JPEG blocks are the exception, at 8 pixels.
BLUR_MAX_SIGMA = 0.02
VIGNETTE_MAX_DARKENING = 0.7
GRAIN_MAX_STD = 0.08
FADE_MAX_BLACK = 0.3
FADE_MAX_WHITE_DROP = 0.12
DUST_MAX_SPECKS = 60
DUST_MAX_RADIUS = 0.008
SCRATCHES_MAX_LINES = 6
JPEG_BEST_QUALITY = 90
JPEG_WORST_QUALITY = 15

# Sepia print colours (RGB in [0, 1]) at luminance 0, 0.5 and 1: dark brown
# shadows, warm midtones and cream highlights. R >= G >= B at every level.
_SEPIA_LEVELS = np.array([0.0, 0.5, 1.0], dtype="float32")
_SEPIA_COLOURS = np.array([[0.10, 0.06, 0.03], [0.64, 0.47, 0.29], [1.00, 0.94, 0.80]], dtype="float32")
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype="float32")

# Grain is drawn at one value per pixel up to this image side, and at a
# coarser grid above it, so the grain looks alike at 112 and at 448 pixels.
_GRAIN_REFERENCE_SIDE = 128
# Dust and scratches are drawn at this factor of the image size and reduced,
# which softens their edges.
_DAMAGE_SUPERSAMPLING = 2


@dataclasses.dataclass(frozen=True)
class HistoricalLook:
    """How often and how strongly each effect of an old photograph is drawn.

    Every value is a number in [0, 1]. For each effect `name` in `EFFECTS`,
    `name` is the probability of drawing it and `name_strength` its largest
    amount. A drawn effect gets an amount uniform in
    `[(1 - jitter) * strength, strength]`, so `jitter = 0` always applies
    the strength itself.

    The module constants set what amount 1 of each effect does: a blur sigma
    of 2% of the shorter side, corners 70% darker, and grain with a standard
    deviation of 8% of the range. Fading raises blacks to 30% and lowers
    whites by 12%. Dust has 60 specks, there are 6 scratches, and JPEG uses
    quality 15. Grayscale and sepia blend the face with its toned version,
    1 being fully toned. Strength 0 changes nothing, except for JPEG, which
    still compresses at quality 90.

    Attributes:
        probability: float. Probability that a face gets the look at all.
            The effects are drawn independently only when it does.
        jitter: float. Relative spread of each drawn amount below its strength.
    """

    probability: float = 0.8
    jitter: float = 0.5
    blur: float = 0.3
    blur_strength: float = 0.5
    grayscale: float = 0.6
    grayscale_strength: float = 1.0
    sepia: float = 0.4
    sepia_strength: float = 1.0
    vignette: float = 0.5
    vignette_strength: float = 0.6
    grain: float = 0.7
    grain_strength: float = 0.5
    fade: float = 0.7
    fade_strength: float = 0.6
    dust: float = 0.4
    dust_strength: float = 0.5
    scratches: float = 0.3
    scratches_strength: float = 0.5
    jpeg: float = 0.5
    jpeg_strength: float = 0.5

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"`{field.name}` of the historical look must be a number in [0, 1]. "
                    f"Received: {field.name}={value!r}"
                )
            object.__setattr__(self, field.name, float(value))

    @classmethod
    def from_dict(cls, values, where="[augment.historical]"):
        """Build a look from a mapping such as a TOML table, rejecting unknown keys.

        Args:
            values: dict. Field names and values; missing fields keep their defaults.
            where: str. Where the values come from, for error messages.
        """
        if not isinstance(values, dict):
            raise ValueError(f"{where} must be a table of historical-look settings. Received: {values!r}")
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"Unknown key(s) {unknown} in {where}. Accepted keys: {known}")
        return cls(**values)

    @classmethod
    def single_effect(cls, effect, strength=1.0):
        """Return a look that always applies `effect` alone at exactly `strength`."""
        if effect not in EFFECTS:
            raise ValueError(f"Unknown effect {effect!r}. Effects: {list(EFFECTS)}")
        values = {name: 0.0 for name in EFFECTS}
        values[effect] = 1.0
        values[f"{effect}_strength"] = strength
        return cls(probability=1.0, jitter=0.0, **values)


# The fixed look of `render_historical`: every face becomes a monochrome
# sepia print with all kinds of wear. Only the positions of grain, dust and scratches and the
# centre of the vignette change with the seed.
EVALUATION_LOOK = HistoricalLook(
    probability=1.0,
    jitter=0.0,
    blur=1.0,
    blur_strength=0.3,
    grayscale=1.0,
    grayscale_strength=1.0,
    sepia=1.0,
    sepia_strength=0.8,
    vignette=1.0,
    vignette_strength=0.5,
    grain=1.0,
    grain_strength=0.4,
    fade=1.0,
    fade_strength=0.4,
    dust=1.0,
    dust_strength=0.35,
    scratches=1.0,
    scratches_strength=0.35,
    jpeg=1.0,
    jpeg_strength=0.4,
)


def render_historical(image, seed, look=EVALUATION_LOOK):
    """Render `image` with `look` (by default `EVALUATION_LOOK`), the same for the same seed.

    Args:
        image: uint8 RGB array of shape (height, width, 3), or PIL RGB image.
        seed: int or sequence of ints, e.g. `(run_seed, face_index)`. It seeds
            the `numpy.random.Generator` of every random choice.
        look: `HistoricalLook`.

    Returns:
        The rendered face, of the same type, size and dtype as `image`.
    """
    return apply_historical_look(image, look, np.random.default_rng(seed))


def apply_historical_look(image, look, rng):
    """Draw the effects of `look` with `rng` and apply them to a face.

    Args:
        image: uint8 RGB array of shape (height, width, 3), or PIL RGB image.
        look: `HistoricalLook`.
        rng: `numpy.random.Generator` that draws every random choice.

    Returns:
        The face, of the same type, size and dtype as `image`. It is `image`
        itself when the look or every effect is not drawn.
    """
    is_array = isinstance(image, np.ndarray)
    pil_image = _to_pil(image) if is_array else _check_pil(image)

    if rng.random() >= look.probability:
        return image
    amounts = {}
    for effect in EFFECTS:
        if rng.random() < getattr(look, effect):
            strength = getattr(look, f"{effect}_strength")
            amounts[effect] = strength * rng.uniform(1.0 - look.jitter, 1.0)
    if not amounts:
        return image

    side = min(pil_image.size)
    if "blur" in amounts:
        pil_image = pil_image.filter(ImageFilter.GaussianBlur(amounts["blur"] * BLUR_MAX_SIGMA * side))

    pixels = np.asarray(pil_image, dtype="float32") / 255.0
    for effect, apply in _PIXEL_EFFECTS:
        if effect in amounts:
            pixels = apply(pixels, amounts[effect], rng)
    pil_image = Image.fromarray(np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype("uint8"))

    if "jpeg" in amounts:
        pil_image = _compress_jpeg(pil_image, amounts["jpeg"])
    return np.asarray(pil_image).copy() if is_array else pil_image


def _to_pil(image):
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"The historical look needs a uint8 RGB array of shape (height, width, 3). "
            f"Received: dtype={image.dtype}, shape={image.shape}"
        )
    return Image.fromarray(image)


def _check_pil(image):
    if not isinstance(image, Image.Image) or image.mode != "RGB":
        raise ValueError(
            f"The historical look needs a PIL RGB image or a uint8 RGB array. Convert the image with "
            f"`image.convert('RGB')`. Received: {type(image).__name__} "
            f"with mode {getattr(image, 'mode', None)!r}"
        )
    return image


def _luminance(pixels):
    return pixels @ _LUMA_WEIGHTS


def _grayscale(pixels, amount, rng):
    gray = _luminance(pixels)[..., None]
    return pixels + amount * (gray - pixels)


def _sepia(pixels, amount, rng):
    luminance = _luminance(pixels)
    toned = np.stack(
        [np.interp(luminance, _SEPIA_LEVELS, _SEPIA_COLOURS[:, channel]) for channel in range(3)], axis=-1
    )
    return pixels + amount * (toned.astype("float32") - pixels)


def _vignette(pixels, amount, rng):
    height, width = pixels.shape[:2]
    centre_x, centre_y = rng.uniform(-0.1, 0.1, size=2)
    y = np.linspace(-1.0, 1.0, height, dtype="float32")[:, None] - centre_y
    x = np.linspace(-1.0, 1.0, width, dtype="float32")[None, :] - centre_x
    # Squared distance from the centre, 1 at the corners of a centred vignette.
    distance = np.clip((x * x + y * y) / 2.0, 0.0, 1.0)
    return pixels * (1.0 - amount * VIGNETTE_MAX_DARKENING * distance)[..., None]


def _grain(pixels, amount, rng):
    height, width = pixels.shape[:2]
    cell = max(1.0, min(height, width) / _GRAIN_REFERENCE_SIDE)
    noise = rng.standard_normal((max(1, round(height / cell)), max(1, round(width / cell))), dtype="float32")
    if noise.shape != (height, width):
        noise = np.asarray(Image.fromarray(noise).resize((width, height), Image.BILINEAR))
        noise = noise / max(float(noise.std()), 1e-6)

    # Grain shows most in the midtones and least in deep shadows and highlights.
    luminance = _luminance(pixels)
    visibility = 0.4 + 2.4 * luminance * (1.0 - luminance)
    return pixels + (amount * GRAIN_MAX_STD * visibility * noise)[..., None]


def _fade(pixels, amount, rng):
    black = amount * FADE_MAX_BLACK
    white = 1.0 - amount * FADE_MAX_WHITE_DROP
    return black + (white - black) * pixels


def _dust(pixels, amount, rng):
    height, width = pixels.shape[:2]
    scale = _DAMAGE_SUPERSAMPLING
    light = Image.new("L", (width * scale, height * scale), 0)
    dark = Image.new("L", (width * scale, height * scale), 0)
    draws = {True: ImageDraw.Draw(light), False: ImageDraw.Draw(dark)}
    max_radius = max(1.0, DUST_MAX_RADIUS * min(height, width) * scale)

    num_specks = int(np.ceil(amount * DUST_MAX_SPECKS))
    centres = rng.uniform(0.0, 1.0, size=(num_specks, 2)) * (width * scale, height * scale)
    radii = rng.uniform(0.3, 1.0, size=num_specks) * max_radius
    is_light = rng.random(num_specks) < 0.7
    is_fibre = rng.random(num_specks) < 0.15
    opacities = rng.uniform(0.5, 1.0, size=num_specks)
    angles = rng.uniform(0.0, np.pi, size=num_specks)
    specks = zip(centres, radii, is_light, is_fibre, opacities, angles)
    for (x, y), radius, light_speck, fibre, opacity, angle in specks:
        draw = draws[bool(light_speck)]
        fill = int(255 * opacity)
        if fibre:
            # A hair or fibre: a thin arc a few speck radii long.
            turns = angle + np.linspace(0.0, rng.uniform(-2.0, 2.0), 6)
            steps = 2.0 * radius * np.stack([np.cos(turns), np.sin(turns)], axis=1)
            points = np.cumsum(steps, axis=0) + (x, y)
            draw.line([tuple(point) for point in points], fill=fill, width=1)
        else:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)

    pixels = _blend_mask(pixels, light, 0.95)
    return _blend_mask(pixels, dark, 0.12)


def _scratches(pixels, amount, rng):
    height, width = pixels.shape[:2]
    scale = _DAMAGE_SUPERSAMPLING
    mask = Image.new("L", (width * scale, height * scale), 0)
    draw = ImageDraw.Draw(mask)
    line_width = max(1, round(min(height, width) * scale / 160))

    num_lines = int(np.ceil(amount * SCRATCHES_MAX_LINES))
    for _ in range(num_lines):
        # A scratch runs along the film, so mostly top to bottom, and wanders a little.
        top = rng.uniform(-0.2, 0.4) * height * scale
        bottom = rng.uniform(0.6, 1.2) * height * scale
        x = rng.uniform(0.05, 0.95) * width * scale
        drift = rng.uniform(-0.06, 0.06) * width * scale
        wobble = rng.normal(0.0, 0.008 * width * scale, size=5)
        rows = np.linspace(top, bottom, 5)
        points = [(x + drift * step / 4 + wobble[step], rows[step]) for step in range(5)]
        draw.line(points, fill=int(255 * rng.uniform(0.3, 0.9)), width=line_width)
    return _blend_mask(pixels, mask, 0.93)


def _blend_mask(pixels, mask, value):
    height, width = pixels.shape[:2]
    weights = np.asarray(mask.resize((width, height), Image.BOX), dtype="float32")[..., None] / 255.0
    return pixels + weights * (value - pixels)


def _compress_jpeg(image, amount):
    quality = int(round(JPEG_BEST_QUALITY - amount * (JPEG_BEST_QUALITY - JPEG_WORST_QUALITY)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


_PIXEL_EFFECTS = (
    ("grayscale", _grayscale),
    ("sepia", _sepia),
    ("vignette", _vignette),
    ("grain", _grain),
    ("fade", _fade),
    ("dust", _dust),
    ("scratches", _scratches),
)
