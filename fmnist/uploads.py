"""Uploads as the outside world sends them: image bytes of any format, mode and size, or raw pixel values as JSON.

`decode_image` refuses anything that is not a sound image within the pixel limit (truncated files, foreign formats,
decompression bombs) with an `ImageError` whose message names the problem; `grayscale_array` turns any Pillow mode
into 8-bit grayscale (transparency composited onto white, EXIF rotation applied); `pixels_from_values` checks raw
28x28 values. What happens next, the normalisation to Fashion-MNIST's form, is `fmnist.imaging`.
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .data import IMAGE_SIZE


class ImageError(ValueError):
    """An upload that cannot be turned into a model input; the message says why, for the client."""


class ImageTooLarge(ImageError):
    """The decoded image would exceed the pixel limit (a decompression bomb, or just an enormous picture)."""


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


def grayscale_array(image: Image.Image) -> np.ndarray:
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
    if image.mode != "L":
        image = image.convert("L")
    return np.asarray(image, dtype=np.uint8)


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
