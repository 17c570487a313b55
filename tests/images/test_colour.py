"""The normaliser finds a garment by its colour where its grey matches the backdrop's."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from fmnist.images.normalise import normalize_photo, prepare_upload


def _png(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG")
    return out.getvalue()


def _isoluminant_shirt(size: int = 224, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An orange T-shirt shape on a pink wall of the same grey level (within 1 grey level), with sensor noise; and
    the shape's mask."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    body = (abs(x - size / 2) < size * 0.2) & (y > size * 0.25) & (y < size * 0.85)
    sleeves = (abs(x - size / 2) < size * 0.36) & (y > size * 0.25) & (y < size * 0.42)
    mask = body | sleeves
    wall = np.array([236.0, 150.0, 170.0])  # pink
    shirt = np.array([250.0, 145.0, 60.0])  # orange
    gray = lambda c: 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]  # noqa: E731 - Pillow's L conversion
    shirt *= gray(wall) / gray(shirt)  # the same grey level
    image = np.where(mask[..., None], shirt, wall) + rng.normal(0, 2.0, (size, size, 3))
    return np.clip(image, 0, 255).round().astype(np.uint8), mask


def test_a_garment_the_backdrops_grey_is_found_by_its_colour():
    rgb, mask = _isoluminant_shirt()
    grey_only = normalize_photo(np.asarray(Image.fromarray(rgb).convert("L")))
    assert grey_only.empty or grey_only.pixels.astype(bool).mean() < 0.05  # grey alone sees (almost) nothing
    prepared = prepare_upload(_png(rgb), 10**8)
    assert not prepared.empty
    # The garment fills the frame as Fashion-MNIST's do: its box is the long side, and its silhouette is there.
    seen = prepared.pixels > 64
    rows, cols = np.flatnonzero(seen.any(1)), np.flatnonzero(seen.any(0))
    assert rows[-1] - rows[0] >= 20 and cols[-1] - cols[0] >= 20
    expected = np.asarray(Image.fromarray(mask[56:190, 31:193].astype(np.uint8) * 255).resize((28, 24)))
    assert seen[2:26].mean() > 0.3 and (seen[2:26] == (expected > 127)).mean() > 0.8


def test_a_grey_picture_is_normalised_as_before():
    """Colour adds nothing when the channels agree: the grey path is the same function."""
    rgb, _ = _isoluminant_shirt()
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    as_rgb = np.repeat(gray[..., None], 3, axis=2)
    assert np.array_equal(prepare_upload(_png(as_rgb), 10**8).pixels, normalize_photo(gray).pixels)
