"""Turn an uploaded image (any format, mode or size) or raw pixel values into the tensors the model was trained on.

Fashion-MNIST pictures are light garments on a black background, 28x28 grayscale. Product photos are usually the
opposite: a dark garment on a white background. The rule used here:

    Inversion: the image is converted to grayscale and the mean brightness of its border (the outermost ring of
    pixels, 1/14 of the shorter side thick, at least one pixel) is measured. If that mean is above 127.5 (out of
    255), the background is light and the image is inverted, so the garment ends up light on dark.

Then, as Fashion-MNIST was built: an image that is not already 28x28 is trimmed to the bounding box of the garment
(pixels brighter than the background by more than a small threshold), padded to a square with the background
colour, and resized to 28x28. Transparent pixels are composited onto white before all this (a cut-out product
photo is a dark object on "nothing"). Raw pixel arrays sent as JSON are taken as they are: already 28x28 in the
Fashion-MNIST convention, values 0-255.

Normalisation is the training one (`fmnist.model.normalize` with the mean and std stored in the model record).
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fmnist.data import IMAGE_SIZE

INVERT_THRESHOLD = 127.5  # mean border brightness above which the background counts as light
TRIM_THRESHOLD = 24  # a pixel this much brighter than the background belongs to the garment


class ImageError(ValueError):
    """An upload that cannot be turned into a model input; the message says why, for the client."""


class ImageTooLarge(ImageError):
    """The decoded image would exceed the pixel limit (a decompression bomb, or just an enormous picture)."""


@dataclass(frozen=True)
class Prepared:
    """One image ready for the model, and what was done to it."""

    pixels: np.ndarray  # (28, 28) uint8, light garment on dark background
    inverted: bool
    original_size: tuple[int, int]  # (width, height)
    original_format: str | None


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode bytes into a fully loaded Pillow image, refusing anything that is not a sound image within limits."""
    if not data:
        raise ImageError("empty file: no image bytes received")
    # Pillow's own guard (a warning above MAX_IMAGE_PIXELS, an error above twice that) is turned into an error at
    # our limit; the explicit size check below runs before any pixel is decoded.
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width < 1 or height < 1:
                raise ImageError(f"image has no pixels ({width}x{height})")
            if width * height > max_pixels:
                raise ImageTooLarge(
                    f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
                    " (possible decompression bomb)"
                )
            if image.format == "JPEG":
                # Decode big JPEGs at a reduced scale (1/2 to 1/8, still at least 256 px): far faster, same result
                # once resized to 28x28.
                image.draft("L", (256, 256))
            image.load()  # decodes now, so a truncated file fails here rather than later
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageTooLarge(f"image too large to decode safely: {err}") from None
    except UnidentifiedImageError:
        raise ImageError("file is not an image Pillow can read (PNG, JPEG, GIF, BMP, TIFF, WebP, ...)") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, struct.error) as err:
        raise ImageError(f"image file is truncated or corrupt: {err}") from None
    return image


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W) uint8 grayscale; transparency composited onto white, EXIF rotation applied."""
    # A broken EXIF block is no reason to refuse the picture itself.
    with contextlib.suppress(Exception):
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # High bit-depth grayscale: stretch its actual range onto 0-255.
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        return scaled.round().astype(np.uint8)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        image = image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.uint8)


def border_mean(gray: np.ndarray) -> float:
    """Mean brightness of the outermost ring of pixels, 1/14 of the shorter side thick (at least 1 pixel)."""
    h, w = gray.shape
    t = max(1, min(h, w) // 14)
    if 2 * t >= min(h, w):
        return float(gray.mean())
    ring = np.concatenate([gray[:t].ravel(), gray[-t:].ravel(), gray[t:-t, :t].ravel(), gray[t:-t, -t:].ravel()])
    return float(ring.mean())


def fit_to_28(gray: np.ndarray) -> np.ndarray:
    """Trim to the garment, pad to a centred square with the background colour, resize to 28x28."""
    background = int(np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])))
    mask = gray.astype(np.int16) > background + TRIM_THRESHOLD
    if mask.any():
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        gray = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = gray.shape
    side = max(h, w)
    square = np.full((side, side), background, dtype=np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = gray
    resized = Image.fromarray(square).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)


def prepare_image(data: bytes, max_pixels: int) -> Prepared:
    """Uploaded bytes -> a 28x28 uint8 Fashion-MNIST-style image (see the module docstring for the rule)."""
    image = decode_image(data, max_pixels)
    size, fmt = image.size, image.format
    try:
        gray = to_grayscale(image)
    except (OSError, ValueError) as err:
        raise ImageError(f"cannot convert image of mode {image.mode!r} to grayscale: {err}") from None
    inverted = border_mean(gray) > INVERT_THRESHOLD
    if inverted:
        gray = 255 - gray
    if gray.shape != (IMAGE_SIZE, IMAGE_SIZE):
        gray = fit_to_28(gray)
    return Prepared(pixels=np.ascontiguousarray(gray), inverted=inverted, original_size=size, original_format=fmt)


def pixels_from_values(values: list, index: int) -> np.ndarray:
    """One JSON image (28 rows of 28 values, or 784 values; 0-255) -> (28, 28) uint8. Raises ImageError."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError):
        raise ImageError(
            f"images[{index}]: not a rectangular array of numbers; send 28 rows of 28 values or 784 values"
        ) from None
    if array.dtype.kind not in "iuf":
        raise ImageError(f"images[{index}]: pixel values must be numbers 0-255, not {_kind(array)}")
    array = array.astype(np.float64)
    if array.shape == (IMAGE_SIZE * IMAGE_SIZE,):
        array = array.reshape(IMAGE_SIZE, IMAGE_SIZE)
    if array.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise ImageError(f"images[{index}]: shape {list(array.shape)}, expected [28, 28] or [784]")
    if not np.isfinite(array).all():
        raise ImageError(f"images[{index}]: contains NaN or infinite values")
    if array.min() < 0 or array.max() > 255:
        raise ImageError(f"images[{index}]: values must lie in 0-255, found {array.min():g} to {array.max():g}")
    return array.round().astype(np.uint8)


def _kind(array: np.ndarray) -> str:
    return {"b": "booleans", "U": "strings", "S": "strings", "O": "nested lists, mixed types or huge numbers"}.get(
        array.dtype.kind, str(array.dtype)
    )
