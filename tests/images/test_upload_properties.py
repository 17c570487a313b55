"""Property tests of the upload path: whatever bytes arrive, the service's path (`open_upload`, then
`prepare_opened`, at the service's default pixel limit) gives a (28, 28) uint8 model input or an `ImageError` whose
message names the problem; never another exception (the service's 500).

Inputs: arbitrary bytes, and small valid files of every allowed format made from real pictures (a Fashion-MNIST
training image, a phone photograph of the real-photo set's fit split), mutated as damaged and hostile uploads are:
bytes flipped, the file cut short, one format's header spliced onto another file's body, a valid header followed by
garbage. `benchmarks/fuzz_uploads.py` searches the same space with coverage guidance; these are the cheap invariants.
"""

from __future__ import annotations

import io
import re
import zlib
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fmnist.core.data import load_dataset
from fmnist.core.real_photos import load_real_photos
from fmnist.images.normalise import WORK_SIZE, prepare_opened
from fmnist.images.uploads import ImageError, open_upload
from serving.settings import Settings

LIMIT = Settings.model_fields["max_image_pixels"].default
# What an `ImageError`'s message says the problem is (fmnist/images/uploads.py's messages): an error that says none
# of these leaves the client guessing.
PROBLEM = re.compile(
    r"empty file|not accepted|no pixels|over the limit|too large|not an image|truncated or corrupt|longer than"
)
# Modest: an example decodes and normalises a small image in a few milliseconds, so a test takes a few seconds.
CHEAP = settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
# Pillow warns about the damaged files these tests make (corrupt EXIF, tags past the end): expected, and not errors.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")


def service_path(data: bytes) -> np.ndarray:
    """What `serving.routes.predict` does with an upload's bytes: the header checked, then decoded and normalised."""
    return prepare_opened(open_upload(data, LIMIT, WORK_SIZE)).pixels


def assert_handled(data: bytes) -> None:
    """A (28, 28) uint8 model input, or an `ImageError` naming the problem; any other exception propagates."""
    try:
        pixels = service_path(data)
    except ImageError as err:
        assert PROBLEM.search(str(err)), f"{type(err).__name__} that names no problem: {str(err)!r}"
        return
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8, (pixels.shape, pixels.dtype)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@cache
def valid_files() -> dict[str, bytes]:
    """Small real pictures as files of every allowed format, in the modes users send: the mutations' starting points."""
    garment = Image.fromarray(load_dataset(download=False).train_images[0])  # (28, 28) grey, a training image
    photo_file = load_real_photos("fit")[0].data
    photo = Image.open(io.BytesIO(photo_file)).convert("RGB")
    photo.thumbnail((48, 48))
    rgba = photo.copy()
    rgba.putalpha(garment.resize(photo.size))
    sixteen = Image.fromarray(np.asarray(garment, dtype=np.uint16) * 257)
    return {
        "png-L": _encode(garment, "PNG"),
        "png-RGBA": _encode(rgba, "PNG"),
        "png-P": _encode(photo.convert("P"), "PNG", transparency=0),
        "png-16bit": _encode(sixteen, "PNG"),
        "jpeg-baseline": _encode(photo, "JPEG", quality=85),
        "jpeg-progressive": _encode(photo, "JPEG", quality=85, progressive=True),
        "jpeg-photo-file": photo_file,
        "webp": _encode(photo, "WEBP", quality=80),
        "webp-lossless-RGBA": _encode(rgba, "WEBP", lossless=True),
        "gif": _encode(photo.convert("P"), "GIF"),
        "bmp": _encode(garment, "BMP"),
        "bmp-RGB": _encode(photo, "BMP"),
        "tiff-lzw": _encode(photo, "TIFF", compression="tiff_lzw"),
        "tiff-16bit": _encode(sixteen, "TIFF"),
    }


def with_png_checksums(data: bytes) -> bytes:
    """A PNG's chunks with their CRCs recomputed, so damage inside a chunk reaches the header parser and the decoder
    instead of failing the checksum; other files unchanged."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, position = bytearray(data), 8
    while position + 12 <= len(out):
        end = position + 8 + int.from_bytes(out[position : position + 4], "big")  # length, type, then the data
        if end + 4 > len(out):
            break
        out[end : end + 4] = zlib.crc32(out[position + 4 : end]).to_bytes(4, "big")
        position = end + 4
    return bytes(out)


@st.composite
def valid_file(draw: st.DrawFn) -> bytes:
    files = valid_files()
    return files[draw(st.sampled_from(sorted(files)))]


def test_the_starting_points_are_sound_files_of_every_allowed_format_the_path_accepts():
    files = valid_files()
    formats = {Image.open(io.BytesIO(data)).format for data in files.values()}
    assert formats == {"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"}
    for name, data in files.items():
        assert service_path(data).shape == (28, 28), name


@CHEAP
@given(st.binary(max_size=4096))
def test_any_bytes_give_a_model_input_or_a_named_image_error(data):
    assert_handled(data)


@CHEAP
@given(
    valid_file(), st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=8)
)
def test_a_file_with_flipped_bytes_gives_a_model_input_or_a_named_image_error(data, flips):
    damaged = bytearray(data)
    for where, mask in flips:
        damaged[int(where * len(damaged))] ^= mask
    assert_handled(bytes(damaged))
    assert_handled(with_png_checksums(bytes(damaged)))


@CHEAP
@given(valid_file(), st.floats(0, 1, exclude_max=True))
def test_a_file_cut_short_gives_a_model_input_or_a_named_image_error(data, kept):
    assert_handled(data[: int(kept * len(data))])


@CHEAP
@given(valid_file(), valid_file(), st.integers(1, 256), st.floats(0, 1, exclude_max=True))
def test_a_header_spliced_onto_another_files_body_gives_a_model_input_or_a_named_image_error(head, body, cut, start):
    """The first `cut` bytes of one file (its signature and header, often of another format) on the rest of another:
    headers that promise what the data does not hold."""
    assert_handled(head[:cut] + body[int(start * len(body)) :])


@CHEAP
@given(valid_file(), st.integers(1, 512), st.binary(min_size=1, max_size=1024))
def test_a_valid_header_followed_by_garbage_gives_a_model_input_or_a_named_image_error(data, cut, garbage):
    assert_handled(data[:cut] + garbage)
