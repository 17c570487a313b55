"""Uploads: formats, modes, sizes, transparency, the decompression-bomb guard and raw pixel values, through
`fmnist.imaging.prepare_upload`, the path every upload of the service takes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fmnist.imaging import prepare_upload as prepare_image
from fmnist.uploads import ImageError, ImageTooLarge, pixels_from_values
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
