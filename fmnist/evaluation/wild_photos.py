"""Garments photographed as shops and shoppers really do it: the "in-the-wild" photo suite.

`fmnist.evaluation.photos` (the "clean-studio" family) renders photos with the very image model that
`fmnist.images.normalise` inverts: a smooth backdrop, light as a gain, a garment that never reaches the frame's edge. It
measures that the normaliser does what it was built to do; it cannot find where it fails. This module renders the same
garments with an image model the normaliser knows nothing of:

- the garment is an opaque object (its outline from the 28x28 image, its folds and print as shading of a fabric
  colour drawn from a palette of real garment colours, with a knit texture), not a semi-transparent dark film;
- backdrops are textured (wood grain, woven fabric, paper, tiles) or coloured in another hue than the garment;
- light is what windows and lamps do: the garment's own cast shadow (soft and hard), polygonal shadows and shadow
  edges across the frame (`albumentations.RandomShadow`), blotchy shading (`albumentations.PlasmaShadow`);
- the frame holds other things: a wire hanger and a price tag, a label, props, part of a second garment at the edge;
- the camera tilts (`albumentations.Perspective`), shakes (`MotionBlur`), is noisy (`ISONoise`) and compresses
  (`ImageCompression`), and sometimes cuts the garment off.

The camera effects come from albumentations, written by people who never saw this normaliser; backdrops and
clutter, which no library offers, are drawn here. Each condition has a realistic severity (what product listings
and shopper uploads commonly show, stated beside it) and a harsh one. A condition marked `fully_visible=False` cuts
part of the garment off or covers it: its accuracy is reported but not held to the clean-relative target.

Everything random comes from a numpy Generator seeded from (seed, stream, image index) (`wild_rng`); albumentations'
own randomness is seeded from it, so a photo is the same on every run and in every thread. The report renders test
images with `REPORT_STREAM`; development (tuning, the abstention fit) renders validation images with `DEV_STREAM`.

Longer than most modules (about 660 lines) on purpose: each condition's renderer sits beside its stated reason and
severities, and they share the garment's placement, texture and camera; split, a condition would be read in three
files.
"""

from __future__ import annotations

import colorsys
import io
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw

from fmnist.core.data import IMAGE_SIZE
from fmnist.core.runtime import available_cores
from fmnist.evaluation.answers import Answers, Figures, LeaveOut, figures
from fmnist.evaluation.photos import render_clean, sample_indices, unseen_figures

log = logging.getLogger(__name__)

# cv2 runs its own thread pool per call; the suite already renders one photo per core, so one thread each.
cv2.setNumThreads(1)

# Threads rendering a condition's photos at once: one per core the process may use.
WORKERS = available_cores()
# Seed streams: the report's photos (of test images) and development photos (of validation images) never share a
# random draw, on top of never sharing an image.
REPORT_STREAM = 1
DEV_STREAM = 2

# --- The garment ---------------------------------------------------------------------------------------------------
# Side of the garment's 28x28 box as a fraction of the frame: product photos leave more room than a trimmed scan.
GARMENT_FILL = (0.68, 0.82)
# The garment's centre moves this fraction of the frame from the centre at most, each axis (hand-held framing).
GARMENT_JITTER = 0.04
# Fashion-MNIST pixel level at which the garment is fully opaque: the scan's faint edge (below this) is the
# garment's soft outline, everything above is cloth. The studio suite instead treats every level as partial cover.
OPAQUE_LEVEL = 48.0
# Fabric hues of real garments (RGB; only their chroma is used, the luminance comes from the scan): black,
# charcoal, navy, denim, olive, burgundy, brown, forest, slate, plum, rust, teal.
GARMENT_COLOURS: tuple[tuple[int, int, int], ...] = (
    (25, 25, 28),
    (58, 60, 64),
    (30, 38, 70),
    (52, 78, 120),
    (85, 90, 50),
    (100, 30, 45),
    (90, 60, 40),
    (35, 75, 50),
    (80, 90, 105),
    (75, 45, 85),
    (140, 70, 40),
    (30, 95, 100),
)
# Rec. 601 luma weights: the luminance a colour keeps when the service converts it to grayscale.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# Knit or weave of the fabric: multiplicative noise of this relative spread.
FABRIC_GRAIN = 0.05
# Off-white of walls, sheets and studio sweeps in a phone photo (JPEG level), drawn per photo.
OFFWHITE = (205.0, 245.0)
# JPEG quality of the phone's own output.
CAMERA_QUALITY = (85, 95)


