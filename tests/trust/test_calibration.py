"""Calibration numbers on hand-checkable cases: ECE, NLL and temperature scaling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fmnist.trust.calibration import (
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
)


def two_class_probs(confidence: float, n: int) -> np.ndarray:
    """(n, 2) probabilities that always predict class 0 with the given confidence."""
    return np.tile([confidence, 1 - confidence], (n, 1))


def test_perfectly_calibrated_predictor_has_zero_ece():
    # Confidence 0.8, and exactly 80% of the predictions are right.
    probs = two_class_probs(0.8, 100)
    labels = np.array([0] * 80 + [1] * 20)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_overconfident_predictor_ece_equals_the_gap():
    # Confidence 0.9 but only 60% right: ECE is the gap, 0.3.
    probs = two_class_probs(0.9, 100)
    labels = np.array([0] * 60 + [1] * 40)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.3)


def test_ece_weights_bins_by_count():
    # 50 predictions at 0.95 all right (gap 0.05) and 50 at 0.55 half right (gap 0.05) -> 0.05;
    # then 100 at 0.75 all right (gap 0.25) added -> (50*0.05 + 50*0.05 + 100*0.25) / 200 = 0.15.
    probs = np.concatenate([two_class_probs(0.95, 50), two_class_probs(0.55, 50), two_class_probs(0.75, 100)])
    labels = np.array([0] * 50 + [0] * 25 + [1] * 25 + [0] * 100)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.15)


def test_reliability_bins_are_fifteen_and_cover_every_prediction():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=500)
    labels = rng.integers(0, 10, size=500)
    bins = reliability_bins(probs, labels)
    assert len(bins) == 15
    assert sum(b["count"] for b in bins) == 500
    assert bins[0]["lo"] == 0.0 and bins[-1]["hi"] == 1.0


def test_nll_of_uniform_logits_is_log_classes():
    assert negative_log_likelihood(torch.zeros(4, 10), np.arange(4)) == pytest.approx(math.log(10))


def miscalibrated_logits(scale: float, n: int = 4000, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Logits from a calibrated 10-class model (labels drawn from its own softmax), then multiplied by `scale`."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 10, generator=g) * 2.0
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1).numpy()
    return logits * scale, labels


@pytest.mark.parametrize("scale", [3.0, 0.4])
def test_temperature_scaling_recovers_the_miscalibration_and_lowers_nll(scale):
    # The labels follow softmax(logits), so the true temperature of (logits * scale) is `scale`.
    logits, labels = miscalibrated_logits(scale)
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(scale, rel=0.1)
    before, after = calibration_summary(logits, labels, 1.0), calibration_summary(logits, labels, temperature)
    assert after["nll"] < before["nll"]
    assert after["ece"] < before["ece"]
    assert after["ece"] < 0.03


def test_temperature_of_a_calibrated_model_stays_near_one():
    logits, labels = miscalibrated_logits(1.0, seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.1)


def test_temperature_scaling_does_not_change_predictions():
    logits, labels = miscalibrated_logits(3.0)
    temperature = fit_temperature(logits, labels)
    assert torch.equal((logits / temperature).argmax(1), logits.argmax(1))
