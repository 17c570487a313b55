"""The named perturbations do what their names say; the table compares each against clean accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fmnist.evaluation.robustness import (
    PERTURBATIONS,
    brightness,
    contrast,
    gaussian_noise,
    hflip,
    robustness_table,
    shift,
)


def test_shift_moves_pixels_and_fills_with_background():
    x = np.zeros((1, 28, 28), dtype=np.uint8)
    x[0, 10, 10] = 200
    shifted = shift(x, 2, 1)
    assert shifted[0, 12, 11] == 200 and shifted.sum() == 200
    edge = np.full((1, 28, 28), 255, dtype=np.uint8)
    assert (shift(edge, 1, 1)[0, 0, :] == 0).all() and (shift(edge, 1, 1)[0, :, 0] == 0).all()
    assert (shift(edge, -1, 0)[0, -1, :] == 0).all()


def test_brightness_contrast_noise_and_flip():
    x = np.array([[[0, 100, 250]]], dtype=np.uint8)
    assert brightness(x, 0.1).tolist() == [[[26, 126, 255]]]  # +25.5 grey levels, clipped at 255
    assert contrast(np.array([[[50, 150]]], dtype=np.uint8), 0.5).tolist() == [[[75, 125]]]
    assert hflip(x).tolist() == [[[250, 100, 0]]]
    noisy = gaussian_noise(np.full((4, 28, 28), 128, dtype=np.uint8), 0.1)
    assert noisy.dtype == np.uint8 and 20 < noisy.astype(float).std() < 30
    assert np.array_equal(noisy, gaussian_noise(np.full((4, 28, 28), 128, dtype=np.uint8), 0.1))  # seeded


def test_every_perturbation_keeps_shape_and_dtype():
    x = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    names = [p.name for p in PERTURBATIONS]
    assert {"shift_1px", "shift_2px", "brighter", "low_contrast", "gaussian_noise", "hflip"} <= set(names)
    for p in PERTURBATIONS:
        out = p.apply(x)
        assert out.shape == x.shape and out.dtype == np.uint8, p.name


class LeftHalfBright(nn.Module):
    """Predicts class 1 when the left half of the image is brighter than the right half, else class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = x[..., :14].mean((1, 2, 3)), x[..., 14:].mean((1, 2, 3))
        return torch.stack([right - left, left - right], 1)


def test_table_against_clean_accuracy():
    images = np.zeros((20, 28, 28), dtype=np.uint8)
    images[:10, :, :14] = 255  # class 1: bright left half
    images[10:, :, 14:] = 255  # class 0: bright right half
    labels = np.array([1] * 10 + [0] * 10)
    rows = robustness_table(LeftHalfBright(), images, labels, torch.device("cpu"))
    by_name = {r["name"]: r for r in rows}
    assert rows[0]["name"] == "clean" and by_name["clean"]["accuracy"] == 1.0
    assert by_name["hflip"]["accuracy"] == 0.0  # a mirror swaps the halves
    assert by_name["hflip"]["change"] == pytest.approx(-1.0)
    assert by_name["shift_1px"]["accuracy"] == 1.0