@dataclass(frozen=True)
class WildCondition:
    """One way real photos differ from a clean product shot, at a realistic and a harsh severity."""

    name: str
    description: str
    severities: tuple[float, float]  # (realistic, harsh); what the number means is in `description`
    fully_visible: bool = True  # the whole garment is in view, unobstructed


# Severities: the realistic one is what listings and shopper uploads commonly show; the harsh one is about as bad as
# a photo a person would still upload. The reason for each is beside it.
WILD_CONDITIONS: tuple[WildCondition, ...] = (
    WildCondition(
        "plain",
        "the garment on an off-white wall or sheet, phone JPEG: the suite's own reference (severity unused)",
        (0.0, 0.0),
    ),
    WildCondition(
        "soft_cast_shadow",
        "the garment's own shadow under diffuse light (severity: shadow darkness; offset 3% of the frame)",
        # A garment laid on a bed or hung on a wall under room light throws a faint shadow (~25% darker); a lamp
        # close by, ~45%.
        (0.25, 0.45),
    ),
    WildCondition(
        "hard_cast_shadow",
        "the garment's own sharp shadow under a lamp or flash (severity: shadow darkness; offset 5% of the frame)",
        # Direct flash or a bare bulb: a crisp shadow beside the garment, 35-55% darker than the lit backdrop.
        (0.35, 0.55),
    ),
    WildCondition(
        "shadow_edge",
        "window light: one or two polygonal shadows with hard edges across the frame (albumentations"
        " RandomShadow; severity: darkness)",
        # Sunlight through a window frame: the shadowed part is 30-50% darker than the sunlit part.
        (0.3, 0.5),
    ),
    WildCondition(
        "blotchy_light",
        "uneven, dappled light (albumentations PlasmaShadow; severity: darkness of the darkest blotches)",
        # Light through curtains or leaves: blotches up to 30% (realistic) or 50% (harsh) darker.
        (0.3, 0.5),
    ),
    WildCondition(
        "wood_backdrop",
        "the garment laid on a wooden floor or table (severity: contrast of the grain, of the wood's level)",
        # Oak or pine boards: grain contrast of ~15%; knotty or dark-streaked wood ~30%.
        (0.15, 0.3),
    ),
    WildCondition(
        "fabric_backdrop",
        "the garment on a woven bedspread or sofa (severity: contrast of the weave)",
        # A linen or cotton weave: ~12% contrast; a coarse, two-tone weave ~25%.
        (0.12, 0.25),
    ),
    WildCondition(
        "paper_backdrop",
        "crumpled wrapping or kraft paper (severity: contrast of the creases)",
        (0.12, 0.25),
    ),
    WildCondition(
        "tiled_backdrop",
        "a tiled floor or wall with dark grout (severity: grout darkness)",
        # Light grout ~25% darker than the tile, dark grout ~55%.
        (0.25, 0.55),
    ),
    WildCondition(
        "colour_on_colour",
        "a colourful garment on a saturated backdrop of another hue (severity: the backdrop's saturation)",
        # Painted walls and coloured sheets: saturation ~0.35; strong paper or fabric ~0.6.
        (0.35, 0.6),
    ),
    WildCondition(
        "hanger_and_tag",
        "a wire hanger above the garment and a price tag on a string beside it (severity: tag size, of the frame)",
        # A swing tag is ~8% of a shirt's photo; a large card tag ~14%.
        (0.08, 0.14),
    ),
    WildCondition(
        "props",
        "a label sticker and small props (a phone, a coin, a pen) beside the garment (severity: prop size)",
        (0.08, 0.14),
    ),
    WildCondition(
        "perspective",
        "the camera not square to the garment (albumentations Perspective; severity: corner displacement)",
        # A hand-held phone: corners displaced ~5% of the frame; leaning over a bed ~9%.
        (0.05, 0.09),
    ),
    WildCondition(
        "phone_camera",
        "dim-light phone capture: sensor noise, slight shake, re-compression (albumentations ISONoise, MotionBlur,"
        " ImageCompression; severity: noise intensity)",
        # Indoor evening light: ISO noise intensity ~0.3 with JPEG ~60; harsher at 0.6 with JPEG ~40.
        (0.3, 0.6),
    ),
    WildCondition(
        "second_garment_edge",
        "part of another garment on the rail entering the frame from one side (severity: share of the frame it covers)",
        # A neighbour on the rail or the bed: ~12% of the frame's width; ~22% when crowded.
        (0.12, 0.22),
        fully_visible=False,
    ),
    WildCondition(
        "cut_by_frame",
        "the garment cut off by the frame on one side (severity: share of the garment outside the frame)",
        # Close-up shots cut a sleeve or a hem: ~10% of the garment; ~20% in a careless shot.
        (0.10, 0.20),
        fully_visible=False,
    ),
)
CONDITION_NAMES = tuple(c.name for c in WILD_CONDITIONS)


