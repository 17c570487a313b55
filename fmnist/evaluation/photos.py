"""Fashion-MNIST test images rendered as the product photos shoppers take, to measure the service on real uploads.

Fashion-MNIST was made from product photos of garments on white: each photo was trimmed, resized so its longer
side is 28 pixels, converted to grayscale and negated, so pixel v (0 = background, 255 = strongest garment) is the
negated luminance of the photo. The renderer runs that backwards. The 28x28 image is upscaled smoothly to the
garment's size in the frame, a = v / 255 is taken as the garment's coverage (how much of each pixel the dark
garment hides), and the photo is

    pixel = backdrop * (1 - a) + garment_tone * a

with a dark, seeded garment tone (sometimes slightly coloured). Each named condition then changes one thing a
shopper's photo plausibly gets wrong (backdrop, light, noise and compression, framing, focus) at a few severities;
the photo is encoded as JPEG, as a phone would, and `photo_robustness` pushes the bytes through an injected
`classify` (the service's own upload path and the model) to get accuracy per condition and severity.

Everything random is drawn from a numpy Generator seeded from (seed, test index): see `photo_rng`. Rendering uses
Pillow and vectorised numpy only; one 224x224 photo takes a few milliseconds.

Longer than most modules (about 540 lines) on purpose: most of it is the table of named conditions with the reason
for each severity, which reads best beside the renderer it drives.
"""

from __future__ import annotations

import colorsys
import io
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fmnist.core.data import IMAGE_SIZE
from fmnist.core.runtime import available_cores
from fmnist.evaluation.answers import Answers, Figures, LeaveOut, figures

log = logging.getLogger(__name__)

# Threads rendering a condition's photos at once: one per core the process may use.
WORKERS = available_cores()
REFERENCE_SIZE = 224  # pixel distances (blur radii) are given for a 224x224 photo and scale with `size`

# --- The garment, common to every condition ------------------------------------------------------------------------
# Smooth upscaling: a 28-pixel image blown up 7x is soft in any case, and bicubic has less ringing around the
# garment's edge than Lanczos, which would draw a halo no camera produces.
UPSCALE = Image.Resampling.BICUBIC
# Side of the garment's 28x28 box as a fraction of the frame's side. A shopper fills the frame with the product but
# leaves a margin, like the trimmed-and-padded originals; the fraction is drawn per image in this range.
GARMENT_FILL = (0.80, 0.90)
# RGB level of the garment where it fully covers the backdrop (a = 1). Fashion-MNIST's strongest pixels are dark
# garments photographed on white; 10-70 spans black to charcoal/navy fabric, drawn per image.
GARMENT_TONE = (10.0, 70.0)
# Some garments are slightly coloured (navy, burgundy, olive): with this probability each channel is offset by up to
# this many levels from the grey tone. Kept small: a strongly coloured light garment would not be in Fashion-MNIST.
GARMENT_COLOUR_PROBABILITY = 0.35
GARMENT_COLOUR_OFFSET = 15.0
GARMENT_TONE_LIMITS = (0.0, 90.0)  # clip after the offset so the garment stays dark
# The backdrop of conditions that are about something other than the backdrop: a white sheet or wall photographed
# by a phone reads about 240, not 255 (see `white_backdrop`).
WHITE = 240.0
# JPEG quality of a phone camera's own output (typically 90-95); `noise_jpeg` recompresses harder.
CAMERA_QUALITY = 90

