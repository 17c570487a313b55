"""One image normalisation for every picture the model sees from outside: bytes in, a Fashion-MNIST-style 28x28 out.

The service runs it on every upload and the evaluate step runs it on rendered photos, so the report measures exactly
what users get. It redoes what Fashion-MNIST's authors did to product photos (trim to the garment, extend the short
side to a centred square, resize the long side to 28, negate so the garment is light on black), but without assuming
their studio's perfect white background:

1. Background. A smooth surface (a quadratic in x and y) is fitted to the image's outer ring by least squares,
   re-fitted on the ring pixels within a few noise widths of the fit, so a garment that touches the edge and a lighting
   gradient across the backdrop are both handled. Its residual `image - surface`, divided by the surface's relative
   brightness (light falling off dims the garment as much as the backdrop), is the garment's contrast against
   whatever is behind it; the backdrop's own grey level or colour no longer matters.
2. Polarity. The sign of the summed significant residual: a garment darker than its backdrop (the usual product
   photo) is negated, a lighter one (Fashion-MNIST's own convention) is kept. Decided from the image, not from a
   fixed brightness threshold, so a dark garment on mid-grey paper or an under-exposed frame is still inverted.
3. Noise. The ring's residual spread (a robust MAD estimate) is the noise level; the foreground is soft-thresholded
   a few noise widths above zero, so sensor noise and JPEG ringing do not survive as a grey veil over a background
   that the model has only ever seen as pure black.
4. Framing. Trim to the bounding box of the foreground's solid parts (isolated specks of noise do not count), pad
   to a centred square, resize to 28x28 with an area-preserving filter.
5. Contrast. Stretch so the garment's brightest pixels reach the level training images have (their top pixels sit
   at 250-255), whatever the exposure or the garment's contrast against its backdrop was.
6. Outline. Before framing, the box is checked against the garment's outline as OpenCV's GrabCut finds it in colour,
   seeded with the frame's outer ring as backdrop. Where the contrast's box and the outline's disagree (a wood floor
   or a crumpled sheet stood out as much as the garment did, or only a light garment's dark print did), the outline
   frames the garment; where they agree, the contrast's box, sharper than an outline found at 56 px, stays.

An image that is already 28x28 on a clean black background is Fashion-MNIST's own form and passes unchanged.
An image with no foreground at all (a blank frame, pure noise) comes out black and is marked `empty`; so is, keeping
its pixels, a photo whose 28x28 has no garment's shape (`garment_shaped`: a failed crop to a seam, a line of a
striped frame, a speck), which the model would otherwise read as some garment.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from fmnist.core.data import IMAGE_SIZE
from fmnist.images.uploads import Upload, decode_pixels, open_upload

# Chroma contrast counts this much as grey contrast in the foreground (`_chroma_contrast`). On the real photographs'
# validation split (model of a default run; `benchmarks/photo_robustness.py`), family accuracy of garments with a class
# rose with the gain: 58.7% grey only, 65.3% at 1, 67.2% at 2, 70.4% at 4; 2 is the largest gain tried that keeps a
# coloured backdrop or a tinted light within 8 grey levels of the plain photo's model input
# (tests/images/test_normalise.py), which 3 and 4 do not: a grey garment's own lack of colour stands out against a
# coloured backdrop.
CHROMA_GAIN = 2.0
# The garment's outline is found by OpenCV's GrabCut at this long side (pixels), seeded with the frame's outer ring as
# backdrop and everything else as maybe-garment, in GRABCUT_ITERATIONS rounds of its colour models: the 28x28 output
# needs no finer outline. A textured backdrop (wood boards, a crumpled sheet) stands out from its own quadratic fit as
# much as the garment does, and a light garment's dark print can outweigh the garment itself; the colour models separate
# both. Chosen on the real photographs' validation split (`benchmarks/photo_robustness.py --run
# FashionFlow/1796394470954033`, weights trained without the outline), garments with a class, exact class / family /
# sure of the family (right): no outline 59.1% / 83.6% / 46.4% (99.3%); 56 px, 2 rounds 61.3% / 86.5% / 50.2% (99.1%);
# 56 px, 1 round 63.0% / 87.8% / 51.1% (98.8%); 40 px, 2 rounds 61.9% / 86.9% / 49.8% (98.8%); 40 px, 1 round 61.9% /
# 87.7% / 52.6% (99.1%): within a few photos of each other. A wire hanger above the garment tells them apart: the
# validation in-the-wild hanger_and_tag row moves the model's input by 4.0 grey levels without the outline, 8.3 at
# 56 px in two rounds, 11.2-14.3 in the others (one round's colour models, or 40 px, join the hanger to the garment;
# tests/evaluation/test_wild_photos.py holds it under 10). 56 px in two rounds costs most
# (`benchmarks/normalise_cost.py`: p50 per photo +5.8 ms against +2.9 ms for 40 px in one round).
GRABCUT_SIZE = 56
GRABCUT_ITERATIONS = 2
# The outline changes the model's input of few photos, so a one-round GrabCut at SCREEN_SIZE screens first: where
# its box overlaps the contrast's by SCREEN_AGREEMENT or more, the two agree and the full outline is not drawn.
# `benchmarks/outline_screen.py` (renders of 30 training garments under every studio and in-the-wild condition, the
# 767 real validation photos; one thread): the outline changes 0.3%, 5.6% and 10.4% of their inputs; per photo 2.85,
# 4.55 and 5.33 ms without it, 9.76, 11.64 and 10.14 ms with it always drawn, 4.44, 5.93 and 7.30 ms screened; the
# screen changes 0.3%, 0.2% and 0.3% of the inputs against the full outline.
SCREEN_SIZE = 20
SCREEN_AGREEMENT = 0.6
# GrabCut's outline is used when its largest part covers at least this share of the frame (less: it found no garment,
# and the contrast-based trim decides). A light grey coat on white has no colour of its own, and GrabCut kept a sleeve's
# edge alone (2.7% of the frame; tests/serving/test_serving.py's product photos). 0.05 changes the model's input of 8
# of the 767 real validation photos against 0.01, and of none of the rendered ones.
GRABCUT_MIN_SHARE = 0.05
# The outline replaces the contrast's box only where the two boxes overlap (intersection over union) by less than this:
# where they agree, the contrast's box, drawn at the working size, is the sharper of the two (a product photo on a
# plain backdrop keeps its exact framing).
OUTLINE_AGREEMENT = 0.5
# Working resolution: larger images are first reduced so their long side is at most this. Four times the
# 28-pixel output is ample for trimming and resizing, and keeps a request's cost independent of the camera.
WORK_SIZE = 224
# Ring thickness as a fraction of the shorter side: 1/28, i.e. one output pixel, at least one input pixel.
RING_FRACTION = 1 / 28
# A residual counts as part of the garment when it lies this many noise widths from the background fit.
SIGNIFICANT_SIGMAS = 4.0
# Below this mean backdrop level (grey levels) the backdrop is taken as unlit and uneven light is not corrected.
DARK_BACKDROP = 32.0
# The light correction never scales the contrast by more than this either way (a vignette, not a spotlight).
MAX_GAIN = 2.0
# Soft threshold on the foreground, in noise widths: Gaussian noise exceeds 3 sigma 0.13% of the time.
NOISE_SIGMAS = 3.0
# Noise floor in grey levels: 8-bit quantisation and clean renderings have a MAD of zero.
MIN_NOISE = 1.0
# The foreground is also cut this fraction of its peak below, which removes shading the quadratic did not model.
RELATIVE_FLOOR = 0.04
# Trim: only pixels above this fraction of the foreground's peak outline the garment (a faint collar at 20% of the
# peak stays inside the box; JPEG ringing around the garment, at a few per cent, does not widen it).
MASK_LEVEL = 0.1
# Trim: a foreground pixel counts towards the garment's box when this many of its 3x3 neighbourhood (itself
# included) are foreground too; 4 keeps one-pixel-wide straps and edges, drops isolated specks and pairs.
MIN_NEIGHBOURS = 4
# Parts of the foreground other than the garment's largest one are kept when they carry at least this share of its
# foreground and lie within GARMENT_PART_REACH (of the frame's long side) of its box (see `_garment_region`).
GARMENT_PART_SHARE = 0.1
GARMENT_PART_REACH = 0.05
# Below this peak contrast (grey levels, after thresholding) there is nothing in the image to classify.
MIN_PEAK = 12.0
# Brightest garment pixels are stretched to this level: the median 99th percentile of training garments is 247.
TARGET_PEAK = 250.0
# A 28x28 image whose background fit stays within this of 0 is already in Fashion-MNIST's form.
CLEAN_BACKGROUND = 2.0
# The least of a garment's shape at 28x28, where it is lit above SHAPE_LEVEL: all but about 0.01% of Fashion-MNIST's
# 60,000 training images are at least 6 px wide and 5 px tall and light up at least 3.8% of the frame (their
# 0.01% quantiles; `tests/images/test_normalise.py` measures them on the real files). A photo's 28x28 short of any is
# no garment the model knows (`garment_shaped`). Of the real photographs' fit split, 18 of 1,509 fall short.
SHAPE_LEVEL = 40
MIN_SHAPE_WIDTH, MIN_SHAPE_HEIGHT, MIN_SHAPE_LIT = 6, 5, 0.038


@dataclass(frozen=True)
class Normalized:
    """A picture in Fashion-MNIST's form, and what it took to get it there."""

    pixels: np.ndarray  # (28, 28) uint8, light garment on black
    inverted: bool  # the garment was darker than its backdrop and was negated
    background: float  # mean backdrop level of the input, 0-255
    noise: float  # estimated noise standard deviation of the input, grey levels
    contrast: float  # the garment's peak contrast against its backdrop, grey levels (before stretching)
    # No garment found: nothing stood out from the background (the output is black), or what did has no garment's
    # shape (`garment_shaped`; the output kept).
    empty: bool
    # Anything but Fashion-MNIST's own form (a 28x28 frame on a clean black background, passed through unchanged):
    # the normaliser had to find the garment, so the model is held to the abstention policy's photo threshold.
    photo: bool = True
    # The garment's box in the picture, (left, top, right, bottom) as fractions of its width and height: the part the
    # 28x28 was cut from, so a user can see a bad crop on the picture itself. None when nothing was cut out (a scan
    # passed through, an empty picture).
    box: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class Prepared:
    """One upload ready for the model, and what was done to it."""

    pixels: np.ndarray  # (28, 28) uint8, light garment on dark background
    inverted: bool
    empty: bool
    photo: bool  # see `Normalized.photo`
    original_size: tuple[int, int]  # (width, height)
    original_format: str | None
    box: tuple[float, float, float, float] | None = None  # see `Normalized.box`