def wild_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator of image `index`'s photos under `seed` and `stream` (REPORT_STREAM or DEV_STREAM).

    The same for every condition of one image (common random numbers): the garment's colour, size and place are
    shared, so two rows differ by their condition, not by which garments happened to be drawn.
    """
    return np.random.default_rng([seed, stream, index])


@dataclass
class _Scene:
    """A photo being composed: (S, S, 3) float32 RGB backdrop, the garment layer, and what goes on top."""

    size: int
    backdrop: np.ndarray  # (S, S, 3) float32, 0-255
    alpha: np.ndarray  # (S, S) float32 in [0, 1]: where the garment hides the backdrop
    cloth: np.ndarray  # (S, S, 3) float32: the garment's own colour where alpha > 0
    box: tuple[int, int, int]  # garment box: left, top, side (pixels)


def _garment(image: np.ndarray, rng: np.random.Generator, size: int, fill: float, centre: tuple[float, float]):
    """Alpha (S, S) and cloth (S, S, 3) of the garment placed at `centre` with its box `fill` of the frame."""
    side = max(2, round(fill * size))
    level = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BICUBIC), np.float32)  # (s, s)
    left = round(centre[0] * size - side / 2)
    top = round(centre[1] * size - side / 2)
    canvas = np.zeros((size, size), np.float32)
    # Paste with clipping, so a garment pushed past the edge is cut by the frame.
    x0, y0 = max(0, left), max(0, top)
    x1, y1 = min(size, left + side), min(size, top + side)
    if x1 > x0 and y1 > y0:
        canvas[y0:y1, x0:x1] = level[y0 - top : y1 - top, x0 - left : x1 - left]
    alpha = np.clip(canvas / OPAQUE_LEVEL, 0.0, 1.0)
    alpha = alpha * alpha * (3.0 - 2.0 * alpha)  # smoothstep: an opaque body with a soft, anti-aliased outline
    # The cloth's own luminance is what the scan recorded (its level is the negated luminance of a garment lit like
    # a white backdrop), dyed a fabric colour of that luminance: light parts of the garment stay light whatever is
    # behind them, where the studio family lets the backdrop show through them.
    colour = np.asarray(GARMENT_COLOURS[int(rng.integers(len(GARMENT_COLOURS)))], np.float32)  # (3,)
    tint = colour / max(float(colour @ LUMA), 1.0)  # (3,): the colour's chroma at unit luminance
    lit = rng.uniform(*OFFWHITE) / 255.0  # the light on the garment, as on an off-white backdrop
    # At the outline the scan's level falls off only because its pixels were partly background: the cloth there is
    # the cloth next to it, so the outline takes the level of its neighbourhood (a grey dilation over ~1.5 scan
    # pixels) instead of glowing light.
    reach = max(3, round(1.5 * side / IMAGE_SIZE)) | 1
    inner = cv2.dilate(canvas, np.ones((reach, reach), np.uint8))  # (S, S)
    level = np.where(canvas < 2.0 * OPAQUE_LEVEL, np.maximum(canvas, inner), canvas)
    luminance = (255.0 - np.maximum(level, OPAQUE_LEVEL)) * lit  # (S, S)
    grain = 1.0 + FABRIC_GRAIN * rng.standard_normal((size, size), dtype=np.float32)  # (S, S)
    cloth = tint * (luminance * grain)[..., None]  # (S, S, 3)
    return alpha, cloth, (left, top, side)


def _offwhite(rng: np.random.Generator, size: int) -> np.ndarray:
    level = rng.uniform(*OFFWHITE)
    warmth = rng.uniform(-6.0, 6.0)  # white balance is never exact: a slightly warm or cool white
    return np.broadcast_to(np.array([level + warmth, level, level - warmth], np.float32), (size, size, 3)).copy()


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(S, S) float32 value noise in [-1, 1]: a coarse random grid upscaled smoothly."""
    grid = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC).clip(-1.0, 1.0)