# --- Parameters of the conditions ----------------------------------------------------------------------------------
# A white wall or sheet indoors is light grey in the photo; the base of `underexposed` and `uneven_light`.
LIGHT_GREY = 220.0
# Coloured backdrops people actually photograph clothes on: walls, bed sheets, paper. Hue in degrees; the image's
# hue is drawn from these and jittered by up to COLOURED_BACKDROP_JITTER degrees.
COLOURED_BACKDROP_HUES: dict[str, float] = {
    "beige": 35.0,
    "pale yellow": 55.0,
    "pale green": 110.0,
    "light blue": 205.0,
    "lavender": 265.0,
    "pink": 340.0,
}
COLOURED_BACKDROP_JITTER = 8.0
# HSV value of a coloured backdrop: as bright as the white one (240 / 255) so the severity is saturation alone.
COLOURED_BACKDROP_VALUE = WHITE / 255.0
# Colours of the light under which photos are taken, as the RGB of a white surface lit by them (brightest channel
# first normalised to 1). At severity 1 the photo has the light's full cast; a phone's white balance removes part.
LIGHT_COLOURS: dict[str, tuple[float, float, float]] = {
    "tungsten 2700K": (255.0, 169.0, 87.0),
    "warm LED 3000K": (255.0, 180.0, 107.0),
    "shade 8000K": (227.0, 233.0, 255.0),
    "fluorescent green": (225.0, 255.0, 215.0),
    "pink LED": (255.0, 205.0, 225.0),
}
# Dim coloured light means a slower shutter: a slight blur (Gaussian sigma in pixels at 224) at every severity.
TINTED_LIGHT_BLUR = 0.8
# `noise_jpeg`: sensor noise sigma (of 255) -> JPEG quality of the recompression. A noisy (dim, high-ISO) photo is
# usually also one sent through a messaging app or web form that recompresses it; quality is interpolated for
# severities between these points.
NOISE_JPEG_QUALITY: tuple[tuple[float, int], ...] = ((4.0, 75), (8.0, 50), (12.0, 35))
# `small_offcentre`: the garment's centre is moved from the frame's centre, in each axis, by this fraction range of
# the largest move that keeps it in the frame, so it is clearly off-centre but never cut off.
OFFCENTRE_SHIFT = (0.5, 1.0)


@dataclass(frozen=True)
class PhotoCondition:
    """A named way a shopper's photo departs from a clean product shot, at severities of increasing strength."""

    name: str
    description: str
    severities: tuple[float, ...]  # increasing strength (for `uneven_light` the number falls as strength grows)
    realistic: int  # index into severities judged by the targets: what a real shopper photo plausibly shows


