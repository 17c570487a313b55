"""The photo renderer makes product photos of real test images that do what each condition says; the table is right."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from fmnist.core.data import load_dataset
from fmnist.evaluation.photos import (
    PHOTO_CONDITIONS,
    PhotoCondition,
    PhotoResult,
    contact_sheet,
    photo_rng,
    photo_robustness,
    render_clean,
    render_photo,
    sample_indices,
    worst_realistic,
)

CONDITIONS = {c.name: c for c in PHOTO_CONDITIONS}
EXAMPLES = (0, 1, 2, 7, 13)  # real test images: ankle boot, pullover, trouser, shirt, dress


@pytest.fixture(scope="module")
def test_set():
    return load_dataset(download=False).test_split()


def photo(test_set, name: str, severity: float | None = None, index: int = 0, seed: int = 0) -> np.ndarray:
    """(224, 224, 3) uint8 of test image `index` under a condition (its realistic severity unless given)."""
    condition = CONDITIONS[name]
    if severity is None:
        severity = condition.severities[condition.realistic]
    data = render_photo(test_set[0][index], condition, severity, photo_rng(seed, index))
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def gray(rgb: np.ndarray) -> np.ndarray:
    """(H, W) float luminance (ITU-R 601, as Pillow's mode L)."""
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def border(image: np.ndarray, width: int = 6) -> np.ndarray:
    """The outer ring of an (H, W[, C]) image, flattened over the spatial axes."""
    parts = [image[:width], image[-width:], image[width:-width, :width], image[width:-width, -width:]]
    return np.concatenate([p.reshape(-1, *image.shape[2:]) for p in parts])


def garment_box(g: np.ndarray, margin: float = 40.0) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of pixels darker than the border median by `margin`."""
    mask = g < np.median(border(g)) - margin
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def best_centred_crop_correlation(negated: np.ndarray, original: np.ndarray) -> float:
    """Highest correlation between `original` and a centred square crop of `negated` box-resized to 28x28.

    The garment's side in the frame is drawn in 80-90% of 224, so every side in that range is tried.
    """
    size = negated.shape[0]
    best = -1.0
    for side in range(int(0.78 * size), int(0.92 * size) + 1):
        lo = (size - side) / 2
        crop = Image.fromarray(negated).resize((28, 28), Image.Resampling.BOX, box=(lo, lo, lo + side, lo + side))
        best = max(best, float(np.corrcoef(np.asarray(crop).ravel(), original.ravel())[0, 1]))
    return best


def test_conditions_are_well_formed():
    names = [c.name for c in PHOTO_CONDITIONS]
    assert names == [
        "white_backdrop",
        "grey_backdrop",
        "coloured_backdrop",
        "underexposed",
        "uneven_light",
        "tinted_light",
        "noise_jpeg",
        "rotation",
        "small_offcentre",
        "blur",
    ]
    for c in PHOTO_CONDITIONS:
        assert c.description and len(c.severities) >= 2 and 0 <= c.realistic < len(c.severities), c.name


@pytest.mark.parametrize("condition", PHOTO_CONDITIONS, ids=lambda c: c.name)
def test_every_severity_renders_a_224_rgb_jpeg(test_set, condition):
    for severity in condition.severities:
        data = render_photo(test_set[0][1], condition, severity, photo_rng(0, 1))
        image = Image.open(io.BytesIO(data))
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (224, 224)), (condition.name, severity)
    small = render_photo(test_set[0][1], condition, condition.severities[-1], photo_rng(0, 1), size=96)
    assert Image.open(io.BytesIO(small)).size == (96, 96)


def test_deterministic_per_seed_and_index(test_set):
    x = test_set[0][7]
    for c in PHOTO_CONDITIONS:
        sev = c.severities[c.realistic]
        same = render_photo(x, c, sev, photo_rng(3, 7)) == render_photo(x, c, sev, photo_rng(3, 7))
        assert same, c.name
        assert render_photo(x, c, sev, photo_rng(3, 7)) != render_photo(x, c, sev, photo_rng(4, 7)), c.name
        assert render_photo(x, c, sev, photo_rng(3, 7)) != render_photo(x, c, sev, photo_rng(3, 8)), c.name


def test_white_backdrop_photo_is_the_negated_fashion_mnist_image(test_set):
    """The renderer inverts Fashion-MNIST's making: negate the photo, frame it as they did, and the image is back."""
    for i in EXAMPLES:
        negated = 255.0 - gray(photo(test_set, "white_backdrop", 255.0, index=i)).astype(np.float32)  # (224, 224)
        assert best_centred_crop_correlation(negated, test_set[0][i].astype(np.float32)) > 0.97, i
    # The backdrop is the severity's level and the garment is darker than it.
    g = gray(photo(test_set, "white_backdrop", 240.0))
    assert abs(border(g).mean() - 240) < 3 and g.min() < 100


def test_grey_backdrop_border_is_the_grey_level(test_set):
    for level in CONDITIONS["grey_backdrop"].severities:
        assert abs(gray(border(photo(test_set, "grey_backdrop", level))).mean() - level) < 3, level


def test_coloured_backdrop_is_coloured_and_more_so_with_severity(test_set):
    spreads = []
    for saturation in CONDITIONS["coloured_backdrop"].severities:
        ring = border(photo(test_set, "coloured_backdrop", saturation)).astype(float).mean(0)  # (3,) RGB
        spreads.append(ring.max() - ring.min())
    assert spreads[0] > 20 and spreads == sorted(spreads)


def test_underexposed_is_darker_than_white_backdrop_and_darker_with_severity(test_set):
    white = gray(photo(test_set, "white_backdrop")).mean()
    means = [gray(photo(test_set, "underexposed", s)).mean() for s in CONDITIONS["underexposed"].severities]
    assert means[0] < 0.7 * white and means == sorted(means, reverse=True)


def test_uneven_light_one_side_brighter_than_the_opposite(test_set):
    for i in EXAMPLES:  # a different seeded angle per image
        g = gray(photo(test_set, "uneven_light", index=i))
        top, bottom, left, right = g[:6].mean(), g[-6:].mean(), g[:, :6].mean(), g[:, -6:].mean()
        assert max(abs(top - bottom), abs(left - right)) > 30, i  # falls to 0.6 of 220 across the frame


def test_tinted_light_casts_a_colour_on_the_white_backdrop(test_set):
    casts = [np.ptp(border(photo(test_set, "tinted_light", index=i)).astype(float).mean(0)) for i in EXAMPLES]
    assert min(casts) > 10


def test_noise_raises_the_backdrop_spread(test_set):
    clean = gray(border(photo(test_set, "white_backdrop"))).std()
    noisy = [gray(border(photo(test_set, "noise_jpeg", s))).std() for s in CONDITIONS["noise_jpeg"].severities]
    assert noisy[0] > clean + 1 and noisy[-1] > noisy[0]


def test_rotation_tilts_the_garment(test_set):
    # Trousers (test image 2) stand upright: tilted, their box widens relative to their height.
    t, b, le, r = garment_box(gray(photo(test_set, "white_backdrop", index=2)))
    t2, b2, le2, r2 = garment_box(gray(photo(test_set, "rotation", 20.0, index=2)))
    assert (r2 - le2) / (b2 - t2) > (r - le) / (b - t) + 0.15
    assert gray(border(photo(test_set, "rotation", 20.0, index=2))).min() > 200  # corners show the backdrop


def test_small_offcentre_garment_is_small_and_off_centre(test_set):
    for i in EXAMPLES:
        t, b, le, r = garment_box(gray(photo(test_set, "small_offcentre", index=i)))
        assert b - t < 0.6 * 224 and r - le < 0.6 * 224, i
        assert math.hypot((t + b) / 2 - 112, (le + r) / 2 - 112) > 25, i
    t, b, le, r = garment_box(gray(photo(test_set, "white_backdrop", index=0)))
    assert max(b - t, r - le) > 0.75 * 224  # the default garment fills most of the frame


def test_blur_softens_edges(test_set):
    def sharpness(name: str, severity: float | None = None) -> float:
        return float(np.abs(np.diff(gray(photo(test_set, name, severity)), axis=1)).mean())

    blurred = [sharpness("blur", s) for s in CONDITIONS["blur"].severities]
    assert sharpness("white_backdrop") > blurred[0] > blurred[1] > blurred[2]


def test_bad_inputs_are_refused(test_set):
    rng = photo_rng(0, 0)
    with pytest.raises(ValueError, match="28, 28"):
        render_photo(np.zeros((32, 32), np.uint8), PHOTO_CONDITIONS[0], 240.0, rng)
    with pytest.raises(ValueError, match="unknown photo condition"):
        render_photo(test_set[0][0], PhotoCondition("fog", "?", (1.0,), 0), 1.0, rng)


def test_render_clean_round_trips_exactly(test_set):
    for i in EXAMPLES:
        image = Image.open(io.BytesIO(render_clean(test_set[0][i])))
        assert image.format == "PNG" and image.mode == "L"
        assert np.array_equal(np.asarray(image), test_set[0][i])


def test_sample_indices_stratified_and_seeded(test_set):
    labels = test_set[1]
    idx = sample_indices(labels, 7, seed=5)
    assert idx.shape == (70,) and len(set(idx.tolist())) == 70 and np.all(np.diff(idx) > 0)
    assert np.array_equal(np.bincount(labels[idx], minlength=10), np.full(10, 7))
    assert np.array_equal(idx, sample_indices(labels, 7, seed=5))
    assert not np.array_equal(idx, sample_indices(labels, 7, seed=6))
    with pytest.raises(ValueError, match="fewer"):
        sample_indices(np.array([0, 0, 1]), 2, seed=0)


def test_photo_robustness_with_an_oracle_and_a_constant(test_set):
    images, labels = test_set
    truth = labels[sample_indices(labels, 1, seed=0)]
    calls = []

    def oracle(uploads: list[bytes]) -> np.ndarray:
        calls.append(len(uploads))
        return truth  # uploads come in sample order

    rows = photo_robustness(oracle, images, labels, seed=0, per_class=1, size=64)
    expected = [("clean", 0.0)] + [(c.name, s) for c in PHOTO_CONDITIONS for s in c.severities]
    assert [(r.condition, r.severity) for r in rows] == expected
    assert calls == [10] * len(expected)
    assert all(r.accuracy == 1.0 and r.relative == 1.0 and r.count == 10 for r in rows)
    assert sum(r.realistic for r in rows) == len(PHOTO_CONDITIONS) and not rows[0].realistic
    assert [r.severity for r in rows if r.realistic] == [c.severities[c.realistic] for c in PHOTO_CONDITIONS]

    constant = photo_robustness(lambda u: np.zeros(len(u), int), images, labels, per_class=1, size=64)
    assert all(r.accuracy == pytest.approx(0.1) for r in constant)

    with pytest.raises(ValueError, match="3 answers for 10 uploads"):
        photo_robustness(lambda u: np.zeros(3, int), images, labels, per_class=1, size=64)


def test_worst_realistic_picks_the_lowest_realistic_row():
    def row(name: str, accuracy: float, realistic: bool) -> PhotoResult:
        return PhotoResult(name, "", 1.0, realistic, accuracy, accuracy / 0.9, 100)

    rows = [row("clean", 0.9, False), row("a", 0.2, False), row("b", 0.6, True), row("c", 0.5, True)]
    assert worst_realistic(rows).condition == "c"
    with pytest.raises(ValueError):
        worst_realistic(rows[:2])


def test_contact_sheet_is_a_png_grid(test_set):
    sheet = Image.open(io.BytesIO(contact_sheet(test_set[0], [0, 1], size=64, thumb=40)))
    assert sheet.format == "PNG" and sheet.size == (40 * (1 + len(PHOTO_CONDITIONS)), 18 + 2 * 40)