def _wood(rng: np.random.Generator, size: int, contrast: float) -> np.ndarray:
    """Boards of wood: grain lines along the boards, warped by noise, with darker seams between boards."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size  # (S, S)
    warp = _smooth_noise(rng, size, 4) * 0.08
    frequency = rng.uniform(18.0, 30.0)
    grain = np.sin((ys + warp) * frequency * 2 * np.pi + 3.0 * _smooth_noise(rng, size, 2))  # (S, S) in [-1, 1]
    boards = rng.integers(2, 5)
    seams = np.abs(((xs * boards) % 1.0) - 0.5) > 0.485  # thin dark lines between boards
    tone = np.asarray(colorsys.hsv_to_rgb(rng.uniform(0.06, 0.11), rng.uniform(0.25, 0.45), rng.uniform(0.72, 0.9)))
    level = 1.0 - contrast * (0.5 + 0.5 * grain) - 0.35 * seams
    return (tone * 255.0)[None, None, :].astype(np.float32) * level[..., None]


def _fabric(rng: np.random.Generator, size: int, contrast: float) -> np.ndarray:
    """A woven cloth: warp and weft threads crossing, a slow drape shading over it."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(3.0, 6.0)
    angle = rng.uniform(-0.3, 0.3)
    u = xs * math.cos(angle) + ys * math.sin(angle)
    v = -xs * math.sin(angle) + ys * math.cos(angle)
    weave = np.sin(2 * np.pi * u / period) * np.sign(np.sin(2 * np.pi * v / (2 * period)))  # (S, S)
    drape = _smooth_noise(rng, size, 3)
    base = np.asarray(colorsys.hsv_to_rgb(rng.uniform(0.0, 1.0), rng.uniform(0.05, 0.25), rng.uniform(0.75, 0.92)))
    level = 1.0 - contrast * (0.5 + 0.5 * weave) - 0.08 * drape
    return (base * 255.0)[None, None, :].astype(np.float32) * level[..., None]


def _paper(rng: np.random.Generator, size: int, contrast: float) -> np.ndarray:
    """Crumpled paper: creases as ridges of smooth noise, and fine fibres."""
    creases = 1.0 - np.abs(_smooth_noise(rng, size, 6))  # (S, S): ridges where the noise crosses zero
    creases = creases**6
    fibres = rng.standard_normal((size, size), dtype=np.float32) * 0.02
    kraft = rng.random() < 0.5
    base = np.array([200.0, 165.0, 120.0] if kraft else [238.0, 236.0, 230.0], np.float32)
    level = 1.0 - contrast * creases + fibres
    return base[None, None, :] * level[..., None]


def _tiles(rng: np.random.Generator, size: int, contrast: float) -> np.ndarray:
    """Square tiles with grout lines, each tile a slightly different shade."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    tile = rng.uniform(size / 4.0, size / 2.2)
    ox, oy = rng.uniform(0.0, tile, 2)
    gx, gy = (xs + ox) / tile, (ys + oy) / tile
    grout_width = rng.uniform(0.03, 0.06)
    grout = (np.abs(gx - np.round(gx)) < grout_width) | (np.abs(gy - np.round(gy)) < grout_width)
    cells = (np.floor(gx) * 7 + np.floor(gy) * 13).astype(np.int64) % 17
    shade = 1.0 + 0.04 * rng.uniform(-1.0, 1.0, 17).astype(np.float32)[cells]
    base = np.asarray(colorsys.hsv_to_rgb(rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.2), rng.uniform(0.8, 0.95)))
    level = shade * np.where(grout, 1.0 - contrast, 1.0)
    return (base * 255.0)[None, None, :].astype(np.float32) * level[..., None]


def _cast_shadow(scene: _Scene, darkness: float, offset: float, blur: float, rng: np.random.Generator) -> None:
    """The garment's shadow on the backdrop: its own outline, shifted away from the light and blurred."""
    angle = rng.uniform(0.0, 2 * np.pi)
    shift = np.float32(offset * scene.size) * np.array([math.cos(angle), math.sin(angle)], np.float32)
    matrix = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]], np.float32)
    shadow = cv2.warpAffine(scene.alpha, matrix, (scene.size, scene.size))  # (S, S)
    if blur > 0:
        shadow = cv2.GaussianBlur(shadow, (0, 0), blur * scene.size)
    scene.backdrop *= (1.0 - darkness * shadow)[..., None]