# Severities: the first is mild, the last is about as bad as an upload that is still worth classifying gets.
# `realistic` is chosen per condition; the reason is given beside each.
PHOTO_CONDITIONS: tuple[PhotoCondition, ...] = (
    PhotoCondition(
        "white_backdrop",
        "dark garment on a white or near-white backdrop (severity: backdrop level of 255)",
        (255.0, 240.0, 225.0),
        # A white sheet or wall photographed by a phone reads about 240; 255 is a clipped studio shot.
        realistic=1,
    ),
    PhotoCondition(
        "grey_backdrop",
        "dark garment on grey studio paper or a grey table (severity: backdrop level of 255)",
        (200.0, 170.0, 140.0),
        # Mid-grey paper or a grey tabletop; 140 is a dark grey that the photo still shows as lighter than the garment.
        realistic=1,
    ),
    PhotoCondition(
        "coloured_backdrop",
        "dark garment on a beige, pale yellow, pale green, light blue, lavender or pink backdrop "
        "(severity: the backdrop's HSV saturation)",
        (0.15, 0.30, 0.45),
        # 0.3 is a pastel wall or bed sheet; 0.15 is off-white, 0.45 a clearly coloured sheet.
        realistic=1,
    ),
    PhotoCondition(
        "underexposed",
        "dark garment on a light grey backdrop, the whole frame multiplied by an exposure factor (severity)",
        (0.6, 0.45, 0.3),
        # A phone meters a mostly white scene towards mid grey, so 0.6 (backdrop 220 -> 132, 0.7 stop under) is
        # the everyday indoor photo; 0.45 and 0.3 are a dim room where auto-exposure has given up.
        realistic=0,
    ),
    PhotoCondition(
        "uneven_light",
        "light grey backdrop lit from one side: brightness falls linearly across the frame, at a seeded angle, to "
        "a fraction (severity) of the bright side",
        (0.75, 0.6, 0.45),
        # Window light falls off across a bed or floor by about 0.7 stop (0.6); 0.45 is a lamp close to one side.
        realistic=1,
    ),
    PhotoCondition(
        "tinted_light",
        "white backdrop under coloured light (tungsten, warm LED, shade, fluorescent, pink LED; seeded): per-channel "
        "gains, severity = fraction of the light's full colour cast, plus a slight blur",
        (0.3, 0.6, 1.0),
        # Auto white balance removes part of a tungsten or LED cast; 0.6 is the warm orange of an evening photo.
        realistic=1,
    ),
    PhotoCondition(
        "noise_jpeg",
        "white backdrop with Gaussian sensor noise (severity: sigma of 255), then JPEG recompression at quality 75, "
        "50, 35",
        (4.0, 8.0, 12.0),
        # Sigma 8 is a dim-room phone photo; quality 50 is what messaging apps and web forms recompress to.
        realistic=1,
    ),
    PhotoCondition(
        "rotation",
        "garment tilted by a seeded +/- angle (severity: degrees) on white, the corners filled with the backdrop",
        (6.0, 12.0, 20.0),
        # A hand-held photo of a garment laid on a bed is rarely square; 12 degrees is a casually framed shot.
        realistic=1,
    ),
    PhotoCondition(
        "small_offcentre",
        "garment small in the frame (severity: its side as a fraction of the frame's) and off-centre at a seeded "
        "position, on white",
        (0.60, 0.45, 0.35),
        # Photographed from standing height, a garment on the floor fills about half the frame, not centred.
        realistic=1,
    ),
    PhotoCondition(
        "blur",
        "out of focus or shaken: Gaussian blur of growing radius (severity: sigma in pixels at 224) on white",
        (1.0, 2.0, 3.0),
        # Sigma 2 at 224 is a slightly soft hand-held shot (a small focus miss or shake); 3 is visibly out of focus.
        realistic=1,
    ),
)


@dataclass(frozen=True)
class _Scene:
    """Everything one condition sets before the photo is composed; defaults are a clean product shot on white."""

    backdrop: tuple[float, float, float] = (WHITE, WHITE, WHITE)  # RGB 0-255
    fill: float = 0.85  # side of the garment's 28x28 box as a fraction of the frame's side
    centre: tuple[float, float] = (0.5, 0.5)  # (x, y) of the garment's centre as fractions of the frame
    angle: float = 0.0  # degrees counter-clockwise
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel light multiplier, whole frame
    gradient: tuple[float, float] | None = None  # (angle in radians towards the bright side, darkest fraction)
    blur: float = 0.0  # Gaussian sigma in pixels at REFERENCE_SIZE
    noise: float = 0.0  # Gaussian sensor noise sigma, levels of 255
    quality: int | None = None  # JPEG quality cap (None: the camera's)


SceneFn = Callable[[float, np.random.Generator, _Scene], _Scene]


def _grey(level: float) -> tuple[float, float, float]:
    return (level, level, level)


def _white_backdrop(severity: float, rng: np.random.Generator, scene: _Scene) -> _Scene:
    return replace(scene, backdrop=_grey(severity))


def _grey_backdrop(severity: float, rng: np.random.Generator, scene: _Scene) -> _Scene:
    return replace(scene, backdrop=_grey(severity))


def _coloured_backdrop(severity: float, rng: np.random.Generator, scene: _Scene) -> _Scene:
    hues = list(COLOURED_BACKDROP_HUES.values())
    hue = hues[int(rng.integers(len(hues)))] + rng.uniform(-COLOURED_BACKDROP_JITTER, COLOURED_BACKDROP_JITTER)
    r, g, b = colorsys.hsv_to_rgb((hue % 360.0) / 360.0, severity, COLOURED_BACKDROP_VALUE)
    return replace(scene, backdrop=(r * 255.0, g * 255.0, b * 255.0))


