"""Real photographs of things that are not garments, and handwritten digits: the honest test of "unsure".

Synthetic non-garments (`fmnist.evaluation.nongarments`) are noise, blanks and patterns; a user's mistaken upload is
more often a photograph of something else: a cat, a cup, a face, a page, the moon. Several well-kept Python packages
ship sample photographs inside their wheels, so they are available offline and identical everywhere:

- scikit-image (`skimage/data`): a cameraman, a cat, coffee, coins, a horse, a motorcycle, a rocket, the moon, a
  retina, a page of text, bricks, grass, gravel, a microscope slide, the Hubble deep field, 200 small faces (LFW);
- scikit-learn (`sklearn/datasets/images`): a Chinese temple, a flower;
- matplotlib (`mpl-data/sample_data`): a portrait of Grace Hopper, a wrapped present.

Each photograph gives several seeded square crops (the whole frame and parts of it, as a phone would frame them).
Handwritten digits (scikit-learn's 8x8 digits, upscaled and padded to 28x28 as MNIST was made) are the
near-distribution case: light strokes on black, the very form of a Fashion-MNIST image, yet no garment.

Photographs are split once into a report part and a development part (`part="report"` or `"dev"`, alternating in
sorted order; the faces and digits by index parity), so a choice made on the development set is never judged on
the images that chose it.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

Part = Literal["report", "dev"]

# Photographs (files of real scenes, not drawings or charts) by package and path inside it.
PHOTOGRAPHS: tuple[tuple[str, str], ...] = (
    ("skimage", "data/brick.png"),
    ("skimage", "data/camera.png"),
    ("skimage", "data/cell.png"),
    ("skimage", "data/chelsea.png"),
    ("skimage", "data/clock_motion.png"),
    ("skimage", "data/coffee.png"),
    ("skimage", "data/coins.png"),
    ("skimage", "data/grass.png"),
    ("skimage", "data/gravel.png"),
    ("skimage", "data/hubble_deep_field.jpg"),
    ("skimage", "data/ihc.png"),
    ("skimage", "data/moon.png"),
    ("skimage", "data/motorcycle_left.png"),
    ("skimage", "data/page.png"),
    ("skimage", "data/retina.jpg"),
    ("skimage", "data/rocket.jpg"),
    ("skimage", "data/text.png"),
    ("sklearn", "datasets/images/china.jpg"),
    ("sklearn", "datasets/images/flower.jpg"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ("matplotlib", "mpl-data/sample_data/Minduka_Present_Blue_Pack.png"),
)
FACES = ("skimage", "data/lfw_subset.npy")  # (200, 25, 25) float grayscale faces
# Crops per photograph: the whole frame, then random squares of 35-90% of the short side.
CROPS_PER_PHOTO = 6
CROP_SIDE = (0.35, 0.9)
# Crops are uploaded at most this many pixels a side, as a site or a phone app would resize them.
UPLOAD_SIDE = 224
FACE_SIDE = 112
# Digits: 8x8 at 0-16 -> a 20x20 stroke box centred in 28x28, as MNIST's digits were.
DIGIT_BOX = 20


class MissingSamples(RuntimeError):
    """A package that ships the sample photographs is not installed."""


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise MissingSamples(f"{package} is not installed; it ships the sample photograph {relative}")
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise MissingSamples(f"{package} has no sample photograph {relative} (looked at {path})")
    return path


def _part_of(items: list[str], part: Part) -> list[str]:
    ordered = sorted(items)
    return ordered[0::2] if part == "report" else ordered[1::2]


def _encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def real_photographs(part: Part, seed: int, crops: int = CROPS_PER_PHOTO) -> list[tuple[str, bytes]]:
    """(name, PNG bytes) of `crops` crops of every photograph in `part`, and that part's faces.

    Deterministic in (part, seed, crops). Raises MissingSamples naming the package when one is not installed.
    """
    names = [f"{package}:{relative}" for package, relative in PHOTOGRAPHS]
    out: list[tuple[str, bytes]] = []
    for name in _part_of(names, part):
        package, relative = name.split(":", 1)
        with Image.open(_package_file(package, relative)) as opened:
            photo = opened.convert("RGB")
        rng = np.random.default_rng([seed, sum(name.encode())])
        w, h = photo.size
        for k in range(crops):
            side = min(w, h) if k == 0 else round(min(w, h) * rng.uniform(*CROP_SIDE))
            left = int(rng.integers(0, w - side + 1))
            top = int(rng.integers(0, h - side + 1))
            crop = photo.crop((left, top, left + side, top + side))
            if side > UPLOAD_SIDE:
                crop = crop.resize((UPLOAD_SIDE, UPLOAD_SIDE), Image.Resampling.LANCZOS)
            out.append((Path(relative).stem, _encode(crop)))
    faces = np.load(_package_file(*FACES))  # (200, 25, 25) float in [0, 1]
    for i in range(0 if part == "report" else 1, len(faces), 2):
        face = Image.fromarray(np.clip(faces[i] * 255.0, 0, 255).astype(np.uint8))
        out.append(("face", _encode(face.resize((FACE_SIDE, FACE_SIDE), Image.Resampling.BICUBIC))))
    return out


def handwritten_digits(part: Part, count: int = 200) -> list[tuple[str, bytes]]:
    """(digit, PNG bytes) of up to `count` of scikit-learn's handwritten digits in `part`, as 28x28 images in
    Fashion-MNIST's form (light strokes on black). Raises MissingSamples without scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise MissingSamples(f"scikit-learn is not installed; it ships the handwritten digits ({err})") from None
    digits = load_digits()
    out: list[tuple[str, bytes]] = []
    for i in range(0 if part == "report" else 1, len(digits.images), 2)[:count]:
        strokes = (digits.images[i] / 16.0 * 255.0).astype(np.float32)  # (8, 8)
        box = Image.fromarray(strokes, mode="F").resize((DIGIT_BOX, DIGIT_BOX), Image.Resampling.BICUBIC)
        canvas = np.zeros((28, 28), np.uint8)
        offset = (28 - DIGIT_BOX) // 2
        canvas[offset : offset + DIGIT_BOX, offset : offset + DIGIT_BOX] = np.clip(np.asarray(box), 0, 255).round()
        out.append((str(int(digits.target[i])), _encode(Image.fromarray(canvas))))
    return out
