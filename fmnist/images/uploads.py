"""Uploads as the outside world sends them: image bytes of any format, mode and size, or raw pixel values as JSON.

`decode_image` refuses anything that is not a sound image within the pixel limit (truncated files, foreign formats,
decompression bombs) with an `ImageError` whose message names the problem; `grayscale_array` turns any Pillow mode
into 8-bit grayscale (transparency composited onto white, EXIF rotation applied); `pixels_from_values` checks raw
28x28 values. What happens next, the normalisation to Fashion-MNIST's form, is `fmnist.images.normalise`.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import re
import struct
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from fmnist.core.data import IMAGE_SIZE


class ImageError(ValueError):
    """An upload that cannot be turned into a model input; the message says why, for the client."""


class ImageTooLarge(ImageError):
    """The decoded image would exceed the pixel limit (a decompression bomb, or just an enormous picture)."""


class DecodeTooSlow(ImageError):
    """Decoding ran past its time limit (`time_limit`): an image whose cost no header check foresaw."""


# The largest decoded image (width x height) accepted by default: the decompression-bomb guard. A full-resolution phone
# photo is 12-50 megapixels before its JPEG is drafted down; 40 million refuses a crafted claim of gigapixels long
# before any allocation. The service's setting (`FASHIONFLOW_MAX_IMAGE_PIXELS`), ScoreFlow's profile and training's
# real photos all start from this one value.
DEFAULT_MAX_PIXELS = 40_000_000
# JPEGs are decoded by the decoder itself at 1/2 to 1/8 scale (`Image.draft`) as long as both sides stay at least
# this long: far faster, and the same result once resized to 28x28.
JPEG_DRAFT_SIDE = 256
# Other formats are decoded in full, then shrunk at once by an integer factor (`Image.reduce`, a box filter in C) to a
# long side of at least this many times the working size the normalisation asks for; the last, finer step is the
# normalisation's own. Pillow's `reducing_gap` of 2 has the same meaning: at twice the target size, the two-step
# reduction is indistinguishable from a one-step one (tests/images/test_uploads.py states the bound).
REDUCING_GAP = 2
# High bit-depth images are averaged block by block through strips of at most this many values, so their
# conversion never holds more than one strip in float64 (8 MB), whatever the image's size.
STRIP_VALUES = 1 << 20
# The formats users send, and the only openers Pillow may run: PNG, JPEG (its opener also reads a phone's
# multi-picture JPEG, format "MPO"), WebP, GIF, BMP, TIFF. Everything else is refused before any opener runs: ICO's
# opener decodes the embedded image while opening, before any size check; PSD, EPS, PDF and the like are not photos
# of garments; HEIC is not readable here.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
# A JPEG in more than one scan (progressive, or sequential with a scan per component) makes libjpeg hold the whole
# picture's DCT coefficients, whatever the draft scale, and entropy-decode every scan: memory follows the claimed
# size, time the claimed size times the scans (a 36-megapixel progressive JPEG of 10 scans decodes in about ten times
# a baseline one's time; `benchmarks/serve_decode.py` prints both). libjpeg's default progressive script writes 10
# scans for a colour picture, 6 for a grey one; a file with more than this many is refused from its markers, before
# any is decoded, as a crafted one repeats scans to multiply the cost.
MAX_JPEG_SCANS = 32
# A marker inside a JPEG's entropy-coded data: 0xFF followed by neither a stuffed 0x00 nor a restart marker (RST0-7);
# fill bytes (more 0xFF) may precede it.
_JPEG_MARKER = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")
# The end of the current decode's time (`time.monotonic()`), set by `time_limit`; None: no limit.
_DEADLINE: contextvars.ContextVar[tuple[float, float] | None] = contextvars.ContextVar("decode_deadline", default=None)
# Modes with more than 8 bits per sample: their actual range is stretched onto 0-255.
HIGH_BIT_DEPTH = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# What a transposition by EXIF orientation tag value is.
ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class Upload:
    """An upload whose header has been read and checked, not yet decoded: what decoding it will cost is known."""

    image: Image.Image  # opened lazily; a JPEG already set to decode at its reduced (draft) size
    original_size: tuple[int, int]  # (width, height) the header claims
    format: str | None
    scans: int = 1  # a JPEG's scans (MAX_JPEG_SCANS); 1 for every other format

    @property
    def decode_pixels(self) -> int:
        """Pixels decoding will cost: the claimed size, or a single-scan JPEG's reduced one (a JPEG of several scans
        holds every coefficient of the claimed size, whatever its draft). Decoding time and memory grow with it, not
        with the file's size (a 48 kB PNG can claim 36 megapixels)."""
        width, height = self.original_size if self.scans > 1 else self.image.size
        return width * height