def _underexposed(severity: float, rng: np.random.Generator, scene: _Scene) -> _Scene:
    # Exposure scales the whole scene, the garment included: a gain on every channel.
    return replace(scene, backdrop=_grey(LIGHT_GREY), gains=(severity, severity, severity))


def _uneven_light(severity: float, rng: np.random.Generator, scene: _Scene) -> _Scene:
    return replace(scene, backdrop=_grey(LIGHT_GREY), gradient=(rng.uniform(0.0, 2.0 * math.pi), severity))


def _tinted_light(severity: float, rng: np.random.Generator, scene: _Scene) -> _Scene:
    colours = list(LIGHT_COLOURS.values())
    colour = np.asarray(colours[int(rng.integers(len(colours)))])  # (3,)
    colour = colour / colour.max()  # the brightest channel passes unchanged: the cast is a colour, not a dimming
    gains = 1.0 - severity * (1.0 - colour)  # (3,): severity 0 is white light, 1 the light's full colour
    return replace(scene, gains=(float(gains[0]), float(gains[1]), float(gains[2])), blur=TINTED_LIGHT_BLUR)


def _noise_jpeg(severity: float, rng: np.random.Generator, scene: _Scene) -> _Scene:
    sigmas, qualities = zip(*NOISE_JPEG_QUALITY, strict=True)
    return replace(scene, noise=severity, quality=round(float(np.interp(severity, sigmas, qualities))))


def _rotation(severity: float, rng: np.random.Generator, scene: _Scene) -> _Scene:
    angle = severity if rng.random() < 0.5 else -severity
    # A shopper frames the whole garment: shrink it so its tilted 28x28 box still fits, so what is measured is
    # the tilt and not a cropped sleeve.
    theta = math.radians(angle)
    return replace(scene, angle=angle, fill=scene.fill / (abs(math.cos(theta)) + abs(math.sin(theta))))


def _small_offcentre(severity: float, rng: np.random.Generator, scene: _Scene) -> _Scene:
    room = (1.0 - severity) / 2.0  # the largest move of the centre, per axis, that keeps the garment in frame
    moves = rng.uniform(*OFFCENTRE_SHIFT, size=2) * np.where(rng.random(2) < 0.5, -1.0, 1.0)  # (2,) x, y
    return replace(scene, fill=severity, centre=(0.5 + room * moves[0], 0.5 + room * moves[1]))


def _blur(severity: float, rng: np.random.Generator, scene: _Scene) -> _Scene:
    return replace(scene, blur=severity)


_SCENES: dict[str, SceneFn] = {
    "white_backdrop": _white_backdrop,
    "grey_backdrop": _grey_backdrop,
    "coloured_backdrop": _coloured_backdrop,
    "underexposed": _underexposed,
    "uneven_light": _uneven_light,
    "tinted_light": _tinted_light,
    "noise_jpeg": _noise_jpeg,
    "rotation": _rotation,
    "small_offcentre": _small_offcentre,
    "blur": _blur,
}
assert {c.name for c in PHOTO_CONDITIONS} == set(_SCENES), "every condition needs a scene function"


