"""Pen strokes on black: images in Fashion-MNIST's form that are no garment, taught towards the uniform answer.

A drawing, a signature or a handwritten note has the very form of a Fashion-MNIST image (light strokes on black,
centred, about 20 pixels across), and nothing in the scans tells the network that strokes are not clothes: trained on
scans and real photos alone, it read blurred handwritten digits as T-shirts, as sure of itself as on a garment
(docs/benchmarks.md#pen-strokes-taught-as-no-garment). Outlier exposure (Hendrycks et al. 2019)
teaches it the difference: a share of each batch is such strokes, each with the loss KL(uniform || p), so the network
spreads its belief over the classes on them, which the abstention reads as unsure.

The strokes are drawn here, not taken from a data set of handwriting: smooth curves through random points and
arcs of ellipses, one to three per image, of random width, brightness and blur, so nothing they teach is the shape of
any one alphabet. They are drawn at four times the size and reduced, for anti-aliased edges as a scanned pen gives.
Every image comes from one numpy Generator seeded from (seed, index), so the same seed always gives the same strokes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIDE = 28
# Drawn at this many times the size, then reduced by area: anti-aliased edges.
SCALE = 4
# The strokes' bounding box, in pixels of the 28x28 image: a digit in MNIST spans 20, a garment 20-28.
BOX = (14.0, 26.0)
# Pen width, in pixels of the 28x28 image: a fine pen to a marker.
WIDTH = (1.5, 5.0)
# Gaussian blur radius after reduction: sharp to an image upscaled from a few pixels.
BLUR = (0.0, 1.5)
# Brightest value of the strokes: light grey to white.
PEAK = (140, 255)
STROKES_PER_IMAGE = (1, 3)
# Share of strokes that are arcs of an ellipse (loops and bows); the others are curves through random points.
ARC_SHARE = 0.35


def _smooth(points: np.ndarray, rounds: int = 3) -> np.ndarray:
    """(K, 2) control points -> the smooth curve they outline, by cutting corners (Chaikin's algorithm), ends kept."""
    for _ in range(rounds):
        a, b = points[:-1], points[1:]
        cut = np.empty((2 * len(a), 2))
        cut[0::2], cut[1::2] = 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b
        points = np.concatenate([points[:1], cut, points[-1:]])
    return points


def _draw_one(rng: np.random.Generator) -> np.ndarray:
    """One image of strokes: (28, 28) uint8."""
    big = SIDE * SCALE
    canvas = Image.new("L", (big, big), 0)
    pen = ImageDraw.Draw(canvas)
    box = rng.uniform(*BOX, size=2) * SCALE  # (2,): width, height
    centre = big / 2 + rng.normal(0.0, 1.5 * SCALE, size=2)  # (2,)
    low = centre - box / 2  # (2,)
    peak = int(rng.integers(PEAK[0], PEAK[1] + 1))
    for _ in range(int(rng.integers(STROKES_PER_IMAGE[0], STROKES_PER_IMAGE[1] + 1))):
        width = max(1, round(rng.uniform(*WIDTH) * SCALE))
        value = int(peak * rng.uniform(0.8, 1.0))
        if rng.random() < ARC_SHARE:
            radii = box / 2 * rng.uniform(0.4, 1.0, size=2)  # (2,)
            middle = low + box * rng.uniform(0.3, 0.7, size=2)  # (2,)
            start = float(rng.uniform(0.0, 360.0))
            extent = float(rng.uniform(120.0, 360.0))
            corners = [*(middle - radii), *(middle + radii)]
            pen.arc(corners, start, start + extent, fill=value, width=width)
        else:
            points = rng.random((int(rng.integers(2, 6)), 2))  # (K, 2) in the unit square
            # Stretched to span the box: a pen stroke crosses its figure, it does not sit in a corner of it.
            spread = points.max(0) - points.min(0)  # (2,)
            points = np.where(spread > 0.25, (points - points.min(0)) / np.maximum(spread, 1e-9), points)
            points = low + box * points
            curve = [tuple(p) for p in _smooth(points)]
            pen.line(curve, fill=value, width=width, joint="curve")
    small = canvas.resize((SIDE, SIDE), Image.Resampling.BOX)
    radius = float(rng.uniform(*BLUR))
    if radius > 0.2:
        small = small.filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(small, dtype=np.uint8)


def stroke_images(count: int, seed: int) -> np.ndarray:
    """`count` images of pen strokes on black, (count, 28, 28) uint8; the same (count, seed) give the same images,
    and image i is the same whatever `count`."""
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    out = np.zeros((count, SIDE, SIDE), dtype=np.uint8)
    for i in range(count):
        out[i] = _draw_one(np.random.default_rng([seed, i]))
    return out