def _hanger_and_tag(scene: _Scene, tag: float, rng: np.random.Generator, draw: ImageDraw.ImageDraw) -> None:
    """A wire hanger hooked above the garment's top edge and a paper price tag on a string at its side."""
    left, top, side = scene.box
    cx = left + side / 2
    shoulder = top + side * 0.12
    width = max(2, round(scene.size / 90))
    metal = tuple(int(c) for c in rng.integers(60, 140, 3))
    hook_top = max(2.0, top - side * 0.2)
    draw.arc([cx - side * 0.06, hook_top, cx + side * 0.06, hook_top + side * 0.12], 180, 360, fill=metal, width=width)
    draw.line([(cx + side * 0.06, hook_top + side * 0.06), (cx, shoulder - side * 0.04)], fill=metal, width=width)
    draw.line([(cx, shoulder - side * 0.04), (cx - side * 0.42, shoulder)], fill=metal, width=width)
    draw.line([(cx, shoulder - side * 0.04), (cx + side * 0.42, shoulder)], fill=metal, width=width)
    # The tag hangs beside the garment on a string from its upper side.
    tag_side = tag * scene.size
    right = rng.random() < 0.5
    anchor_x = left + side * (0.85 if right else 0.15)
    anchor_y = top + side * rng.uniform(0.25, 0.45)
    tx = anchor_x + (1 if right else -1) * side * 0.12
    ty = anchor_y + side * 0.1
    draw.line([(anchor_x, anchor_y), (tx, ty)], fill=(230, 230, 230), width=max(1, width // 2))
    paper = (250, 250, 245) if rng.random() < 0.5 else (200, 40, 40)
    box = [tx - tag_side * 0.35, ty, tx + tag_side * 0.35, ty + tag_side]
    draw.rectangle(box, fill=paper, outline=(90, 90, 90))
    for k in range(3):  # printed price and barcode lines
        y = ty + tag_side * (0.3 + 0.2 * k)
        draw.line([(box[0] + tag_side * 0.1, y), (box[2] - tag_side * 0.1, y)], fill=(20, 20, 20), width=2)


def _props(scene: _Scene, extent: float, rng: np.random.Generator, draw: ImageDraw.ImageDraw) -> None:
    """A label sticker and a small prop (phone, coin or pen) in the frame's free corners."""
    s = extent * scene.size
    corners = [(0.1, 0.1), (0.9, 0.1), (0.1, 0.9), (0.9, 0.9)]
    first, second = rng.choice(4, size=2, replace=False)
    lx, ly = corners[first][0] * scene.size, corners[first][1] * scene.size
    draw.rectangle([lx - s * 0.6, ly - s * 0.3, lx + s * 0.6, ly + s * 0.3], fill=(245, 245, 240), outline=(0, 0, 0))
    draw.text((lx - s * 0.5, ly - s * 0.15), "SIZE M", fill=(0, 0, 0))
    px, py = corners[second][0] * scene.size, corners[second][1] * scene.size
    kind = int(rng.integers(3))
    if kind == 0:  # a phone, dark glass in a frame
        draw.rounded_rectangle([px - s * 0.4, py - s * 0.8, px + s * 0.4, py + s * 0.8], s * 0.1, fill=(20, 20, 25))
    elif kind == 1:  # a coin
        draw.ellipse([px - s * 0.3, py - s * 0.3, px + s * 0.3, py + s * 0.3], fill=(180, 150, 60))
    else:  # a pen
        draw.line([(px - s, py - s * 0.3), (px + s, py + s * 0.3)], fill=(20, 40, 150), width=max(2, round(s / 6)))


def _second_garment(scene: _Scene, share: float, other: np.ndarray, rng: np.random.Generator) -> None:
    """Part of another garment (another Fashion-MNIST image, dark cloth) entering from the left or right edge."""
    side = scene.size
    alpha, cloth, _ = _garment(other, rng, side, 0.9, (0.5, 0.5))
    # The band of the neighbour's body around its centre line shows, so it is cloth and not its empty margin.
    width = max(1, round(side * share))
    start = (side - width) // 2
    band = slice(start, start + width)
    edge = slice(side - width, side) if rng.random() < 0.5 else slice(0, width)
    moved_alpha = np.zeros_like(alpha)
    moved_cloth = np.zeros_like(cloth)
    moved_alpha[:, edge], moved_cloth[:, edge] = alpha[:, band], cloth[:, band]
    # The neighbour hangs in front of the backdrop and behind nothing: composite it onto the backdrop now.
    scene.backdrop = scene.backdrop * (1.0 - moved_alpha[..., None]) + moved_cloth * moved_alpha[..., None]


def _colour_backdrop(rng: np.random.Generator, size: int, saturation: float, cloth_hue: float) -> np.ndarray:
    hue = (cloth_hue + rng.uniform(0.25, 0.75)) % 1.0  # a clearly different hue from the garment's
    rgb = np.asarray(colorsys.hsv_to_rgb(hue, saturation, rng.uniform(0.75, 0.92)), np.float32) * 255.0
    return np.broadcast_to(rgb, (size, size, 3)).copy()


def _camera(name: str, severity: float, quality: int, photo: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """What the camera does to the composed `photo` under condition `name`, as albumentations does it: (S, S, 3)
    uint8. The pipeline is built per photo and seeded from its generator (thread-safe and repeatable).

    albumentations is imported here, not at the top: it takes over a second to import, and every step of the flow
    imports the library while only the evaluate step renders photos."""
    import albumentations as A

    camera: list[Any] = []
    if name == "shadow_edge":
        camera.append(
            A.RandomShadow(
                shadow_roi=(0.0, 0.0, 1.0, 1.0),
                num_shadows_limit=(1, 2),
                shadow_dimension=4,
                shadow_intensity_range=(severity, severity),
                p=1.0,
            )
        )
    elif name == "blotchy_light":
        camera.append(A.PlasmaShadow(shadow_intensity_range=(severity, severity), roughness=2.0, p=1.0))
    elif name == "perspective":
        camera.append(A.Perspective(scale=(severity, severity), keep_size=True, fill=_edge_colour(photo), p=1.0))
    elif name == "phone_camera":
        camera += [
            A.ISONoise(color_shift=(0.01, 0.03), intensity=(severity, severity), p=1.0),
            A.MotionBlur(blur_limit=(3, 5), p=1.0),
        ]
        quality = round(float(np.interp(severity, (0.3, 0.6), (60, 40))))
    camera.append(A.ImageCompression(compression_type="jpeg", quality_range=(quality, quality), p=1.0))
    pipeline = A.Compose(camera, seed=int(rng.integers(2**31 - 1)))
    return pipeline(image=np.asarray(photo))["image"]


_TEXTURES: dict[str, Callable[[np.random.Generator, int, float], np.ndarray]] = {
    "wood_backdrop": _wood,
    "fabric_backdrop": _fabric,
    "paper_backdrop": _paper,
    "tiled_backdrop": _tiles,
}


def render_wild(
    image: np.ndarray,
    condition: WildCondition,
    severity: float,
    rng: np.random.Generator,
    size: int = 224,
    other: np.ndarray | None = None,
) -> bytes:
    """(28, 28) uint8 Fashion-MNIST image -> JPEG bytes of a size x size photo under `condition` at `severity`.

    `other` is a second (28, 28) garment for `second_garment_edge` (required there, ignored elsewhere). Use
    `wild_rng(seed, stream, index)` as `rng`, fresh for every photo.
    """
    pixels = np.asarray(image)
    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE) or pixels.dtype != np.uint8:
        raise ValueError(f"expected a (28, 28) uint8 Fashion-MNIST image, got {pixels.shape} {pixels.dtype}")
    if condition.name not in CONDITION_NAMES:
        raise ValueError(f"unknown wild condition {condition.name!r}; known: {', '.join(CONDITION_NAMES)}")
    if condition.name == "second_garment_edge" and other is None:
        raise ValueError("second_garment_edge needs `other`, the garment entering the frame")
    # Drawn first and always, in the same order, so every condition of one image shares them (see `wild_rng`).
    fill = float(rng.uniform(*GARMENT_FILL))
    centre = (0.5 + rng.uniform(-GARMENT_JITTER, GARMENT_JITTER), 0.5 + rng.uniform(-GARMENT_JITTER, GARMENT_JITTER))
    quality = int(rng.integers(CAMERA_QUALITY[0], CAMERA_QUALITY[1] + 1))
    edge = int(rng.integers(4))  # the side `cut_by_frame` cuts; drawn always, to keep the streams aligned
    name = condition.name
    if name == "cut_by_frame":  # push the garment's box past one edge by `severity` of its side
        move = fill * (severity + 0.5) - 0.5 * fill  # centre offset that puts `severity` of the box outside
        dx, dy = [(-1, 0), (1, 0), (0, -1), (0, 1)][edge]
        centre = (0.5 + dx * (0.5 - fill / 2 + move), 0.5 + dy * (0.5 - fill / 2 + move))
    alpha, cloth, box = _garment(pixels, rng, size, fill, centre)
    scene = _Scene(size, _offwhite(rng, size), alpha, cloth, box)

    if name in _TEXTURES:
        scene.backdrop = _TEXTURES[name](rng, size, severity)
    elif name == "colour_on_colour":
        hue = rng.uniform(0.0, 1.0)
        vivid = np.asarray(colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 0.85), 1.0), np.float32)  # (3,)
        luminance = scene.cloth @ LUMA  # (S, S): the scan's luminance, dyed a vivid colour instead
        scene.cloth = (vivid / float(vivid @ LUMA))[None, None, :] * luminance[..., None]
        scene.backdrop = _colour_backdrop(rng, size, severity, hue)
    elif name == "soft_cast_shadow":
        _cast_shadow(scene, severity, offset=0.03, blur=0.03, rng=rng)
    elif name == "hard_cast_shadow":
        _cast_shadow(scene, severity, offset=0.05, blur=0.004, rng=rng)
    elif name == "second_garment_edge":
        assert other is not None
        _second_garment(scene, severity, np.asarray(other), rng)

    frame = scene.backdrop * (1.0 - scene.alpha[..., None]) + scene.cloth * scene.alpha[..., None]  # (S, S, 3)
    photo = Image.fromarray(np.rint(np.clip(frame, 0.0, 255.0)).astype(np.uint8))
    if name in ("hanger_and_tag", "props"):
        draw = ImageDraw.Draw(photo)
        (_hanger_and_tag if name == "hanger_and_tag" else _props)(scene, severity, rng, draw)

    out = _camera(name, severity, quality, photo, rng)  # (S, S, 3) uint8, JPEG artefacts baked in
    buffer = io.BytesIO()
    Image.fromarray(out).save(buffer, format="JPEG", quality=95)  # what is uploaded: the already-degraded frame
    return buffer.getvalue()