def photo_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for test image `index` under `seed`; pass it to `render_photo` fresh for every photo.

    It is deliberately the same for every condition and severity of one image (common random numbers): the garment's
    tone and size, the tilt's sign, the light's colour are shared, so two rows of the table differ by the condition
    and its strength, not by which garment tones happened to be drawn.
    """
    return np.random.default_rng([seed, index])


def _garment_tone(rng: np.random.Generator) -> np.ndarray:
    """(3,) float32 RGB of a fully covering garment; always draws the same count of numbers to keep streams aligned."""
    level = rng.uniform(*GARMENT_TONE)
    offset = rng.uniform(-GARMENT_COLOUR_OFFSET, GARMENT_COLOUR_OFFSET, size=3)  # (3,)
    coloured = rng.random() < GARMENT_COLOUR_PROBABILITY
    tone = level + (offset if coloured else 0.0)
    return np.clip(tone, *GARMENT_TONE_LIMITS).astype(np.float32)


def _coverage(image: np.ndarray, scene: _Scene, size: int) -> np.ndarray:
    """(size, size, 1) float32 in [0, 1]: how much of each pixel the garment covers."""
    side = max(1, round(scene.fill * size))
    garment = Image.fromarray(image).resize((side, side), UPSCALE)  # bicubic clips to 0-255 in mode L
    canvas = Image.new("L", (size, size), 0)
    cx, cy = scene.centre[0] * size, scene.centre[1] * size
    canvas.paste(garment, (round(cx - side / 2), round(cy - side / 2)))
    if scene.angle:
        # The coverage is rotated, not the photo: the corners it leaves are uncovered, so they show the backdrop.
        canvas = canvas.rotate(scene.angle, resample=Image.Resampling.BICUBIC, center=(cx, cy), fillcolor=0)
    return (np.asarray(canvas, dtype=np.float32) / 255.0)[..., None]


def _gradient(angle: float, darkest: float, size: int) -> np.ndarray:
    """(size, size, 1) float32 illumination: 1 at the brightest edge or corner of the frame, `darkest` opposite."""
    coords = np.arange(size, dtype=np.float32) + 0.5 - size / 2.0  # (size,) pixel centres about the frame centre
    dx, dy = math.cos(angle), math.sin(angle)
    along = dx * coords[None, :] + dy * coords[:, None]  # (size, size): distance towards the bright side
    along /= (abs(dx) + abs(dy)) * size / 2.0  # -> [-1, 1] over the frame
    return (darkest + (1.0 - darkest) * (along + 1.0) / 2.0)[..., None]


def _check_image(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.shape != (IMAGE_SIZE, IMAGE_SIZE) or array.dtype != np.uint8:
        raise ValueError(f"expected a (28, 28) uint8 Fashion-MNIST image, got {array.shape} {array.dtype}")
    return np.ascontiguousarray(array)


def render_photo(
    image: np.ndarray,
    condition: PhotoCondition,
    severity: float,
    rng: np.random.Generator,
    size: int = 224,
    quality: int = CAMERA_QUALITY,
) -> bytes:
    """(28, 28) uint8 Fashion-MNIST image -> encoded JPEG bytes of a size x size RGB photo.

    The garment (its tone and size drawn from `rng`) is composed on the condition's backdrop, lit, blurred, given
    sensor noise and encoded at `quality` (`noise_jpeg` lowers it), in that order, the order a camera works in.
    Use `photo_rng(seed, index)` as `rng` to get the photos `photo_robustness` measures. Raises ValueError for an
    image that is not (28, 28) uint8, or a condition this module does not know how to render.
    """
    pixels = _check_image(image)
    scene_fn = _SCENES.get(condition.name)
    if scene_fn is None:
        raise ValueError(f"unknown photo condition {condition.name!r}; known: {', '.join(_SCENES)}")
    # The garment is drawn first, always, so it is the same whatever the condition (see `photo_rng`).
    tone = _garment_tone(rng)  # (3,)
    scene = scene_fn(severity, rng, _Scene(fill=float(rng.uniform(*GARMENT_FILL))))

    coverage = _coverage(pixels, scene, size)  # (size, size, 1)
    backdrop = np.asarray(scene.backdrop, dtype=np.float32)  # (3,)
    frame = backdrop * (1.0 - coverage) + tone * coverage  # (size, size, 3)
    # Light multiplies what the scene reflects, backdrop and garment alike (applied to the encoded values: a
    # simplification of a camera's tone curve that keeps the severities readable as output brightness).
    frame *= np.asarray(scene.gains, dtype=np.float32)
    if scene.gradient is not None:
        frame *= _gradient(*scene.gradient, size=size)
    photo = Image.fromarray(np.rint(np.clip(frame, 0.0, 255.0)).astype(np.uint8))  # RGB

    if scene.blur:
        photo = photo.filter(ImageFilter.GaussianBlur(scene.blur * size / REFERENCE_SIZE))
    if scene.noise:
        noise = rng.standard_normal((size, size, 3), dtype=np.float32) * np.float32(scene.noise)  # (size, size, 3)
        noisy = np.asarray(photo, dtype=np.float32) + noise
        photo = Image.fromarray(np.rint(np.clip(noisy, 0.0, 255.0)).astype(np.uint8))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=min(quality, scene.quality or quality))
    return buffer.getvalue()


def render_clean(image: np.ndarray) -> bytes:
    """The plain 28x28 grayscale PNG of the image, the reference every condition is compared with."""
    buffer = io.BytesIO()
    Image.fromarray(_check_image(image)).save(buffer, format="PNG")  # mode L, lossless
    return buffer.getvalue()


def sample_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """A fixed, seeded, class-stratified sample of test indices.

    `per_class` indices of every class present in `labels`, drawn without replacement, returned sorted (int64),
    so the same (labels, per_class, seed) always give the same sample. Raises ValueError if a class has fewer.
    """
    y = np.asarray(labels).reshape(-1)  # (N,)
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)  # (n_cls,)
        if len(members) < per_class:
            raise ValueError(f"class {cls} has {len(members)} images, fewer than per_class={per_class}")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


@dataclass(frozen=True)
class PhotoResult:
    """One row of the photo-robustness table."""

    condition: str
    description: str
    severity: float
    realistic: bool  # the severity the targets are judged at
    accuracy: float
    relative: float  # accuracy / clean accuracy of the same sample (nan if clean accuracy is 0)
    count: int
    confident_share: float = math.nan  # share answered without "unsure"
    confident_accuracy: float = math.nan  # accuracy of the confident answers (nan if none)
    # The same two judged by the photo thresholds fitted without this condition (`fmnist.evaluation.leave_out`);
    # nan where not measured (the clean row, a condition the fit did not use, or no leave-out asked for).
    unseen_confident_share: float = math.nan
    unseen_confident_accuracy: float = math.nan


Classify = Callable[[list[bytes]], "Answers | np.ndarray"]


def _answers(classify: Classify, uploads: list[bytes]) -> Answers:
    """What `classify` said about `uploads`; a bare array of labels counts as all-confident answers."""
    answers = classify(uploads)
    return answers if isinstance(answers, Answers) else Answers.confident_labels(np.asarray(answers))


def unseen_figures(leave_out: LeaveOut | None, condition: str, answers: Answers, truth: np.ndarray) -> Figures | None:
    """`answers` judged by the photo thresholds fitted without `condition`, scored; None where not measured."""
    judged = None if leave_out is None else leave_out(condition, answers)
    return None if judged is None else figures(judged, truth)


def photo_robustness(
    classify: Classify,
    images: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    per_class: int = 30,
    size: int = 224,
    conditions: tuple[PhotoCondition, ...] = PHOTO_CONDITIONS,
    leave_out: LeaveOut | None = None,
) -> list[PhotoResult]:
    """Accuracy of `classify` (bytes of each upload -> `Answers`, or bare predicted class indices) on the sample
    rendered clean
    (first row, condition 'clean') and under every condition and severity.

    The sample is `sample_indices(labels, per_class, seed)` of `images` (N, 28, 28) uint8; the photo of test
    image i is rendered with `photo_rng(seed, i)`, so the table is the same on every run. `classify` gets one list of
    uploads per row, in sample order, and must return one class index per upload. With `leave_out`, each
    condition's answers are also judged by the photo thresholds fitted without it (`unseen_*`).
    """
    indices = sample_indices(labels, per_class, seed)  # (n,)
    truth = np.asarray(labels).reshape(-1)[indices].astype(np.int64)  # (n,)
    sample = np.asarray(images)[indices]  # (n, 28, 28)
    found = figures(_answers(classify, [render_clean(x) for x in sample]), truth)
    clean = found.accuracy
    log.info("photo robustness: %d images (%d per class), clean accuracy %.3f", len(indices), per_class, clean)
    results = [
        PhotoResult(
            "clean",
            "the plain 28x28 test images as PNG",
            0.0,
            False,
            clean,
            1.0,
            len(indices),
            found.confident_share,
            found.confident_accuracy,
        )
    ]
    for condition in conditions:
        for k, severity in enumerate(condition.severities):
            # Pillow and NumPy release the GIL for the heavy part of rendering: threads use every core.
            with ThreadPoolExecutor(max_workers=WORKERS) as pool:
                render = partial(_render_one, condition=condition, severity=severity, seed=seed, size=size)
                uploads = list(pool.map(render, sample, indices))
            answers = _answers(classify, uploads)
            found = figures(answers, truth)
            unseen = unseen_figures(leave_out, condition.name, answers, truth)
            accuracy = found.accuracy
            relative = accuracy / clean if clean > 0 else math.nan
            results.append(
                PhotoResult(
                    condition.name,
                    condition.description,
                    severity,
                    k == condition.realistic,
                    accuracy,
                    relative,
                    len(indices),
                    found.confident_share,
                    found.confident_accuracy,
                    math.nan if unseen is None else unseen.confident_share,
                    math.nan if unseen is None else unseen.confident_accuracy,
                )
            )
            log.info(
                "photo robustness: %s at %g: accuracy %.3f (%.2f of clean)",
                condition.name,
                severity,
                accuracy,
                relative,
            )
    return results


def _render_one(
    image: np.ndarray, index: int, condition: PhotoCondition, severity: float, seed: int, size: int
) -> bytes:
    """One test image's photo under one condition and severity, with its own generator."""
    return render_photo(image, condition, severity, photo_rng(seed, int(index)), size=size)