def open_upload(data: bytes, max_pixels: int, work_size: int | None = None) -> Upload:
    """Read the header of an uploaded image and check it, decoding no pixel; raises `ImageError` (`ImageTooLarge`
    over `max_pixels`). With `work_size`, a large JPEG is set to decode at a reduced size whose long side stays at
    least REDUCING_GAP x `work_size` (or both sides at least JPEG_DRAFT_SIDE, as without it)."""
    if not data:
        raise ImageError("empty file: no image bytes received")
    # Pillow's own guard (a warning above MAX_IMAGE_PIXELS, an error above twice that) is turned into an error at
    # our limit; the explicit size check below comes before any pixel is decoded.
    Image.MAX_IMAGE_PIXELS = max_pixels
    refused = _refused_format(data)
    if refused:
        raise ImageError(f"{refused} files are not accepted: send PNG, JPEG, WebP, GIF, BMP or TIFF")
    Image.init()  # registers every opener once, so each allowed format's is known by name
    with _decoding_errors():
        image = Image.open(_TimedBytes(data), formats=ALLOWED_FORMATS)
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageError(f"image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
                " (possible decompression bomb)"
            )
        scans = 1
        if image.format in ("JPEG", "MPO"):
            scans = jpeg_scans(data)
            if scans > MAX_JPEG_SCANS:
                raise ImageError(
                    f"JPEG in {scans} scans, over the limit of {MAX_JPEG_SCANS} (each scan is decoded over the whole"
                    " picture): save it as a baseline or standard progressive JPEG"
                )
            # Colour kept: the normaliser finds a garment by its colour where its grey matches the backdrop's.
            image.draft(None, _draft_request(width, height, work_size))
    return Upload(image, (width, height), image.format, scans)


def jpeg_scans(data: bytes) -> int:
    """The scans (start-of-scan segments) of a JPEG's first picture, counted from its markers without decoding:
    header segments are skipped by their lengths (an EXIF thumbnail's scans are not counted), entropy-coded data to
    the next marker. Stops at the end of the picture (a multi-picture file's later pictures are not decoded)."""
    scans, position, end = 0, 2, len(data)
    while position + 4 <= end and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xFF:  # a fill byte before a marker
            position += 1
            continue
        if marker == 0xD9:  # end of image
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # segments without a length
            position += 2
            continue
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xDA:
            scans += 1
            found = _JPEG_MARKER.search(data, position)
            if found is None:
                break
            position = found.end() - 2
    return scans


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Within this block (on this thread), a decode that runs past `seconds` stops at its next chunk of input or its
    next step, raising `DecodeTooSlow`; the limit a service sets on each decode it runs (`serving.decoding`)."""
    token = _DEADLINE.set(None if seconds is None else (time.monotonic() + seconds, seconds))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def check_time(step: str) -> None:
    """Raise `DecodeTooSlow` when the current decode's time limit (`time_limit`) has passed."""
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline[0]:
        raise DecodeTooSlow(f"decoding took longer than the limit of {deadline[1]:g}s (stopped while {step})")


class _TimedBytes(io.BytesIO):
    """The upload's bytes as Pillow reads them: each read checks the decode's time limit, so a decoder fed chunk by
    chunk (Pillow's `ImageFile.load` reads 64 KiB at a time) stops within a chunk's work of the limit."""

    def read(self, size: int | None = -1) -> bytes:
        check_time("reading the file")
        return super().read(size)


