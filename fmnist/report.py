"""The evaluation report: how good the chosen model is, where it fails, how far its confidence can be believed,
and where it came from, assembled as one plain dict (JSON-able) that the cards, the tracker and the record share.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from .calibration import calibration_summary, fit_temperature, softmax
from .data import CLASS_NAMES, PIXEL_MEAN, PIXEL_STD
from .evaluate import predict_logits, report_metrics
from .robustness import robustness_table

log = logging.getLogger(__name__)

# Mistakes shown in the gallery: the most confident ones, which are the most instructive (and the most worrying).
GALLERY_SIZE = 24


def misclassified_examples(
    images: np.ndarray, labels: np.ndarray, probs: torch.Tensor, limit: int = GALLERY_SIZE
) -> list[dict[str, Any]]:
    """The `limit` most confident mistakes: index, true and predicted class, confidence, and the 28x28 image."""
    confidence, predicted = probs.max(1)
    wrong = np.flatnonzero(predicted.numpy() != np.asarray(labels))
    order = wrong[np.argsort(-confidence.numpy()[wrong], kind="stable")][:limit]
    return [
        {
            "index": int(i),
            "true": CLASS_NAMES[int(labels[i])],
            "predicted": CLASS_NAMES[int(predicted[i])],
            "confidence": float(confidence[i]),
            "image": np.asarray(images[i]).tolist(),
        }
        for i in order
    ]


def build_report(
    model: nn.Module,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    device: torch.device,
    provenance: dict[str, Any],
    mean: float = PIXEL_MEAN,
    std: float = PIXEL_STD,
) -> dict[str, Any]:
    """Evaluate `model` on the test set and calibrate it on the validation set; returns the whole report.

    The temperature is fitted on validation logits only; the test set is then scored before and after scaling.
    """
    val_logits = predict_logits(model, val_images, device, mean=mean, std=std)  # (N_val, 10)
    test_logits = predict_logits(model, test_images, device, mean=mean, std=std)  # (N_test, 10)
    temperature = fit_temperature(val_logits, val_labels)
    test = report_metrics(test_logits, test_labels)
    calibration: dict[str, Any] = {
        "temperature": temperature,
        "fitted_on": f"validation split ({len(val_labels)} images)",
        "validation_before": _brief(calibration_summary(val_logits, val_labels, 1.0)),
        "validation_after": _brief(calibration_summary(val_logits, val_labels, temperature)),
        "test_before": calibration_summary(test_logits, test_labels, 1.0),
        "test_after": calibration_summary(test_logits, test_labels, temperature),
    }
    log.info(
        "test accuracy %.4f; temperature %.3f; test ECE %.2f%% -> %.2f%%, NLL %.4f -> %.4f",
        test["accuracy"],
        temperature,
        100 * calibration["test_before"]["ece"],
        100 * calibration["test_after"]["ece"],
        calibration["test_before"]["nll"],
        calibration["test_after"]["nll"],
    )
    robustness = robustness_table(
        model, test_images, test_labels, device, mean=mean, std=std, clean_accuracy=test["accuracy"]
    )
    return {
        "test": test,
        "calibration": calibration,
        "robustness": robustness,
        "misclassified": misclassified_examples(test_images, test_labels, softmax(test_logits, temperature).float()),
        "provenance": provenance,
    }


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "bins"}


def report_summary(report: dict[str, Any]) -> dict[str, float]:
    """The report's headline numbers, flat: for the end step, the tracker and the model record."""
    test, cal = report["test"], report["calibration"]
    worst = min((r for r in report["robustness"] if r["name"] != "clean"), key=lambda r: r["accuracy"], default=None)
    summary = {
        "test_accuracy": test["accuracy"],
        "test_accuracy_ci95_low": test["accuracy_ci95"][0],
        "test_accuracy_ci95_high": test["accuracy_ci95"][1],
        "test_macro_f1": test["macro_f1"],
        "temperature": cal["temperature"],
        "test_ece_before": cal["test_before"]["ece"],
        "test_ece_after": cal["test_after"]["ece"],
        "test_nll_before": cal["test_before"]["nll"],
        "test_nll_after": cal["test_after"]["nll"],
    }
    if worst is not None:
        summary["worst_perturbation_accuracy"] = worst["accuracy"]
    return summary