def prepare_upload(data: bytes, max_pixels: int) -> Prepared:
    """Uploaded image bytes (any format, mode or size) -> the model's 28x28 input. Raises `uploads.ImageError`."""
    return prepare_opened(open_upload(data, max_pixels, WORK_SIZE))


def prepare_opened(upload: Upload) -> Prepared:
    """An upload whose header `uploads.open_upload` has checked -> the model's 28x28 input: decoded at two to four times
    the working size at most (`uploads.decode_pixels`), so its cost follows WORK_SIZE, not the claimed size.
    Raises `uploads.ImageError` for a file that turns out truncated or corrupt."""
    gray, colour = decode_pixels(upload, WORK_SIZE)
    normalized = normalize_photo(gray, colour)
    return Prepared(
        pixels=normalized.pixels,
        inverted=normalized.inverted,
        empty=normalized.empty,
        photo=normalized.photo,
        original_size=upload.original_size,
        original_format=upload.format,
        box=normalized.box,
    )


def normalize_photo(gray: np.ndarray, colour: np.ndarray | None = None) -> Normalized:
    """(H, W) grayscale 0-255 (any dtype), and the same picture's (H, W, 3) RGB when it has colour -> a 28x28
    Fashion-MNIST-style image (see the module docstring)."""
    work = _reduce(np.asarray(gray, dtype=np.float32))  # (h, w), long side <= WORK_SIZE
    if work.shape[0] < 2 or work.shape[1] < 2:
        work = np.pad(work, ((0, max(0, 2 - work.shape[0])), (0, max(0, 2 - work.shape[1]))), mode="edge")
    surface, noise = fit_background(work)  # (h, w), grey levels
    background = float(surface.mean())
    if gray.shape == (IMAGE_SIZE, IMAGE_SIZE) and np.abs(surface).max() <= CLEAN_BACKGROUND and noise <= MIN_NOISE:
        pixels = np.clip(np.asarray(gray, dtype=np.float32), 0, 255).round().astype(np.uint8)
        return Normalized(pixels, False, background, noise, float(pixels.max()), empty=not pixels.any(), photo=False)

    gain = _illumination_gain(surface)  # (h, w)
    residual = (work - surface) * gain  # (h, w): signed contrast against the backdrop
    inverted = _garment_is_darker(residual, noise)
    foreground = np.maximum(-residual if inverted else residual, 0.0)
    # The colour at the working size, reduced once for the chroma contrast and the outline alike. None: grey only.
    colour_work = _reduce_colour(colour, work.shape) if colour is not None and colour.shape[:2] == gray.shape else None
    if colour_work is not None:
        # A garment the same grey as its backdrop still differs in colour: its chroma contrast joins the foreground.
        foreground = np.maximum(foreground, _chroma_contrast(colour_work))
    unthresholded = foreground  # (h, w)
    peak = float(np.percentile(foreground, 99.9)) if foreground.size else 0.0
    foreground = np.maximum(foreground - max(NOISE_SIGMAS * noise, RELATIVE_FLOOR * peak), 0.0)
    contrast = float(foreground.max()) if foreground.size else 0.0
    if contrast < MIN_PEAK:
        return Normalized(np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8), inverted, background, noise, contrast, True)

    trimmed = _trim(foreground)
    if trimmed is None:  # only isolated specks stood out: noise, not a garment
        return Normalized(np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8), inverted, background, noise, contrast, True)
    garment = None
    # The picture GrabCut reads, at the working size with its light evened out: one for the screen and the outline.
    source = (np.stack([work] * 3, axis=2) if colour_work is None else colour_work) * gain[..., None]  # (h, w, 3)
    evened = np.clip(source, 0, 255).astype(np.uint8)  # (h, w, 3)
    screen = _garment_outline(evened, SCREEN_SIZE, 1)  # (h, w) bool, a coarse outline, or None
    if screen is None or _overlap(trimmed[1], _box_of(screen)) < SCREEN_AGREEMENT:
        garment = _garment_outline(evened)
    if garment is not None:
        # Where the outline and the contrast's box disagree, the outline frames the garment, and within it the garment
        # keeps its whole contrast, faint parts included (a light garment's body on a light floor, below the threshold
        # its dark print sets); outside it nothing is kept.
        outlined = _crop_to(np.where(garment, unthresholded, 0.0).astype(np.float32), garment)
        if outlined is not None and _overlap(trimmed[1], outlined[1]) < OUTLINE_AGREEMENT:
            trimmed = outlined
    crop, (top_row, bottom_row, left_col, right_col) = trimmed
    h, w = foreground.shape
    box = (left_col / w, top_row / h, (right_col + 1) / w, (bottom_row + 1) / h)
    square = _centred_square(crop)
    small = np.asarray(
        Image.fromarray(square, mode="F").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX), dtype=np.float32
    )  # (28, 28)
    top = float(np.percentile(small[small > 0], 99)) if (small > 0).any() else 0.0
    if top <= 0:
        return Normalized(np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8), inverted, background, noise, contrast, True)
    pixels = np.clip(small * (TARGET_PEAK / top), 0, 255).round().astype(np.uint8)
    # No garment's shape: empty like a blank frame, its pixels kept so that a user sees what was found.
    return Normalized(pixels, inverted, background, noise, contrast, empty=not garment_shaped(pixels), box=box)


