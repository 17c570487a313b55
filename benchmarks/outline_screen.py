"""What the garment's outline costs and changes, and what its screen saves (`fmnist.images.normalise`: a one-round
GrabCut at SCREEN_SIZE decides whether the full outline is drawn).

    python benchmarks/outline_screen.py [--garments 30]

Photo sets: every studio condition (`fmnist.evaluation.photos`) and every in-the-wild condition
(`fmnist.evaluation.wild_photos`, development seed stream) at its realistic severity, rendered from the first
`--garments` training images, and the real photographs' validation split; never the test set. Each set is
normalised (`prepare_upload`, one thread) three ways: without the outline, with the full outline drawn for every
photo, and as shipped (screened). Printed per set: ms per photo each way, the share of photos whose model input the
outline changes (its box replaced the contrast's), and the share the screen changes against the full outline.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from unittest import mock

import numpy as np

import fmnist.images.normalise as normalise
from fmnist.core.data import load_dataset
from fmnist.core.real_photos import load_real_photos
from fmnist.evaluation.photos import PHOTO_CONDITIONS, photo_rng, render_photo
from fmnist.evaluation.wild_photos import DEV_STREAM, WILD_CONDITIONS, render_wild, wild_rng
from fmnist.images.uploads import DEFAULT_MAX_PIXELS


def inputs(uploads: list[bytes]) -> tuple[np.ndarray, float]:
    """(n, 28, 28) model inputs of `uploads` and the mean seconds per upload."""
    start = time.perf_counter()
    pixels = np.stack([normalise.prepare_upload(data, DEFAULT_MAX_PIXELS).pixels for data in uploads])
    return pixels, (time.perf_counter() - start) / len(uploads)


def changed(a: np.ndarray, b: np.ndarray) -> float:
    """Share of images whose (n, 28, 28) inputs differ anywhere."""
    return float(np.mean((a != b).reshape(len(a), -1).any(axis=1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--garments", type=int, default=30, help="training images rendered under each condition")
    args = parser.parse_args()
    images = load_dataset().train_images[: args.garments]
    sets: dict[str, list[bytes]] = {
        "studio": [
            render_photo(x, c, c.severities[c.realistic], photo_rng(0, i))
            for c in PHOTO_CONDITIONS
            for i, x in enumerate(images)
        ],
        "in the wild": [
            render_wild(x, c, c.severities[0], wild_rng(0, DEV_STREAM, i), other=images[-1 - i])
            for c in WILD_CONDITIONS
            for i, x in enumerate(images)
        ],
        "real (validation)": [photo.data for photo in load_real_photos("validation")],
    }
    no_outline: Callable[..., None] = lambda *_args, **_kwargs: None  # noqa: E731
    for name, uploads in sets.items():
        with mock.patch.object(normalise, "_garment_outline", no_outline):
            without, t_without = inputs(uploads)
        # No overlap reaches 2: the full outline is drawn for every photo.
        with mock.patch.object(normalise, "SCREEN_AGREEMENT", 2.0):
            full, t_full = inputs(uploads)
        screened, t_screened = inputs(uploads)
        print(
            f"{name:<18} {len(uploads):4d} photos: ms per photo without the outline {1e3 * t_without:.2f}, "
            f"full {1e3 * t_full:.2f}, screened {1e3 * t_screened:.2f}; the outline changes the input of "
            f"{100 * changed(without, full):.1f}%, the screen changes it against the full outline for "
            f"{100 * changed(full, screened):.1f}%"
        )


if __name__ == "__main__":
    main()
