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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from fmnist.core.data import NUM_CLASSES
from fmnist.core.real_photos import RealPhoto
from fmnist.core.runtime import available_cores
from fmnist.images.normalise import prepare_upload
from fmnist.images.uploads import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)


def real_photo_inputs(
    photos: Sequence[RealPhoto], classes: Callable[[RealPhoto], tuple[int, ...]]
) -> tuple[np.ndarray, np.ndarray]:
    """(images (m, 28, 28) uint8, right (m, 10) bool: `classes(photo)` marked) of `photos` through the service's
    normalisation, under its pixel limit; photos whose upload normalises to nothing (no garment found) are left out,
    as the service marks them unsure whatever the model says."""
    with ThreadPoolExecutor(max_workers=available_cores()) as pool:  # decoding releases the GIL
        prepared = list(pool.map(lambda photo: prepare_upload(photo.data, DEFAULT_MAX_PIXELS), photos))
    kept = [(q.pixels, p) for q, p in zip(prepared, photos, strict=True) if not q.empty]
    images = np.zeros((len(kept), 28, 28), dtype=np.uint8)
    right = np.zeros((len(kept), NUM_CLASSES), dtype=bool)
    for i, (pixels, photo) in enumerate(kept):
        images[i] = pixels
        right[i, list(classes(photo))] = True
    return images, right


def photo_training_set(photos: Sequence[RealPhoto]) -> tuple[np.ndarray, np.ndarray]:
    """(images (M, 28, 28) uint8, right (M, 10) bool: the taught classes, the exact one where it exists, none for a
    garment without a class) of the photos, as `real_photo_inputs` prepares them."""
    images, right = real_photo_inputs(photos, lambda photo: photo.taught_classes)
    log.info(
        "%d real photographs to train on, %d of them without a class (%d without a garment found)",
        len(right),
        int((~right.any(axis=1)).sum()),
        len(photos) - len(right),
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