def _edge_colour(photo: Image.Image) -> tuple[int, int, int]:
    """Median colour of the frame's border: what a tilted camera would see beyond the backdrop's part in view."""
    array = np.asarray(photo)
    border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])  # (4S, 3)
    r, g, b = np.median(border, axis=0).astype(int).tolist()
    return (r, g, b)


@dataclass(frozen=True)
class WildResult:
    """One row of the in-the-wild table: a condition at one severity ('clean' and 'plain' rows first)."""

    condition: str
    description: str
    severity: float
    realistic: bool  # the severity the targets are judged at
    fully_visible: bool  # the whole garment in view: held to the clean-relative target
    accuracy: float
    relative: float  # accuracy / clean accuracy of the same sample (nan if clean accuracy is 0)
    confident_share: float  # share answered without "unsure"
    confident_accuracy: float  # accuracy of the confident answers (nan if none)
    input_change: float  # mean |model input - the plain photo's model input|, grey levels (nan where not defined)
    count: int
    # The confident share and accuracy judged by the photo thresholds fitted without this condition
    # (`fmnist.evaluation.leave_out`); nan where not measured.
    unseen_confident_share: float = math.nan
    unseen_confident_accuracy: float = math.nan


def _partners(truth: np.ndarray) -> np.ndarray:
    """For each sample position, another position holding a garment of another class (the neighbour on the rail)."""
    n = len(truth)
    partners = np.empty(n, dtype=np.int64)
    for j in range(n):
        k = (j + n // 2) % n
        while truth[k] == truth[j] and k != j - 1:
            k = (k + 1) % n
        partners[j] = k
    return partners


def wild_robustness(
    classify: Callable[[list[bytes]], Answers],
    images: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    stream: int = REPORT_STREAM,
    per_class: int = 20,
    size: int = 224,
    conditions: Sequence[WildCondition] = WILD_CONDITIONS,
    leave_out: LeaveOut | None = None,
) -> list[WildResult]:
    """Accuracy, confident share and confident accuracy of `classify` on a class-balanced sample of `images`
    (N, 28, 28) uint8, clean (the 28x28 PNGs) and rendered under every condition at both severities.

    The sample is `photos.sample_indices(labels, per_class, seed)`; image i is rendered with
    `wild_rng(seed, stream, i)`. `classify` gets one list of uploads per row, in sample order. With `leave_out`,
    each condition's answers are also judged by the photo thresholds fitted without it (`unseen_*`).
    """
    indices = sample_indices(labels, per_class, seed)  # (n,)
    truth = np.asarray(labels).reshape(-1)[indices].astype(np.int64)  # (n,)
    sample = np.asarray(images)[indices]  # (n, 28, 28)
    partners = sample[_partners(truth)]  # (n, 28, 28)
    clean = figures(classify([render_clean(x) for x in sample]), truth)
    log.info("wild photos: %d images (%d per class), clean accuracy %.3f", len(indices), per_class, clean.accuracy)
    rows = [_row("clean", "the plain 28x28 images as PNG", 0.0, False, True, clean, clean.accuracy, math.nan)]
    plain_inputs: np.ndarray | None = None
    for condition in conditions:
        severities = condition.severities[:1] if condition.name == "plain" else condition.severities
        for k, severity in enumerate(severities):
            render = partial(_render_one, condition=condition, severity=severity, seed=seed, stream=stream, size=size)
            with ThreadPoolExecutor(max_workers=WORKERS) as pool:
                uploads = list(pool.map(render, sample, partners, indices))
            answers = classify(uploads)
            change = math.nan
            if condition.name == "plain":
                plain_inputs = answers.inputs
            elif plain_inputs is not None and answers.inputs is not None:
                change = float(np.abs(answers.inputs.astype(np.float32) - plain_inputs).mean())
            row = _row(
                condition.name,
                condition.description,
                severity,
                k == 0,
                condition.fully_visible,
                figures(answers, truth),
                clean.accuracy,
                change,
                unseen_figures(leave_out, condition.name, answers, truth),
            )
            rows.append(row)
            log.info(
                "wild photos: %s at %g: accuracy %.3f, confident %.3f, right when confident %.3f",
                row.condition,
                severity,
                row.accuracy,
                row.confident_share,
                row.confident_accuracy,
            )
    return rows


def _row(
    name: str,
    description: str,
    severity: float,
    realistic: bool,
    fully_visible: bool,
    found: Any,
    clean: float,
    change: float,
    unseen: Figures | None = None,
) -> WildResult:
    return WildResult(
        condition=name,
        description=description,
        severity=severity,
        realistic=realistic,
        fully_visible=fully_visible,
        accuracy=found.accuracy,
        relative=found.accuracy / clean if clean > 0 else math.nan,
        confident_share=found.confident_share,
        confident_accuracy=found.confident_accuracy,
        input_change=change,
        count=found.count,
        unseen_confident_share=math.nan if unseen is None else unseen.confident_share,
        unseen_confident_accuracy=math.nan if unseen is None else unseen.confident_accuracy,
    )


def _render_one(
    image: np.ndarray,
    other: np.ndarray,
    index: int,
    condition: WildCondition,
    severity: float,
    seed: int,
    stream: int,
    size: int,
) -> bytes:
    return render_wild(image, condition, severity, wild_rng(seed, stream, int(index)), size=size, other=other)


def worst_conditions(rows: Sequence[WildResult]) -> dict[str, WildResult]:
    """The realistic-severity rows that do worst on each figure: 'accuracy' (among fully visible garments),
    'confident_share' and 'confident_accuracy' (a row with no confident answer does not count there)."""
    realistic = [r for r in rows if r.realistic and r.condition not in ("clean", "plain")]
    if not realistic:
        raise ValueError("no realistic-severity rows in the results")
    visible = [r for r in realistic if r.fully_visible] or realistic
    answered = [r for r in realistic if not math.isnan(r.confident_accuracy)] or realistic
    return {
        "accuracy": min(visible, key=lambda r: r.accuracy),
        "confident_share": min(realistic, key=lambda r: r.confident_share),
        "confident_accuracy": min(answered, key=lambda r: _or_zero(r.confident_accuracy)),
    }


def _or_zero(x: float) -> float:
    return 0.0 if math.isnan(x) else x
