"""Drift signals: does recent traffic still look like the data the served model was trained and judged on?

The evaluate step stores a `DriftReference` in the model record (the training class prior, the share of "unsure"
answers and per-image input statistics of the validation split, which is drawn from the training set; the test set
chooses nothing, not even a reference). The service keeps a `DriftWindow` of its recent predictions and compares the
two on read:

- `class_divergence`: Jensen-Shannon divergence (bits, 0..1) of the predicted-class distribution from the prior;
- `unsure_share`: share of answers marked unsure, against the share on validation images; the allowed increase is a
  share of the answers that were confident there, so the threshold stays below 1 and the signal can always fire;
- `inverted_share`: share of uploads whose garment was darker than its backdrop (product photos, not scans);
- `mean_pixel_shift`, `foreground_shift`: how far the window's mean of each input statistic is from the reference,
  in units of the reference's spread between images (an effect size, so the threshold does not depend on the window).

Updating the window is O(1) per prediction (a deque and running sums); the statistics are computed when read.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# A pixel brighter than this (of 255) counts as garment: Fashion-MNIST's background is black (0) up to a little
# scanner noise, and 32 is above that noise while below the darkest fabric textures that still read as garment.
FOREGROUND_LEVEL = 32


def image_statistics(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, 28, 28) uint8 model inputs -> per-image mean pixel (0..1) and foreground share (0..1), float64 (B,)."""
    flat = pixels.reshape(len(pixels), -1)
    return flat.mean(axis=1) / 255.0, (flat > FOREGROUND_LEVEL).mean(axis=1)


@dataclass(frozen=True)
class DriftReference:
    """What in-distribution traffic looks like for one model; stored in its record's metadata as plain data."""

    class_prior: tuple[float, ...]  # share of each class in the training data
    unsure_share: float | None  # share of validation answers marked unsure (1 - coverage); None if unknown
    mean_pixel: tuple[float, float]  # mean and standard deviation, across images, of an image's mean pixel (0..1)
    foreground: tuple[float, float]  # the same for the share of foreground pixels
    images: int  # how many images the input statistics were computed on

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftReference:
        return cls(
            class_prior=tuple(float(p) for p in data["class_prior"]),
            unsure_share=None if data.get("unsure_share") is None else float(data["unsure_share"]),
            mean_pixel=(float(data["mean_pixel"][0]), float(data["mean_pixel"][1])),
            foreground=(float(data["foreground"][0]), float(data["foreground"][1])),
            images=int(data["images"]),
        )

    @classmethod
    def uniform(cls, num_classes: int) -> DriftReference:
        """A stand-in for records made before references existed: a uniform prior (Fashion-MNIST's, by design) and
        no input statistics (their signals read as unknown)."""
        return cls((1.0 / num_classes,) * num_classes, None, (math.nan, math.nan), (math.nan, math.nan), 0)


def reference_from_images(
    images: np.ndarray, labels: np.ndarray, num_classes: int, unsure_share: float | None
) -> DriftReference:
    """The reference of a model trained on data like `images` (uint8, (N, 28, 28)) with these labels."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    mean, foreground = image_statistics(images)
    return DriftReference(
        class_prior=tuple(float(c) for c in counts / counts.sum()),
        unsure_share=None if unsure_share is None else float(unsure_share),
        mean_pixel=(float(mean.mean()), float(mean.std())),
        foreground=(float(foreground.mean()), float(foreground.std())),
        images=len(images),
    )


@dataclass(frozen=True)
class DriftThresholds:
    """When a signal counts as drift; the service's settings fill these in."""

    class_divergence: float = 0.1  # JS divergence in bits
    unsure_increase: float = 0.15  # this share of the reference's confident answers turning unsure
    inverted_share: float = 0.5  # most uploads are photos, not scans
    input_shift: float = 0.5  # reference standard deviations
    min_samples: int = 100  # below this many predictions in the window, no signal is judged


@dataclass(frozen=True)
class Signal:
    """One drift signal: its value over the window, what it is compared with, and whether it is past its threshold."""

    name: str
    value: float | None  # None: not measurable (no data yet, or no reference)
    reference: float | None
    threshold: float
    past_threshold: bool
    description: str


