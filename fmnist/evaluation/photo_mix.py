"""Validation garments rendered as photos: what the abstention policy is fitted on besides clean validation images.

A confidence threshold fitted on clean 28x28 images alone knows nothing of the mistakes photos cause: the model is as
sure of itself on a garment with a price tag beside it as on a clean scan, and wrong more often. So the policy's
confidence threshold is fitted on validation images *and* on validation garments rendered as photos by both renderers
(`fmnist.evaluation.photos`, the clean-studio family, and `fmnist.evaluation.wild_photos`, the in-the-wild family) at
their realistic severities, each normalised by the service's own path (`fmnist.images.normalise.prepare_upload`).

Only validation images are rendered, with development seed streams, a different sample of garments for every
condition; the report later renders test images with its own streams. Nothing here reads the test set.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from fmnist.core.runtime import available_cores
from fmnist.evaluation.photos import PHOTO_CONDITIONS, photo_rng, render_photo, sample_indices
from fmnist.evaluation.wild_photos import DEV_STREAM, WILD_CONDITIONS, render_wild, wild_rng
from fmnist.images.normalise import prepare_upload

log = logging.getLogger(__name__)

WORKERS = available_cores()
# Added to the run's seed for the studio renderer's generators and the samples here, so that development photos
# never share a draw with the report's (which use the run's seed itself).
STUDIO_DEV_OFFSET = 7919
# Larger than any upload the renderers produce; decoding refuses nothing here.
MAX_PIXELS = 10_000_000


@dataclass(frozen=True)
class PhotoMix:
    """Validation garments as photos, normalised: the model's inputs and what each one is."""

    pixels: np.ndarray  # (N, 28, 28) uint8 model inputs
    labels: np.ndarray  # (N,) int64 true classes
    empty: np.ndarray  # (N,) bool: normalisation found nothing
    family: np.ndarray  # (N,) str: "studio" or "wild"
    condition: np.ndarray  # (N,) str: the condition's name


def render_validation_photos(
    images: np.ndarray, labels: np.ndarray, seed: int, per_class: int, size: int = 224
) -> PhotoMix:
    """`per_class` validation garments per class for every condition of both families at its realistic severity
    (a different seeded sample per condition), rendered and normalised as the service would see them."""
    uploads: list[bytes] = []
    meta: list[tuple[str, str, int]] = []
    y = np.asarray(labels).reshape(-1)
    for k, studio in enumerate(PHOTO_CONDITIONS):
        chosen = sample_indices(y, per_class, seed + STUDIO_DEV_OFFSET + k)
        severity = studio.severities[studio.realistic]
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            uploads += pool.map(
                lambda i, c=studio, s=severity: render_photo(
                    images[i], c, s, photo_rng(seed + STUDIO_DEV_OFFSET, int(i)), size=size
                ),
                chosen,
            )
        meta += [("studio", studio.name, int(y[i])) for i in chosen]
    offset = len(PHOTO_CONDITIONS)
    for k, wild in enumerate(WILD_CONDITIONS):
        chosen = sample_indices(y, per_class, seed + STUDIO_DEV_OFFSET + offset + k)
        # The neighbour entering the frame: the next chosen garment of another class.
        partners = [next(j for j in np.roll(chosen, -m) if y[j] != y[i]) for m, i in enumerate(chosen, start=1)]
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            uploads += pool.map(
                lambda i, other, c=wild: render_wild(
                    images[i], c, c.severities[0], wild_rng(seed, DEV_STREAM, int(i)), size=size, other=images[other]
                ),
                chosen,
                partners,
            )
        meta += [("wild", wild.name, int(y[i])) for i in chosen]
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        prepared = list(pool.map(lambda data: prepare_upload(data, MAX_PIXELS), uploads))
    families, conditions, truth = zip(*meta, strict=True)
    mix = PhotoMix(
        pixels=np.stack([p.pixels for p in prepared]),
        labels=np.array(truth, dtype=np.int64),
        empty=np.array([p.empty for p in prepared], dtype=bool),
        family=np.array(families),
        condition=np.array(conditions),
    )
    log.info(
        "development photos: %d validation garments rendered under %d conditions (%d per class each)",
        len(mix.labels),
        len(PHOTO_CONDITIONS) + len(WILD_CONDITIONS),
        per_class,
    )
    return mix
