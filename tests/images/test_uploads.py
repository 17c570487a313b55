"""Uploads: formats, modes, sizes, transparency, the decompression-bomb guard and raw pixel values, through
`fmnist.images.normalise.prepare_upload`, the path every upload of the service takes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from benchmarks.hostile_files import repeated_scan_jpeg
from fmnist.images.normalise import prepare_upload as prepare_image
from fmnist.images.uploads import (
    MAX_JPEG_SCANS,
    DecodeTooSlow,
    ImageError,
    ImageTooLarge,
    decode_pixels,
    jpeg_scans,
    open_upload,
    pixels_from_values,
    time_limit,
)
from tests.support.images import encode, png_bomb, real_test_images

LIMIT = 4_000_000


def test_a_28x28_fashion_mnist_png_passes_through_unchanged():
    images, _ = real_test_images()
    for pixels in images[:20]:
        prepared = prepare_image(encode(pixels), LIMIT)
        assert not prepared.inverted
        np.testing.assert_array_equal(prepared.pixels, pixels)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_a_product_photo_dark_on_light_is_inverted_and_fitted_back_to_28x28(fmt):
    """The test image, inverted to dark-on-white and enlarged into a wide white canvas, comes back close to itself."""
    images, _ = real_test_images()
    original = images[1]  # a pullover: touches neither the top nor the bottom edge
    big = Image.fromarray(255 - original).resize((280, 280), Image.Resampling.BICUBIC).convert("RGB")
    canvas = Image.new("RGB", (500, 340), "white")
    canvas.paste(big, (110, 30))
    prepared = prepare_image(encode(canvas, fmt), LIMIT)
    assert prepared.inverted
    assert prepared.original_size == (500, 340)
    assert prepared.pixels.shape == (28, 28) and prepared.pixels.dtype == np.uint8
    # Trimmed to the garment and centred as Fashion-MNIST was; resampling (a 10x bicubic enlargement, then an area
    # reduction) blurs the edges a little, and the contrast stretch lifts the garment to the training range.
    assert np.abs(prepared.pixels.astype(int) - original.astype(int)).mean() < 26
    assert np.concatenate([prepared.pixels[0], prepared.pixels[-1]]).mean() < 60


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"])
def test_every_image_mode_becomes_28x28_grayscale(mode):
    images, _ = real_test_images()
    source = Image.fromarray(images[0]).resize((56, 56))
    if mode in ("I;16", "I", "F"):
        image = Image.fromarray(
            (np.asarray(source, dtype=np.float64) * 200).astype(
                {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
            )
        )
    else:
        image = source.convert(mode)
    fmt = "TIFF" if mode in ("I", "F", "CMYK") else "PNG"
    prepared = prepare_image(encode(image, fmt), LIMIT)
    assert prepared.pixels.shape == (28, 28)
    assert not prepared.inverted  # still a light garment on black
    assert prepared.pixels.max() > 100


def test_transparent_cut_out_counts_as_a_light_background():
    garment = np.zeros((100, 100, 4), dtype=np.uint8)
    garment[20:80, 30:70] = (40, 40, 40, 255)  # a dark opaque object, transparent around it
    prepared = prepare_image(encode(garment), LIMIT)
    assert prepared.inverted
    assert prepared.pixels[14, 14] > 150 and prepared.pixels[0, 0] < 30


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", ImageError, "empty"),
        (b"certainly not an image", ImageError, "not an image"),
        (None, ImageError, "truncated"),
        (png_bomb(), ImageTooLarge, "decompression bomb"),
    ],
)
def test_bad_uploads_raise_a_clear_error(data, error, message):
    if data is None:
        images, _ = real_test_images()
        whole = encode(Image.fromarray(images[0]).resize((300, 300)))
        data = whole[: len(whole) // 2]
    with pytest.raises(error, match=message):
        prepare_image(data, LIMIT)


def test_pillow_bomb_limit_holds_even_for_formats_without_an_explicit_check():
    image = encode(np.zeros((3000, 3000), dtype=np.uint8))  # 9 M pixels, a 30 kB file
    with pytest.raises(ImageTooLarge):
        prepare_image(image, 1_000_000)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([1, 2, 3], "shape"),
        ([[0] * 28] * 27, "shape"),
        ([[0] * 28] * 27 + [[0] * 27], "rectangular"),
        ([float("nan")] * 784, "NaN"),
        ([float("inf")] * 784, "NaN or infinite"),
        ([300] * 784, "0-255"),
        ([-1] * 784, "0-255"),
        (["7"] * 784, "strings"),
        ([True] * 784, "booleans"),
    ],
)
def test_bad_pixel_arrays_are_named(values, message):
    with pytest.raises(ImageError, match=message):
        pixels_from_values(values, 3)


def test_pixel_arrays_in_both_shapes():
    images, _ = real_test_images()
    np.testing.assert_array_equal(pixels_from_values(images[0].tolist(), 0), images[0])
    np.testing.assert_array_equal(pixels_from_values(images[0].ravel().tolist(), 0), images[0])


# --- decoding at reduced size -----------------------------------------------------------------------------------------


def full_size_input(data: bytes) -> np.ndarray:
    """The model input as full-size decoding gives it: decoded and converted at the claimed size (grey, and the colour
    the garment's outline is found in), then normalised."""
    from PIL import ImageOps

    from fmnist.images.normalise import normalize_photo
    from fmnist.images.uploads import _colour, decode_image, grayscale_array

    image = decode_image(data, 10**8)
    return normalize_photo(grayscale_array(image), _colour(ImageOps.exif_transpose(image))).pixels


def test_ordinary_uploads_decode_exactly_as_at_full_size():
    """A 28x28 scan and a 224 px JPEG photo are small enough never to be reduced: the same model input, bit for bit."""
    images, _ = real_test_images()
    for pixels in images[:10]:
        photo = Image.fromarray(255 - pixels).resize((224, 224), Image.Resampling.BICUBIC).convert("RGB")
        for data in (encode(pixels), encode(photo, "JPEG", quality=90)):
            np.testing.assert_array_equal(prepare_image(data, LIMIT).pixels, full_size_input(data))


def test_reduced_decoding_gives_the_full_size_model_input_within_a_bound():
    """A large PNG is shrunk by an integer factor as soon as it is decoded, the normalisation doing the last step.
    The bound: 3 grey levels per pixel on average over these ten garments, 12 for any one; the test prints each
    image's difference (run with -s): 0.4 to 9.1, 2.0 on average. Either path is a resampling of the garment, and
    the normalisation's trimming amplifies sub-pixel differences at the garment's edge."""
    images, _ = real_test_images()
    differences = []
    for pixels in images[:10]:
        photo = Image.fromarray(255 - pixels).resize((1500, 1500), Image.Resampling.BICUBIC).convert("RGB")
        canvas = Image.new("RGB", (2250, 1500), "white")
        canvas.paste(photo, (375, 0))
        data = encode(canvas)
        reduced = prepare_image(data, LIMIT * 10).pixels.astype(int)
        differences.append(np.abs(reduced - full_size_input(data).astype(int)).mean())
    print("mean |reduced - full| per image:", np.round(differences, 2))
    assert np.mean(differences) < 3 and max(differences) < 12, differences


def test_sixteen_bit_images_are_averaged_in_strips_without_a_float64_copy():
    """A 16-bit 4000x4000 image (a full float64 copy would be 128 MB) is converted with less than 24 MB of numpy
    memory at its peak, and its block means are exactly numpy's."""
    import tracemalloc

    from fmnist.images.uploads import _stretched_block_means

    rng = np.random.default_rng(0)
    values = rng.integers(0, 65535, (700, 1000), dtype=np.uint16)
    reduced = np.asarray(_stretched_block_means(Image.fromarray(values), 4)).astype(float)
    padded = np.pad(values.astype(float), ((0, 0), (0, 0)))
    means = padded.reshape(175, 4, 250, 4).mean(axis=(1, 3))
    expected = ((means - values.min()) * (255.0 / (int(values.max()) - int(values.min())))).round()
    np.testing.assert_array_equal(reduced, expected)

    big = encode(Image.new("I;16", (4000, 4000), 3000))
    tracemalloc.start()
    prepared = prepare_image(big, 10**8)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert prepared.pixels.shape == (28, 28) and prepared.original_size == (4000, 4000)
    assert peak < 24 * 2**20, peak / 2**20


def test_exif_rotation_survives_reduced_decoding():
    """A JPEG stored sideways with an EXIF orientation tag comes out upright, reduced or not."""
    images, _ = real_test_images()
    upright = Image.fromarray(255 - images[1]).resize((1200, 1200), Image.Resampling.BICUBIC).convert("RGB")
    canvas = Image.new("RGB", (1800, 1200), "white")
    canvas.paste(upright, (300, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 270 degrees to display: stored turned by 90
    sideways = canvas.transpose(Image.Transpose.ROTATE_90)
    stored = encode(sideways, "PNG", exif=exif.tobytes())
    reference = prepare_image(encode(canvas, "PNG"), LIMIT).pixels.astype(int)
    assert np.abs(prepare_image(stored, LIMIT).pixels.astype(int) - reference).mean() < 3


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("ICO", "ICO files are not accepted"),
        ("PDF", "PDF files are not accepted"),
        ("PPM", "not an image in an accepted format"),
        ("TGA", "not an image in an accepted format"),
        ("PCX", "not an image in an accepted format"),
    ],
)
def test_formats_outside_the_allow_list_are_refused_before_any_opener_runs(fmt, message):
    """ICO above all: its opener decodes the embedded image while opening, before a size could be checked."""
    data = encode(Image.new("RGB", (64, 48), "white"), fmt)
    with pytest.raises(ImageError, match=message):
        open_upload(data, LIMIT)


def test_an_ico_claiming_a_small_icon_but_holding_a_huge_image_is_refused():
    """A 16x16 ICO header over a 6000x6000 PNG payload (what Pillow's ICO opener would decode while opening): refused
    by its first bytes, with the format named."""
    payload = encode(Image.new("L", (6000, 6000)), "PNG")
    header = b"\x00\x00\x01\x00\x01\x00" + bytes([16, 16, 0, 0, 1, 0, 32, 0])
    entry = len(payload).to_bytes(4, "little") + (22).to_bytes(4, "little")
    with pytest.raises(ImageError, match="ICO files are not accepted"):
        open_upload(header + entry + payload, LIMIT)


# --- JPEGs of many scans, and the time limit of a decode --------------------------------------------------------------


def _ramp(side: int, mode: str) -> Image.Image:
    ramp = np.tile(np.linspace(0, 255, side, dtype=np.uint8), (side, 1))  # (side, side)
    return Image.fromarray(ramp).convert(mode)


@pytest.mark.parametrize(("mode", "progressive", "scans"), [("RGB", False, 1), ("RGB", True, 10), ("L", True, 6)])
def test_a_jpegs_scans_are_counted_from_its_markers(mode, progressive, scans):
    """libjpeg's own scripts: one scan for a baseline JPEG, 10 for a colour progressive one, 6 for a grey one; an
    EXIF thumbnail (a JPEG inside the header) adds none."""
    thumbnail = encode(_ramp(64, mode), "JPEG", progressive=True)
    exif = Image.Exif()
    exif[0x010E] = "a description"  # an EXIF block ahead of the picture, holding a JPEG's bytes as text
    exif[0x9286] = thumbnail
    data = encode(_ramp(300, mode), "JPEG", progressive=progressive, exif=exif.tobytes())
    assert data.count(b"\xff\xda") > scans  # the thumbnail's start-of-scan markers are in the file
    assert jpeg_scans(data) == scans


def test_a_progressive_jpeg_costs_its_claimed_pixels_and_a_baseline_one_its_reduced_ones():
    baseline = open_upload(encode(_ramp(3000, "RGB"), "JPEG"), 40_000_000, 224)
    progressive = open_upload(encode(_ramp(3000, "RGB"), "JPEG", progressive=True), 40_000_000, 224)
    assert baseline.scans == 1 and baseline.decode_pixels < 3000 * 3000 // 4  # decoded at a reduced size
    assert progressive.scans == 10 and progressive.decode_pixels == 3000 * 3000  # every coefficient is held


def test_a_jpeg_repeating_its_scans_past_the_limit_is_refused_before_decoding():
    at_limit = open_upload(repeated_scan_jpeg(600, MAX_JPEG_SCANS), LIMIT, 224)
    assert at_limit.scans == MAX_JPEG_SCANS and decode_pixels(at_limit, 224)[0].size > 0
    with pytest.raises(ImageError, match=f"JPEG in {MAX_JPEG_SCANS + 1} scans, over the limit of {MAX_JPEG_SCANS}"):
        open_upload(repeated_scan_jpeg(600, MAX_JPEG_SCANS + 1), LIMIT, 224)
    with pytest.raises(ImageError, match="JPEG in 5000 scans"):
        open_upload(repeated_scan_jpeg(600, 5000), LIMIT, 224)


def test_a_decode_past_its_time_limit_stops_with_an_upload_error_naming_the_limit():
    upload = open_upload(repeated_scan_jpeg(3000, MAX_JPEG_SCANS), 40_000_000, 224)
    with time_limit(0.001), pytest.raises(DecodeTooSlow, match=r"longer than the limit of 0.001s \(stopped while"):
        decode_pixels(upload, 224)
    with time_limit(60):  # the same file within a generous limit, and outside any limit, decodes
        assert decode_pixels(open_upload(repeated_scan_jpeg(600, 12), LIMIT, 224), 224)[0].size > 0
    assert decode_pixels(open_upload(repeated_scan_jpeg(600, 12), LIMIT, 224), 224)[0].size > 0
