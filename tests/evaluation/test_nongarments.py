"""Synthetic non-garments: deterministic under a seed, every kind present, valid uint8 images, PNG uploads."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fmnist.evaluation.nongarments import NONGARMENT_KINDS, encode_png, synthetic_nongarments


@pytest.fixture(scope="module")
def images() -> list[tuple[str, np.ndarray]]:
    return synthetic_nongarments(per_kind=12, seed=7)


def test_same_seed_same_images_and_other_seed_other_images(images):
    again = synthetic_nongarments(per_kind=12, seed=7)
    assert [k for k, _ in again] == [k for k, _ in images]
    assert all(a.shape == b.shape and np.array_equal(a, b) for (_, a), (_, b) in zip(images, again, strict=True))
    other = synthetic_nongarments(per_kind=12, seed=8)
    differing = sum(
        a.shape != b.shape or not np.array_equal(a, b) for (_, a), (_, b) in zip(images, other, strict=True)
    )
    assert differing > len(images) // 2  # a few blank frames may coincide


def test_first_images_of_a_kind_do_not_depend_on_per_kind(images):
    fewer = synthetic_nongarments(per_kind=5, seed=7)
    for kind in NONGARMENT_KINDS:
        few = [a for k, a in fewer if k == kind]
        many = [a for k, a in images if k == kind][:5]
        assert all(np.array_equal(a, b) for a, b in zip(few, many, strict=True))


def test_every_kind_in_order_with_per_kind_images(images):
    kinds = [k for k, _ in images]
    assert kinds == [k for k in NONGARMENT_KINDS for _ in range(12)]
    assert set(NONGARMENT_KINDS) >= {
        "uniform_noise",
        "gaussian_noise",
        "blank",
        "checkerboard",
        "stripes",
        "text",
        "shapes",
    }
    assert synthetic_nongarments(per_kind=0, seed=0) == []


def test_valid_uint8_grayscale_or_rgb_of_varied_sizes(images):
    for kind, array in images:
        assert array.dtype == np.uint8, kind
        assert array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3), (kind, array.shape)
        assert array.flags.c_contiguous
        assert min(array.shape[:2]) >= 8
    sides = [a.shape[:2] for _, a in images]
    small = sum(s == (28, 28) for s in sides)
    assert 0 < small < len(images) // 2  # some at Fashion-MNIST's size, most near `size`
    large = [s for s in sides if s != (28, 28)]
    assert all(98 <= side <= 126 for s in large for side in s)  # 112 give or take an eighth
    assert any(a.ndim == 3 for _, a in images) and any(a.ndim == 2 for _, a in images)


def test_size_is_respected():
    for _, array in synthetic_nongarments(per_kind=4, seed=1, size=64):
        assert array.shape[:2] == (28, 28) or all(56 <= side <= 72 for side in array.shape[:2])


def test_kinds_look_like_what_they_claim(images):
    by_kind: dict[str, list[np.ndarray]] = {}
    for kind, array in images:
        by_kind.setdefault(kind, []).append(array)
    # Blank frames are flat; white, black and grey all appear.
    assert all(
        np.unique(a.reshape(-1, a.shape[2]) if a.ndim == 3 else a.ravel(), axis=0).shape[0] == 1
        for a in by_kind["blank"]
    )
    flat_values = {int(a.ravel()[0]) for a in by_kind["blank"] if a.ndim == 2}
    assert {0, 255} <= flat_values and any(0 < v < 255 for v in flat_values)
    # Noise has many distinct values; patterns have exactly two colours; text and shapes at least two.
    assert all(len(np.unique(a)) > 50 for a in by_kind["uniform_noise"] + by_kind["gaussian_noise"])
    for kind in ("checkerboard", "stripes"):
        assert all(
            len(np.unique(a.reshape(-1, a.shape[-1]) if a.ndim == 3 else a.ravel(), axis=0)) == 2 for a in by_kind[kind]
        )
    assert all(len(np.unique(a)) >= 2 for a in by_kind["text"] + by_kind["shapes"])
    # Text comes both dark on light and light on dark.
    backgrounds = [int(np.median(np.concatenate([a[0], a[-1]]))) for a in by_kind["text"]]
    assert min(backgrounds) < 64 and max(backgrounds) > 191


def test_encode_png_round_trips(images):
    for _, array in images[::5]:
        decoded = np.asarray(Image.open(io.BytesIO(encode_png(array))))
        assert np.array_equal(decoded, array)
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 2), np.uint8))


def test_real_photographs_and_digits_ship_offline_and_split_into_disjoint_parts():
    """The sample photographs come from installed wheels (no network); report and development parts never share a
    photograph, a face or a digit, and both are the same on every call."""
    from fmnist.evaluation.real_nongarments import handwritten_digits, real_photographs

    report, dev = real_photographs("report", seed=0), real_photographs("dev", seed=0)
    assert real_photographs("report", seed=0) == report
    names = {n for n, _ in report if n != "face"}, {n for n, _ in dev if n != "face"}
    assert len(names[0]) >= 8 and len(names[1]) >= 8 and not names[0] & names[1]
    assert not {d for _, d in report} & {d for _, d in dev}  # no crop, face or photograph in both
    assert sum(n == "face" for n, _ in report) == 100
    for _, data in report[:5] + report[-3:]:
        image = Image.open(io.BytesIO(data))
        assert image.format == "PNG" and max(image.size) <= 224

    digits = handwritten_digits("report", count=50)
    assert len(digits) == 50 and not {d for _, d in digits} & {d for _, d in handwritten_digits("dev", count=50)}
    pixels = np.asarray(Image.open(io.BytesIO(digits[0][1])))
    assert pixels.shape == (28, 28) and pixels[:4].max() == 0 and pixels.max() > 200  # light strokes on black