@dataclass(frozen=True)
class DriftSummary:
    """The window's signals at one moment."""

    window_size: int
    count: int
    min_samples: int
    signals: list[Signal]

    @property
    def drifting(self) -> bool:
        return any(s.past_threshold for s in self.signals)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence of two distributions, in bits (0: identical, 1: disjoint)."""
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        mask = a > 0
        return float((a[mask] * np.log2(a[mask] / b[mask])).sum())

    return max(0.0, (kl(p, m) + kl(q, m)) / 2)


class DriftWindow:
    """The last `size` predictions, as running sums: `add` is O(1), `summary` does the arithmetic.

    Thread-safe (one short lock), so requests scored on worker threads may record too.
    """

    def __init__(self, size: int, num_classes: int) -> None:
        self.size, self.num_classes = size, num_classes
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._items: deque[tuple[int, bool, bool | None, float, float]] = deque()
            self._classes = [0] * self.num_classes
            self._unsure = 0
            self._inverted = 0
            self._known_polarity = 0
            self._mean_pixel = 0.0
            self._foreground = 0.0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, class_index: int, unsure: bool, inverted: bool | None, mean_pixel: float, foreground: float) -> None:
        """Record one prediction; the oldest drops out once the window is full."""
        item = (class_index, unsure, inverted, mean_pixel, foreground)
        with self._lock:
            self._items.append(item)
            self._apply(item, +1)
            if len(self._items) > self.size:
                self._apply(self._items.popleft(), -1)

    def _apply(self, item: tuple[int, bool, bool | None, float, float], sign: int) -> None:
        class_index, unsure, inverted, mean_pixel, foreground = item
        self._classes[class_index] += sign
        self._unsure += sign * unsure
        if inverted is not None:
            self._known_polarity += sign
            self._inverted += sign * inverted
        self._mean_pixel += sign * mean_pixel
        self._foreground += sign * foreground

    def summary(self, reference: DriftReference, thresholds: DriftThresholds) -> DriftSummary:
        """Every signal over the current window, against `reference`."""
        with self._lock:
            n, classes = len(self._items), list(self._classes)
            unsure, inverted, known = self._unsure, self._inverted, self._known_polarity
            mean_pixel, foreground = self._mean_pixel, self._foreground
        judged = n >= thresholds.min_samples

        def signal(name: str, value: float | None, ref: float | None, threshold: float, text: str) -> Signal:
            past = judged and value is not None and value > threshold
            return Signal(name, value, ref, threshold, past, text)

        prior = np.asarray(reference.class_prior, dtype=float)
        divergence = js_divergence(np.asarray(classes, dtype=float), prior) if n else None
        unsure_ref = reference.unsure_share if reference.unsure_share is not None else 0.0
        signals = [
            signal(
                "class_divergence",
                divergence,
                0.0,
                thresholds.class_divergence,
                "Jensen-Shannon divergence (bits) of the predicted classes from the training class prior",
            ),
            signal(
                "unsure_share",
                unsure / n if n else None,
                reference.unsure_share,
                unsure_threshold(unsure_ref, thresholds.unsure_increase),
                "share of answers marked unsure; threshold: the validation share plus the allowed increase of the rest",
            ),
            signal(
                "inverted_share",
                inverted / known if known else None,
                0.0,
                thresholds.inverted_share,
                "share of uploads (and normalised pixels) whose garment was darker than its backdrop",
            ),
            signal(
                "mean_pixel_shift",
                _shift(mean_pixel / n if n else None, reference.mean_pixel),
                reference.mean_pixel[0] if math.isfinite(reference.mean_pixel[0]) else None,
                thresholds.input_shift,
                "|window mean - reference mean| of the model input's mean pixel, in reference standard deviations",
            ),
            signal(
                "foreground_shift",
                _shift(foreground / n if n else None, reference.foreground),
                reference.foreground[0] if math.isfinite(reference.foreground[0]) else None,
                thresholds.input_shift,
                "|window mean - reference mean| of the model input's foreground share, in reference standard"
                " deviations",
            ),
        ]
        return DriftSummary(self.size, n, thresholds.min_samples, signals)


def unsure_threshold(reference: float, increase: float) -> float:
    """The unsure share past which traffic counts as drifting: `reference` plus `increase` of the rest. Below 1 for
    any reference below 1 (a reference of 0.9 plus a flat 0.15 would be a threshold no window can pass)."""
    return reference + increase * (1.0 - reference)


def _shift(value: float | None, reference: tuple[float, float]) -> float | None:
    mean, std = reference
    if value is None or not (math.isfinite(mean) and math.isfinite(std)) or std <= 0:
        return None
    return abs(value - mean) / std
