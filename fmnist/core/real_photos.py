"""Real phone photographs of clothes, labelled: the project's compact copy of a public data set, checked file by file.

The photos (`data/real_photos/`, built by its `rebuild.py` from the CC0 "clothing dataset (subset)", its `train/`
folder only) show garments laid on beds, floors, tiles and rugs or hung against walls: nobody on this project made
them, unlike every rendered photo suite. Each upstream folder maps to what a right answer is:

    t-shirt -> T-shirt/top, pants -> Trouser, dress -> Dress, outwear -> Coat, shirt -> Shirt   one exact class
    longsleeve -> the tops family (T-shirt/top, Pullover, Coat, Shirt)                          a family
    shoes -> the footwear family (Sandal, Sneaker, Ankle boot); the photos show pairs from above  a family
    hat, shorts, skirt -> no Fashion-MNIST class: the honest answer is "unsure"                   no class

The split (fit, validation, report) was drawn once, seeded, and is recorded in the manifest: `fit` may be trained or
fitted on, `validation` chooses defaults, `report` is read by the evaluate step only, like the test set.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fmnist.core.config import PROJECT_ROOT
from fmnist.core.data import FAMILIES

DATA_DIR = PROJECT_ROOT / "data" / "real_photos"
MANIFEST = "manifest.csv"
Split = Literal["fit", "validation", "report"]
SPLITS: tuple[Split, ...] = ("fit", "validation", "report")

# Upstream folder -> (the exact class, or None; the family, or None when the garment has no class at all).
LABELS: dict[str, tuple[int | None, str | None]] = {
    "t-shirt": (0, "tops"),
    "pants": (1, "trousers"),
    "dress": (3, "dress"),
    "outwear": (4, "tops"),
    "shirt": (6, "tops"),
    "longsleeve": (None, "tops"),
    "shoes": (None, "footwear"),
    "hat": (None, None),
    "shorts": (None, None),
    "skirt": (None, None),
}


class RealPhotoError(RuntimeError):
    """The copy is incomplete or changed: the message names the file and what is wrong with it."""


@dataclass(frozen=True)
class RealPhoto:
    """One labelled photograph: the file's bytes (JPEG) and what counts as a right answer."""

    name: str  # path inside data/real_photos, e.g. images/dress/<id>.jpg
    folder: str  # the upstream folder (its label)
    split: Split
    data: bytes

    @property
    def exact(self) -> int | None:
        """The one right Fashion-MNIST class, where there is one."""
        return LABELS[self.folder][0]

    @property
    def family(self) -> str | None:
        """The garment family; None for a garment Fashion-MNIST has no class for."""
        return LABELS[self.folder][1]

    @property
    def right_classes(self) -> tuple[int, ...]:
        """Every class counted right for a family answer (empty: no class is right, only "unsure")."""
        return FAMILIES[self.family] if self.family else ()

    @property
    def taught_classes(self) -> tuple[int, ...]:
        """The classes training teaches for this photo: its one exact class where Fashion-MNIST has it (a T-shirt is
        taught as T-shirt/top, not as any top), the family's classes otherwise (a longsleeve may be any top); empty
        for a garment without a class."""
        return (self.exact,) if self.exact is not None else self.right_classes


def load_real_photos(split: Split, root: Path = DATA_DIR) -> list[RealPhoto]:
    """The photos of one split, in manifest order, each checked against its recorded SHA-256."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise RealPhotoError(f"{manifest}: missing; rebuild with data/real_photos/rebuild.py")
    photos = []
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] != split:
                continue
            if row["upstream_folder"] not in LABELS:
                raise RealPhotoError(f"{row['file']}: unknown folder {row['upstream_folder']!r} in {manifest}")
            path = root / row["file"]
            try:
                data = path.read_bytes()
            except OSError as err:
                raise RealPhotoError(f"{path}: cannot be read ({err.strerror}); rebuild with rebuild.py") from None
            digest = hashlib.sha256(data).hexdigest()
            if digest != row["sha256"]:
                raise RealPhotoError(
                    f"{path}: SHA-256 {digest[:12]}... differs from the manifest's {row['sha256'][:12]}..."
                )
            photos.append(RealPhoto(row["file"], row["upstream_folder"], split, data))
    return photos


def fit_parts(photos: list[RealPhoto]) -> tuple[list[RealPhoto], list[RealPhoto]]:
    """The `fit` split in two halves, alternating within each folder in manifest order: the photos a model may train
    on, and the photos the abstention fit holds its photo threshold to, so that the threshold is never fitted on
    what the network has learnt by heart."""
    counts: dict[str, int] = {}
    train: list[RealPhoto] = []
    calibrate: list[RealPhoto] = []
    for photo in photos:
        counts[photo.folder] = counts.get(photo.folder, 0) + 1
        (train if counts[photo.folder] % 2 else calibrate).append(photo)
    return train, calibrate


def sample_per_folder(photos: list[RealPhoto], per_folder: int) -> list[RealPhoto]:
    """The first `per_folder` photos of each upstream folder, in manifest order (all of them when there are fewer)."""
    counts: dict[str, int] = {}
    kept = []
    for photo in photos:
        counts[photo.folder] = counts.get(photo.folder, 0) + 1
        if counts[photo.folder] <= per_folder:
            kept.append(photo)
    return kept