def _refused_format(data: bytes) -> str | None:
    """The name of a well-known image format that is refused, from its first bytes, for a clear error; None
    otherwise (Pillow then tries the accepted formats' openers only)."""
    head = data[:16]
    if head[:4] == b"\x00\x00\x01\x00" and len(head) >= 6 and head[4] | head[5]:  # reserved, type 1, image count
        return "ICO"
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "HEIC/AVIF"
    for magic, name in (
        (b"8BPS", "PSD"),
        (b"%PDF", "PDF"),
        (b"%!PS", "PostScript"),
        (b"\x00\x00\x00\x0cjP", "JPEG 2000"),
    ):
        if head.startswith(magic):
            return name
    return None


def _draft_request(width: int, height: int, work_size: int | None) -> tuple[int, int]:
    """The size to ask a JPEG's draft for: both sides at least JPEG_DRAFT_SIDE, unless the long side alone allows a
    smaller scale (a long, narrow image), which would otherwise be decoded in full."""
    by_short_side = min(width, height) // JPEG_DRAFT_SIDE
    by_long_side = max(width, height) // (REDUCING_GAP * work_size) if work_size else 0
    if by_long_side <= by_short_side:
        return JPEG_DRAFT_SIDE, JPEG_DRAFT_SIDE
    return -(-width // by_long_side), -(-height // by_long_side)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode bytes into a fully loaded Pillow image, refusing anything that is not a sound image within limits."""
    image = open_upload(data, max_pixels).image
    with _decoding_errors():
        image.load()  # decodes now, so a truncated file fails here rather than later
    return image


def decode_gray(upload: Upload, work_size: int) -> np.ndarray:
    """(H, W) uint8 grayscale of an opened upload, reduced as `decode_pixels` reduces it."""
    return decode_pixels(upload, work_size)[0]


def decode_pixels(upload: Upload, work_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode an opened upload into (H, W) uint8 grayscale, as `grayscale_array` would, and (H, W, 3) uint8 RGB for a
    colour image (None for a grey one), but shrunk by an integer factor
    as soon as it is decoded, so its long side is at least REDUCING_GAP x `work_size`: every later step (mode
    conversion, EXIF rotation, transparency, the normalisation) costs what the working size costs, not what the
    claimed size does. An image already that small comes out exactly as `grayscale_array` makes it.

    Memory: the decoded image (at most 4 bytes a pixel: RGBA, CMYK, 32-bit), plus as much again for a palette or
    exotic mode converted to RGB(A), or an RGBA image premultiplied, at full size; then only reduced copies. High
    bit-depth images are never copied whole into float64 (strips of STRIP_VALUES)."""
    image = upload.image
    with _decoding_errors():
        image.load()  # decodes now, so a truncated file fails here rather than later
    check_time("decoding")
    orientation = _orientation(image)
    factor = max(1, max(image.size) // (REDUCING_GAP * work_size))
    if image.mode in HIGH_BIT_DEPTH:
        image = _stretched_block_means(image, factor)
    else:
        image = _reduced(_reducible(image), factor)
    check_time("reducing")
    if orientation in ORIENTATIONS:
        image = image.transpose(ORIENTATIONS[orientation])
    return _gray(image), _colour(image)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 when absent or unreadable: a broken EXIF block is no reason to refuse the
    picture)."""
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:
        return 1


def _reducible(image: Image.Image) -> Image.Image:
    """`image` in a mode `Image.reduce` averages meaningfully: palette indices and bilevel pixels are not values to
    average, and CMYK, YCbCr and the like are converted to RGB exactly as `grayscale_array` converts them."""
    mode = image.mode
    if mode in ("P", "PA"):
        return image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
    if mode == "1":
        return image.convert("L")
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return image.convert("RGB")
    return image


def _reduced(image: Image.Image, factor: int) -> Image.Image:
    """`image` shrunk `factor` times by a box filter; with alpha, premultiplied (Pillow's `reduce` does so), so a
    transparent pixel's colour does not bleed into its neighbours."""
    return image if factor == 1 else image.reduce(factor)


def _stretched_block_means(image: Image.Image, factor: int) -> Image.Image:
    """A high bit-depth image -> mode L: means of `factor` x `factor` blocks (partial ones at the edges), its actual
    range stretched onto 0-255 (NaN and infinities count as 0). Strip by strip, so no float64 copy of the whole image
    exists; at `factor` 1 it is exactly `grayscale_array`'s stretch."""
    width, height = image.size
    rows = min(height, max(factor, STRIP_VALUES // width // factor * factor))  # multiples of the factor
    cols = min(width, max(factor, STRIP_VALUES // rows // factor * factor))
    low, high = np.inf, -np.inf
    means = []
    for top in range(0, height, rows):
        row = []
        for left in range(0, width, cols):
            tile = np.asarray(image.crop((left, top, min(width, left + cols), min(height, top + rows))))
            values = tile.astype(np.float64)  # (r, c)
            if tile.dtype.kind == "f":
                np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            low, high = min(low, float(values.min())), max(high, float(values.max()))
            row.append(_block_means(values, factor))
        means.append(np.concatenate(row, axis=1))
    block = np.concatenate(means)  # (ceil(H / factor), ceil(W / factor)) float64: small
    scaled = (block - low) * (255.0 / (high - low)) if high > low else np.zeros_like(block)
    return Image.fromarray(scaled.round().astype(np.uint8))


def _block_means(values: np.ndarray, factor: int) -> np.ndarray:
    """(r, w) -> means of its `factor` x `factor` blocks, (ceil(r / factor), ceil(w / factor)); edge blocks are
    averaged over the pixels they have."""
    if factor == 1:
        return values
    starts_r, starts_c = np.arange(0, values.shape[0], factor), np.arange(0, values.shape[1], factor)
    sums = np.add.reduceat(np.add.reduceat(values, starts_r, axis=0), starts_c, axis=1)
    counts_r = np.minimum(factor, values.shape[0] - starts_r)[:, None]
    counts_c = np.minimum(factor, values.shape[1] - starts_c)[None, :]
    return sums / (counts_r * counts_c)


@contextlib.contextmanager
def _decoding_errors() -> Iterator[None]:
    """Turn whatever Pillow raises on a bad file into an `ImageError` that names the problem."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageTooLarge(f"image too large to decode safely: {err}") from None
    except UnidentifiedImageError:
        raise ImageError("file is not an image in an accepted format (PNG, JPEG, WebP, GIF, BMP or TIFF)") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, struct.error) as err:
        raise ImageError(f"image file is truncated or corrupt: {err}") from None


def grayscale_array(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W) uint8 grayscale; transparency composited onto white, EXIF rotation applied."""
    # A broken EXIF block is no reason to refuse the picture itself.
    with contextlib.suppress(Exception):
        image = ImageOps.exif_transpose(image)
    if image.mode in HIGH_BIT_DEPTH:
        return np.asarray(_stretched_block_means(image, 1), dtype=np.uint8)
    return _gray(_reducible(image))


def _gray(image: Image.Image) -> np.ndarray:
    """An 8-bit image (L, LA, RGB, RGBA, ...) -> (H, W) uint8 grayscale, transparency composited onto white."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if image.mode != "L":
        image = image.convert("L")
    return np.asarray(image, dtype=np.uint8)


def _colour(image: Image.Image) -> np.ndarray | None:
    """A colour image -> (H, W, 3) uint8 RGB, transparency composited onto white as in `_gray`; None for grey modes
    (L, LA, I, F, 1) and for a colour image whose channels are all equal (nothing to add to the grey)."""
    if image.mode not in ("RGB", "RGBA", "RGBa"):
        return None
    if image.mode != "RGB":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    rgb = np.asarray(image, dtype=np.uint8)
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return None
    return rgb


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
