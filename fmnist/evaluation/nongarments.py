"""Synthetic images that are not garments, as a user might upload by mistake: the test set for "unsure".

Every kind is drawn with its own numpy Generator seeded from (seed, kind index), so the same seed always gives the
same images, and adding a kind or changing `per_kind` never changes the images of another kind. Images are uint8,
(H, W) grayscale or (H, W, 3) RGB; most are `size` pixels a side give or take an eighth, some are 28x28 (an upload
already at Fashion-MNIST's size is taken as it is by the service, without trimming).

Kinds: uniform and Gaussian noise, blank frames (white, black, grey, one random flat colour), checkerboards,
stripes (horizontal, vertical, both diagonals), rendered text (dark on light and light on dark) and random filled
shapes (circles, rectangles, polygons) on a light or dark background.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

NONGARMENT_KINDS = (
    "uniform_noise",
    "gaussian_noise",
    "blank",
    "checkerboard",
    "stripes",
    "text",
    "shapes",
)
# Share of images made at Fashion-MNIST's own 28x28.
SMALL_SHARE = 0.2
SMALL_SIDE = 28

_WORDS = (
    "hello",
    "SALE",
    "invoice",
    "FashionFlow",
    "lorem ipsum",
    "dolor sit amet",
    "42",
    "2024-06-01",
    "OK",
    "Total: 19.99",
    "receipt",
    "QWERTY",
    "not a shirt",
    "www.example.com",
    "Hello, world!",
)

Maker = Callable[[np.random.Generator, int, int, int], np.ndarray]


def _shape(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """(height, width): 28x28 now and then, otherwise `size` give or take an eighth on each side."""
    if rng.random() < SMALL_SHARE:
        return SMALL_SIDE, SMALL_SIDE
    spread = max(1, size // 8)
    h, w = rng.integers(size - spread, size + spread + 1, size=2)
    return int(max(8, h)), int(max(8, w))


def _colour(rng: np.random.Generator, rgb: bool, low: int = 0, high: int = 256) -> np.ndarray:
    """One random colour: (3,) for RGB, (1,) for grayscale, values in [low, high)."""
    return rng.integers(low, high, size=3 if rgb else 1).astype(np.uint8)


def _paint(mask: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """(H, W) bool mask -> (H, W) or (H, W, 3) uint8 image with fg where the mask is set, bg elsewhere."""
    out = np.where(mask[..., None], fg, bg).astype(np.uint8)  # (H, W, 1) or (H, W, 3)
    return out[..., 0] if out.shape[-1] == 1 else out


def _two_colours(rng: np.random.Generator, rgb: bool) -> tuple[np.ndarray, np.ndarray]:
    """Two colours that differ clearly in brightness, so the pattern survives conversion to grayscale."""
    dark, light = _colour(rng, rgb, 0, 90), _colour(rng, rgb, 165, 256)
    return (dark, light) if rng.random() < 0.5 else (light, dark)


def uniform_noise(rng: np.random.Generator, i: int, h: int, w: int) -> np.ndarray:
    """Independent uniform pixels in 0-255, grayscale or RGB."""
    rgb = i % 2 == 1
    return rng.integers(0, 256, size=(h, w, 3) if rgb else (h, w), dtype=np.uint8)


def gaussian_noise(rng: np.random.Generator, i: int, h: int, w: int) -> np.ndarray:
    """Gaussian pixels around a random mean (60-200) with a random spread (15-80), clipped to 0-255."""
    rgb = i % 2 == 1
    mean, sd = rng.uniform(60, 200), rng.uniform(15, 80)
    values = rng.normal(mean, sd, size=(h, w, 3) if rgb else (h, w))
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def blank(rng: np.random.Generator, i: int, h: int, w: int) -> np.ndarray:
    """A flat frame, cycling through white, black, mid grey and one random colour."""
    variant = i % 4
    if variant == 0:
        return np.full((h, w), 255, dtype=np.uint8)
    if variant == 1:
        return np.zeros((h, w), dtype=np.uint8)
    if variant == 2:
        return np.full((h, w), int(rng.integers(100, 156)), dtype=np.uint8)
    return np.broadcast_to(_colour(rng, True), (h, w, 3)).copy()


def checkerboard(rng: np.random.Generator, i: int, h: int, w: int) -> np.ndarray:
    """Squares of a random period (2-32 pixels) and phase, black and white or two colours."""
    period = int(rng.choice([2, 3, 4, 6, 8, 12, 16, 24, 32]))
    dy, dx = rng.integers(0, 2 * period, size=2)
    rows = (np.arange(h)[:, None] + dy) // period  # (H, 1)
    cols = (np.arange(w)[None, :] + dx) // period  # (1, W)
    mask = (rows + cols) % 2 == 0  # (H, W)
    rgb = i % 3 == 2
    fg, bg = _two_colours(rng, rgb) if rgb or rng.random() < 0.5 else (np.array([255]), np.array([0]))
    return _paint(mask, fg, bg)


def stripes(rng: np.random.Generator, i: int, h: int, w: int) -> np.ndarray:
    """Stripes, cycling horizontal, vertical, diagonal and anti-diagonal, of a random period (3-32) and duty."""
    orientation = i % 4
    period = int(rng.choice([3, 4, 6, 8, 12, 16, 24, 32]))
    y, x = np.arange(h)[:, None], np.arange(w)[None, :]  # (H, 1), (1, W)
    position = (y, x, y + x, y - x + w)[orientation] + int(rng.integers(0, period))  # (H, W) after broadcasting
    duty = rng.uniform(0.3, 0.7)
    mask = np.broadcast_to((position % period) < duty * period, (h, w))
    fg, bg = _two_colours(rng, rgb=rng.random() < 0.4)
    return _paint(mask, fg, bg)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # Pillow's built-in bitmap font: the same pixels everywhere, FreeType installed or not (Pillow >= 10.1).
    loader = getattr(ImageFont, "load_default_imagefont", None)
    return loader() if loader is not None else ImageFont.load_default()


def text(rng: np.random.Generator, i: int, h: int, w: int) -> np.ndarray:
    """A few lines of words in Pillow's default font, drawn small and scaled up 2-4x (nearest neighbour).

    Even images are dark text on a light background, odd ones light on dark.
    """
    scale = int(rng.integers(2, 5)) if min(h, w) > SMALL_SIDE else 1
    small_h, small_w = max(8, h // scale), max(8, w // scale)
    light, dark = int(rng.integers(200, 256)), int(rng.integers(0, 56))
    fg, bg = (dark, light) if i % 2 == 0 else (light, dark)
    canvas = Image.new("L", (small_w, small_h), bg)
    draw = ImageDraw.Draw(canvas)
    font = _font()
    y = int(rng.integers(0, 4))
    while y < small_h - 6:
        words = " ".join(str(rng.choice(_WORDS)) for _ in range(int(rng.integers(1, 4))))
        draw.text((int(rng.integers(0, 6)), y), words, fill=fg, font=font)
        y += int(rng.integers(11, 16))
    return np.asarray(canvas.resize((w, h), Image.Resampling.NEAREST), dtype=np.uint8)


def shapes(rng: np.random.Generator, i: int, h: int, w: int) -> np.ndarray:
    """One to six filled circles, rectangles or polygons of random colours and places, on a light or dark ground."""
    rgb = i % 2 == 1
    light_ground = rng.random() < 0.5
    ground = _colour(rng, rgb, 200, 256) if light_ground else _colour(rng, rgb, 0, 56)
    mode = "RGB" if rgb else "L"
    canvas = Image.new(mode, (w, h), tuple(int(v) for v in ground) if rgb else int(ground[0]))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 7))):
        # Shapes contrast with the ground, so they survive the service's trim and polarity decisions.
        colour = _colour(rng, rgb, 0, 120) if light_ground else _colour(rng, rgb, 136, 256)
        fill = tuple(int(v) for v in colour) if rgb else int(colour[0])
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.08, 0.35) * min(h, w)
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif kind == 1:
            rx, ry = r * rng.uniform(0.4, 1.6), r * rng.uniform(0.4, 1.6)
            draw.rectangle((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(3, 8))))
            radii = r * rng.uniform(0.5, 1.2, size=len(angles))
            points = [
                (float(cx + q * np.cos(a)), float(cy + q * np.sin(a))) for a, q in zip(angles, radii, strict=True)
            ]
            draw.polygon(points, fill=fill)
    return np.asarray(canvas, dtype=np.uint8)


_MAKERS: dict[str, Maker] = {
    "uniform_noise": uniform_noise,
    "gaussian_noise": gaussian_noise,
    "blank": blank,
    "checkerboard": checkerboard,
    "stripes": stripes,
    "text": text,
    "shapes": shapes,
}


# Seed streams: the report's set and the development set (what choices are made on) never share a draw.
REPORT_STREAM = 0
DEV_STREAM = 1


def synthetic_nongarments(
    per_kind: int, seed: int, size: int = 112, stream: int = REPORT_STREAM
) -> list[tuple[str, np.ndarray]]:
    """`per_kind` images of every kind in NONGARMENT_KINDS, as (kind, uint8 array), kind by kind in that order.

    Arrays are (H, W) grayscale or (H, W, 3) RGB, C-contiguous. Deterministic in (per_kind, seed, size, stream);
    the first k images of a kind are the same whatever per_kind >= k is.
    """
    if per_kind < 0 or size < 8:
        raise ValueError(f"per_kind must be >= 0 and size >= 8, got {per_kind} and {size}")
    out: list[tuple[str, np.ndarray]] = []
    for k, kind in enumerate(NONGARMENT_KINDS):
        rng = np.random.default_rng([seed, k] if stream == REPORT_STREAM else [seed, k, stream])
        for i in range(per_kind):
            h, w = _shape(rng, size)
            out.append((kind, np.ascontiguousarray(_MAKERS[kind](rng, i, h, w), dtype=np.uint8)))
    return out


def encode_png(array: np.ndarray) -> bytes:
    """(H, W) grayscale or (H, W, 3) RGB uint8 array -> PNG bytes, as an upload would carry them."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"expected (H, W) or (H, W, 3) uint8, got {array.shape} {array.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()