def garment_shaped(pixels: np.ndarray) -> bool:
    """Whether a (28, 28) uint8 model input has at least a Fashion-MNIST garment's width, height and lit share where
    it is brighter than SHAPE_LEVEL (see MIN_SHAPE_WIDTH)."""
    lit = np.asarray(pixels) > SHAPE_LEVEL  # (28, 28)
    if lit.mean() < MIN_SHAPE_LIT:
        return False
    rows, cols = np.flatnonzero(lit.any(1)), np.flatnonzero(lit.any(0))
    return bool(cols[-1] - cols[0] + 1 >= MIN_SHAPE_WIDTH and rows[-1] - rows[0] + 1 >= MIN_SHAPE_HEIGHT)


# RGB -> two opponent-colour channels (red-green, yellow-blue), orthonormal and orthogonal to grey: linear, so the
# backdrop's colour is fitted by the same quadratic as its brightness, and in grey-level units.
OPPONENT = np.array([[1.0, -1.0, 0.0], [0.5, 0.5, -1.0]], dtype=np.float32) / np.array(
    [[2**0.5], [1.5**0.5]], np.float32
)


def _reduce_colour(colour: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """(H, W, 3) RGB -> (h, w, 3) float32 at the working size `shape`, each channel reduced as the grey was; None where
    the reduction does not land on `shape`."""
    channels = [_reduce(np.ascontiguousarray(colour[..., c], np.float32)) for c in range(3)]
    if any(channel.shape != shape for channel in channels):
        return None
    return np.stack(channels, axis=2)


def _chroma_contrast(colour: np.ndarray) -> np.ndarray:
    """(h, w, 3) RGB at the working size -> (h, w) >= 0: how far each pixel's colour lies from the backdrop's, in grey
    levels (CHROMA_GAIN x the Euclidean distance in the opponent plane), each channel soft-thresholded NOISE_SIGMAS of
    its ring noise."""
    opponent = colour @ OPPONENT.T  # (h, w, 2); linear, so the same as reducing each opponent channel
    distance = np.zeros(colour.shape[:2], dtype=np.float32)
    for c in range(2):
        channel = np.ascontiguousarray(opponent[..., c])
        surface, noise = fit_background(channel)
        excess = np.maximum(np.abs(channel - surface) - NOISE_SIGMAS * noise, 0.0)
        distance += excess * excess
    return CHROMA_GAIN * np.sqrt(distance)


def fit_background(gray: np.ndarray, iterations: int = 3) -> tuple[np.ndarray, float]:
    """A smooth backdrop surface for (h, w) float `gray` from its outer ring, and the ring's noise level.

    Least squares of a quadratic in (x, y) on the ring, refitted on the pixels within SIGNIFICANT_SIGMAS noise widths
    of the previous fit: the first fit is the ring's median, so garment pixels at the edge never steer it.
    """
    h, w = gray.shape
    geometry = _ring_geometry(h, w)
    values = gray[geometry.ys, geometry.xs]  # (R,)
    design = geometry.design  # (R, 6)
    fitted = np.full_like(values, _median(values))
    coef = np.zeros(design.shape[1], dtype=np.float64)
    coef[0] = float(fitted[0])
    noise = _robust_sigma(values - fitted)
    previous = None
    for _ in range(iterations):
        inliers = np.abs(values - fitted) <= max(SIGNIFICANT_SIGMAS * noise, MIN_NOISE * SIGNIFICANT_SIGMAS)
        if np.count_nonzero(inliers) < design.shape[1] * 4:
            break
        if previous is not None and (inliers == previous).all():
            break  # the same pixels give the same fit: further rounds change nothing
        previous = inliers
        # Normal equations of a 6-term fit: a 6x6 solve, far cheaper than an SVD of the (R, 6) design matrix.
        a = design[inliers]
        coef = np.linalg.solve(a.T @ a + _RIDGE, a.T @ values[inliers].astype(np.float64))
        fitted = (design @ coef).astype(np.float32)
        noise = _robust_sigma((values - fitted)[inliers])
    return geometry.surface(coef), max(noise, MIN_NOISE)


_SQUARE3 = np.ones((3, 3), dtype=bool)  # 8-connectivity, and the smallest square that cuts one-pixel lines
# Keeps the 6x6 normal equations of the background fit solvable when the ring is flat (a 1e-9 ridge).
_RIDGE = 1e-9 * np.eye(6)
_RIDGE.flags.writeable = False


@dataclass(frozen=True)
class _RingGeometry:
    """What `fit_background` needs of an (h, w) frame besides its pixels; the same for every frame of that size."""

    ys: np.ndarray  # (R,) row of each ring pixel
    xs: np.ndarray  # (R,) column of each ring pixel
    design: np.ndarray  # (R, 6) quadratic terms of the ring pixels
    y: np.ndarray  # (h, 1) centred row coordinate
    x: np.ndarray  # (1, w) centred column coordinate

    def surface(self, coef: np.ndarray) -> np.ndarray:
        """(6,) coefficients of 1, x, y, x^2, xy, y^2 -> the (h, w) float32 surface, evaluated separably: a few
        (h, 1) and (1, w) vectors broadcast together instead of an (h * w, 6) design matrix."""
        c0, c1, c2, c3, c4, c5 = coef.tolist()
        rows = c0 + self.y * (c2 + c5 * self.y)  # (h, 1)
        cols = self.x * (c1 + c3 * self.x)  # (1, w)
        return (rows + cols + (c4 * self.y) * self.x).astype(np.float32)  # (h, w)


@functools.lru_cache(maxsize=64)
def _ring_geometry(h: int, w: int) -> _RingGeometry:
    """The ring of an (h, w) frame, cached: uploads come in a handful of sizes (28x28 scans, the working size)."""
    t = max(1, round(min(h, w) * RING_FRACTION))
    ring = np.zeros((h, w), dtype=bool)
    ring[:t], ring[-t:], ring[:, :t], ring[:, -t:] = True, True, True, True
    ys, xs = np.nonzero(ring)
    y = np.arange(h, dtype=np.float64)[:, None] / max(1, h - 1) - 0.5
    x = np.arange(w, dtype=np.float64)[None, :] / max(1, w - 1) - 0.5
    geometry = _RingGeometry(ys, xs, _quadratic_terms(ys / max(1, h - 1), xs / max(1, w - 1)), y, x)
    for array in (geometry.ys, geometry.xs, geometry.design, geometry.y, geometry.x):
        array.flags.writeable = False  # shared by every call: nobody may change it
    return geometry


def _illumination_gain(surface: np.ndarray) -> np.ndarray:
    """Per-pixel gain that undoes uneven light: light falling off across the frame dims the garment's contrast as much
    as the backdrop, so the residual is rescaled by mean(surface) / surface (reflectance, not radiance). Only where the
    backdrop is lit at all (mean above DARK_BACKDROP): on a black backdrop there is no illumination to measure."""
    mean = float(surface.mean())
    if mean < DARK_BACKDROP:
        return np.ones_like(surface)
    return np.clip(mean / np.maximum(surface, 1.0), 1 / MAX_GAIN, MAX_GAIN).astype(np.float32)


def _quadratic_terms(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(N,) coordinates in [0, 1] -> (N, 6) terms 1, x, y, x^2, xy, y^2, centred for a well-conditioned fit."""
    y, x = y - 0.5, x - 0.5
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)


def _robust_sigma(residual: np.ndarray) -> float:
    """Standard deviation estimated from the median absolute deviation: blind to a minority of outliers."""
    if residual.size == 0:
        return MIN_NOISE
    return float(1.4826 * _median(np.abs(residual - _median(residual))))


def _median(a: np.ndarray) -> np.floating | np.ndarray:
    """`np.median` of a float array, bit for bit (same value and dtype, NaN if any), without its generic machinery:
    fit_background takes nine medians of a few hundred values per upload, and np.median's overhead was a fifth of
    the batch endpoint's time (py-spy under wrk)."""
    a = np.ravel(a)
    n = a.size
    if n == 0 or a.dtype.kind != "f":
        return np.median(a)
    k = n // 2
    part = np.partition(a, [k - 1, k, -1] if n % 2 == 0 else [k, -1])
    if np.isnan(part[-1]):  # NaN sorts last; np.median answers NaN then
        return part[-1]
    return part[k] if n % 2 else (part[k - 1] + part[k]) / 2


def _garment_is_darker(residual: np.ndarray, noise: float) -> bool:
    """True when the significant residual is mostly negative: a garment darker than its backdrop."""
    significant = np.abs(residual) > max(SIGNIFICANT_SIGMAS * noise, MIN_PEAK)
    return float(residual[significant].sum()) < 0.0


def _reduce(gray: np.ndarray) -> np.ndarray:
    """Shrink so the long side is at most WORK_SIZE (area filter, which also averages noise away)."""
    h, w = gray.shape
    scale = WORK_SIZE / max(h, w)
    if scale >= 1.0:
        return gray
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(gray, mode="F").resize(size, Image.Resampling.BOX), dtype=np.float32)


def _trim(foreground: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """Crop (h, w) to the bounding box of the foreground's solid parts: pixels with at least MIN_NEIGHBOURS foreground
    pixels in their 3x3 neighbourhood. A garment's faint edge is contiguous and stays; a speck of noise that survived
    the threshold is isolated and does not stretch the box. (the crop, its (top, bottom, left, right) rows and columns,
    inclusive); None when nothing solid is left."""
    mask = foreground > MASK_LEVEL * foreground.max()  # (h, w)
    if max(mask.shape) < 2 * IMAGE_SIZE:
        # Near Fashion-MNIST's own size every pixel is a pixel of the result: a one-pixel collar is the garment.
        if not mask.any():
            return None
        kept = mask
    else:
        neighbours = _square3(mask.astype(np.uint8), np.add)  # (h, w), self included
        solid = mask & (neighbours >= MIN_NEIGHBOURS)
        if not solid.any():
            return None
        kept = _garment_region(solid, mask, foreground)  # (h, w) bool
        foreground = np.where(kept, foreground, 0.0)
    return _crop_to(foreground, kept)


def _box_of(kept: np.ndarray) -> tuple[int, int, int, int]:
    """The (top, bottom, left, right) inclusive box of a (h, w) bool mask with at least one pixel set."""
    rows, cols = np.flatnonzero(kept.any(axis=1)), np.flatnonzero(kept.any(axis=0))
    return (int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1]))