def worst_realistic(results: Sequence[PhotoResult]) -> PhotoResult:
    """The realistic-severity row with the lowest accuracy (the first such row on a tie). Raises ValueError if none."""
    realistic = [r for r in results if r.realistic]
    if not realistic:
        raise ValueError("no realistic-severity rows in the results")
    return min(realistic, key=lambda r: r.accuracy)


def contact_sheet(
    images: np.ndarray,
    indices: Sequence[int],
    seed: int = 0,
    size: int = 224,
    thumb: int = 160,
    conditions: tuple[PhotoCondition, ...] = PHOTO_CONDITIONS,
) -> bytes:
    """PNG bytes of a grid to look at: a row per test index, the clean image then each condition at its realistic
    severity (rendered at `size` exactly as `photo_robustness` renders it, shown at `thumb` pixels)."""
    header = 18  # pixels of caption above each column
    columns = ["clean", *(c.name for c in conditions)]
    sheet = Image.new("RGB", (thumb * len(columns), header + thumb * len(indices)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for col, name in enumerate(columns):
        draw.text((col * thumb + 4, 3), name, fill=(0, 0, 0))
    for row, index in enumerate(indices):
        image = _check_image(np.asarray(images)[index])
        tiles = [Image.fromarray(image).convert("RGB")]
        for c in conditions:
            photo = render_photo(image, c, c.severities[c.realistic], photo_rng(seed, int(index)), size=size)
            tiles.append(Image.open(io.BytesIO(photo)).convert("RGB"))
        for col, tile in enumerate(tiles):
            sheet.paste(tile.resize((thumb, thumb), Image.Resampling.LANCZOS), (col * thumb, header + row * thumb))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()
