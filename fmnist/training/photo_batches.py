"""Real phone photographs in the training batches: the photos as the service would see them, and their loss.

A photo is labelled by the classes training teaches for it (`fmnist.core.real_photos.RealPhoto.taught_classes`): one
for a T-shirt, four for a longsleeve (any top), three for a pair of shoes. Its loss is the negative log of the
probability the model gives to that set, -log sum_{c right} p(c | x): cross-entropy for one class, and for a family no
push towards any one member of it. A garment without a class (a hat, shorts, a skirt) has an empty set: its loss is
the divergence of the model's answer from the uniform one, KL(uniform || p) (outlier exposure), and a trial trains on
such photos only with `real_photo_no_class`.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from fmnist.core.data import NUM_CLASSES
from fmnist.core.real_photos import RealPhoto
from fmnist.core.runtime import available_cores
from fmnist.images.normalise import prepare_upload

log = logging.getLogger(__name__)

# The pixel limit photos are decoded under: the service's default (a phone photo is far below it).
MAX_PHOTO_PIXELS = 40_000_000


def photo_training_set(photos: list[RealPhoto]) -> tuple[np.ndarray, np.ndarray]:
    """(images (M, 28, 28) uint8, right (M, 10) bool: the taught classes, the exact one where it exists, none for a
    garment without a class) of the photos, normalised as uploads are; photos whose upload normalises to nothing (no
    garment found) are left out, as the service marks them unsure whatever the model says."""
    with ThreadPoolExecutor(max_workers=available_cores()) as pool:  # decoding releases the GIL
        prepared = list(pool.map(lambda photo: prepare_upload(photo.data, MAX_PHOTO_PIXELS), photos))
    kept = [(q.pixels, p) for q, p in zip(prepared, photos, strict=True) if not q.empty]
    images = np.zeros((len(kept), 28, 28), dtype=np.uint8)
    right = np.zeros((len(kept), NUM_CLASSES), dtype=bool)
    for i, (pixels, photo) in enumerate(kept):
        images[i] = pixels
        right[i, list(photo.taught_classes)] = True
    log.info(
        "%d real photographs to train on, %d of them without a class (%d without a garment found)",
        len(kept),
        int((~right.any(axis=1)).sum()),
        len(photos) - len(kept),
    )
    return images, right


def set_likelihood_loss(logits: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Per image, -log sum_{c right} p(c | x), or KL(uniform || p) where no class is right: logits (B, C) float,
    right (B, C) bool -> (B,)."""
    taught = right.any(1, keepdim=True)  # (B, 1)
    total = torch.logsumexp(logits, 1)  # (B,)
    # A row without a right class sums over every class here (a finite 0 below, never selected), so no gradient is
    # taken through an empty set's -inf.
    in_set = torch.logsumexp(logits.masked_fill(~(right | ~taught), float("-inf")), 1)  # (B,)
    from_uniform = total - logits.mean(1) - math.log(logits.shape[1])  # (B,): -mean_c log p(c) - log C
    return torch.where(taught.squeeze(1), total - in_set, from_uniform)