def _garment_outline(
    picture: np.ndarray, size: int = GRABCUT_SIZE, iterations: int = GRABCUT_ITERATIONS
) -> np.ndarray | None:
    """(h, w) bool: the garment's outline in `picture` ((h, w, 3) uint8 RGB at the working size, its light evened out;
    a grey picture in all three channels), found by GrabCut at `size` pixels' long side in `iterations` rounds with the
    frame's outer ring as backdrop; its largest connected part (props and the backdrop's stray patches drop out). None
    where the frame is too small to seed (Fashion-MNIST's own scale: every pixel counts there) or that part covers
    less than GRABCUT_MIN_SHARE of it."""
    import cv2  # only photos need it: the scan path and the library's import stay free of OpenCV

    h, w = picture.shape[:2]
    if max(h, w) < 2 * IMAGE_SIZE or min(h, w) < 8:
        return None
    scale = size / max(h, w)
    small_size = (max(8, round(w * scale)), max(8, round(h * scale)))  # (width, height), OpenCV's order
    small = cv2.resize(picture, small_size, interpolation=cv2.INTER_AREA)  # (s_h, s_w, 3)
    ring = max(1, size // IMAGE_SIZE)
    seeds = np.full(small.shape[:2], cv2.GC_PR_FGD, np.uint8)  # (s_h, s_w)
    seeds[:ring], seeds[-ring:], seeds[:, :ring], seeds[:, -ring:] = cv2.GC_BGD, cv2.GC_BGD, cv2.GC_BGD, cv2.GC_BGD
    backdrop, garment = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)  # GrabCut's colour models
    try:
        # The seeds, not a rectangle, start it (GC_INIT_WITH_MASK): no rectangle is read. Its colour models start
        # from k-means on OpenCV's thread-local random generator: seeded here, the same picture gets the same outline.
        cv2.setRNGSeed(0)
        cv2.grabCut(small, seeds, (0, 0, 0, 0), backdrop, garment, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # a frame of one colour: no model to fit, no outline
        return None
    found = ((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)).astype(np.uint8)  # (s_h, s_w)
    if not found.any():
        return None
    _count, labels, stats, _ = cv2.connectedComponentsWithStats(found, connectivity=8)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[largest, cv2.CC_STAT_AREA] < GRABCUT_MIN_SHARE * found.size:  # splinters: no garment found in colour
        return None
    outline = (labels == largest).astype(np.float32)
    return cv2.resize(outline, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5  # (h, w)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two (top, bottom, left, right) inclusive boxes."""
    rows = min(a[1], b[1]) - max(a[0], b[0]) + 1
    cols = min(a[3], b[3]) - max(a[2], b[2]) + 1
    inter = max(rows, 0) * max(cols, 0)
    areas = [(box[1] - box[0] + 1) * (box[3] - box[2] + 1) for box in (a, b)]
    return inter / (sum(areas) - inter)


def _crop_to(foreground: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """`foreground` (h, w) cropped to the bounding box of `kept` (h, w) bool, and that box (`_box_of`); None when
    nothing is kept."""
    if not kept.any():
        return None
    top, bottom, left, right = box = _box_of(kept)
    return foreground[top : bottom + 1, left : right + 1], box


def _garment_region(solid: np.ndarray, mask: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """(h, w) bool: the parts of the foreground that belong to the garment, without what else is in the frame.

    Thin things are cut away first (an opening by a 3x3 square: wire hangers, tag strings, grout and board seams,
    lines of print are a few pixels wide at the working size, while a garment's thinnest parts, sandal straps, are
    one Fashion-MNIST pixel, five or more working pixels). What is left falls into connected parts; the garment is
    the part with the most foreground, and another part stays only if it is substantial (GARMENT_PART_SHARE of the
    garment's foreground or more: the second shoe, a bag's handle, a strap cut off by the opening) and lies next to
    the garment (within GARMENT_PART_REACH of its box). Price tags, labels, props and things at the frame's edge are
    small or far, and drop out. The kept parts then take back the foreground within two pixels of them, so edges and
    thin straps attached to the garment stay.
    """
    opened = _square3(_square3(solid, np.logical_and), np.logical_or)  # erosion, then dilation: an opening
    if not opened.any():
        return solid  # only thin strokes: nothing to choose between
    labels, count = ndimage.label(opened, structure=_SQUARE3)  # (h, w) int32, 0 = background
    if count == 1:
        kept = opened
    else:
        masses = ndimage.sum_labels(foreground, labels, index=np.arange(1, count + 1))  # (count,)
        boxes = ndimage.find_objects(labels)  # per part: (row slice, column slice)
        main = int(np.argmax(masses))
        reach = GARMENT_PART_REACH * max(solid.shape)
        top, bottom = boxes[main][0].start - reach, boxes[main][0].stop + reach
        left, right = boxes[main][1].start - reach, boxes[main][1].stop + reach
        keep = [
            k + 1
            for k, (rs, cs) in enumerate(boxes)
            if k == main
            or (
                masses[k] >= GARMENT_PART_SHARE * masses[main]
                and rs.start < bottom
                and rs.stop > top
                and cs.start < right
                and cs.stop > left
            )
        ]
        kept = np.isin(labels, keep)
    return _square3(_square3(kept, np.logical_or), np.logical_or) & mask  # dilated twice


def _square3(a: np.ndarray, op: np.ufunc) -> np.ndarray:
    """`op` over each pixel's 3x3 neighbourhood of (h, w) `a`, zero (False) outside the frame, as two passes of three
    shifted slices: np.logical_and is scipy's `binary_erosion` by a 3x3 square, np.logical_or its `binary_dilation`,
    np.add a neighbour count; the same result bit for bit, without scipy's generic machinery, whose binary
    morphology had been the largest single cost of a product photo's normalisation (cProfile)."""
    padded = np.zeros((a.shape[0] + 2, a.shape[1] + 2), a.dtype)  # np.pad(a, 1), without its generic machinery
    padded[1:-1, 1:-1] = a
    rows = op(op(padded[:-2], padded[1:-1]), padded[2:])  # (h, w + 2): each pixel with its upper and lower ones
    return op(op(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])  # (h, w)


def _centred_square(crop: np.ndarray) -> np.ndarray:
    """Pad (h, w) with black to a centred square, as Fashion-MNIST extended the short side."""
    h, w = crop.shape
    side = max(h, w)
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = crop
    return square
