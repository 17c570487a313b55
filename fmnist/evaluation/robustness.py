"""Accuracy under small, named perturbations a deployed model meets, against its clean accuracy.

Each perturbation maps (N, 28, 28) uint8 images to uint8 images of the same shape. They are deterministic (the
noise is seeded) so two evaluations of the same model give the same table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fmnist.core.data import PIXEL_MEAN, PIXEL_STD
from fmnist.core.inference import predict_logits

Perturb = Callable[[np.ndarray], np.ndarray]


def shift(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate by (dy, dx) pixels (positive: down, right), filling with the black background."""
    out = np.zeros_like(images)
    h, w = images.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = images[
        ..., max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def brightness(images: np.ndarray, delta: float) -> np.ndarray:
    """Add `delta` (a fraction of full scale, e.g. 0.15) to every pixel, clipped to [0, 255]."""
    return np.clip(images.astype(np.float32) + delta * 255.0, 0, 255).round().astype(np.uint8)


def contrast(images: np.ndarray, factor: float) -> np.ndarray:
    """Scale each image's deviation from its own mean by `factor` (<1 flattens, >1 sharpens), clipped."""
    x = images.astype(np.float32)
    mean = x.mean(axis=(-2, -1), keepdims=True)
    return np.clip(mean + factor * (x - mean), 0, 255).round().astype(np.uint8)


def gaussian_noise(images: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Add seeded Gaussian noise with standard deviation `sigma` (fraction of full scale), clipped."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, sigma * 255.0, size=images.shape).astype(np.float32)
    return np.clip(images.astype(np.float32) + noise, 0, 255).round().astype(np.uint8)


def hflip(images: np.ndarray) -> np.ndarray:
    """Mirror left-right (label-preserving for clothing, and part of training augmentation)."""
    return np.ascontiguousarray(images[..., ::-1])


@dataclass(frozen=True)
class Perturbation:
    """A named perturbation and a sentence saying what it does."""

    name: str
    description: str
    apply: Perturb


PERTURBATIONS: tuple[Perturbation, ...] = (
    Perturbation("shift_1px", "translated 1 pixel right and down", lambda x: shift(x, 1, 1)),
    Perturbation("shift_2px", "translated 2 pixels right and down", lambda x: shift(x, 2, 2)),
    Perturbation("brighter", "+15% brightness (background no longer black)", lambda x: brightness(x, 0.15)),
    Perturbation("darker", "-15% brightness", lambda x: brightness(x, -0.15)),
    Perturbation("low_contrast", "contrast halved around each image's mean", lambda x: contrast(x, 0.5)),
    Perturbation("gaussian_noise", "Gaussian pixel noise, sigma 8% of full scale", lambda x: gaussian_noise(x, 0.08)),
    Perturbation("hflip", "mirrored left-right", hflip),
)


def robustness_table(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    device: torch.device,
    perturbations: tuple[Perturbation, ...] = PERTURBATIONS,
    mean: float = PIXEL_MEAN,
    std: float = PIXEL_STD,
    clean_accuracy: float | None = None,
) -> list[dict[str, Any]]:
    """One row per perturbation (the first row is 'clean'): accuracy and its change from clean accuracy."""
    y = np.asarray(labels).astype(np.int64)

    def accuracy(x: np.ndarray) -> float:
        logits = predict_logits(model, x, device, mean=mean, std=std)
        return float((logits.argmax(1).numpy() == y).mean())

    clean = accuracy(images) if clean_accuracy is None else clean_accuracy
    rows = [{"name": "clean", "description": "unperturbed test images", "accuracy": clean, "change": 0.0}]
    for p in perturbations:
        acc = accuracy(p.apply(images))
        rows.append({"name": p.name, "description": p.description, "accuracy": acc, "change": acc - clean})
    return rows
