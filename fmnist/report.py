"""The evaluation report: how good the chosen model is, where it fails (perturbed pixels, product photos), how far
its confidence can be believed, when it says "unsure", and where it came from. `build_report` assembles it as an
`EvaluationReport` (`fmnist.report_schema`), which the cards, the tracker and the model record read.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from .abstention import features_and_logits, fit_abstention, risk_coverage_curve, selective_summary
from .calibration import calibration_summary, fit_temperature, softmax
from .classifier import Classifier
from .config import EvaluationConfig
from .data import CLASS_NAMES
from .evaluate import report_metrics
from .model_record import ModelRecord
from .nongarments import encode_png, synthetic_nongarments
from .photos import photo_robustness, worst_realistic
from .report_schema import EvaluationReport
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
    record: ModelRecord,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    device: torch.device,
    evaluation: EvaluationConfig,
    seed: int = 0,
) -> EvaluationReport:
    """Calibrate `record` on the validation split, then evaluate it on the test set; returns the whole report.

    Everything fitted is fitted on validation images only and written into `record` before the test set is scored:
    the temperature, then the abstention policy (confidence and out-of-distribution thresholds). The photo suite and
    the non-garments then go through `Classifier.classify_uploads`, the service's own path.
    """
    # One network for the whole report: the classifier reads the temperature and the policy from the record as
    # they are fitted below, so the photo suite and the non-garments see the calibrated model.
    classifier = Classifier(record, device)
    model = classifier.network
    val_features, val_logits = features_and_logits(model, val_images, device, mean=record.mean, std=record.std)
    record.temperature = temperature = fit_temperature(val_logits, val_labels)
    record.abstention = fit_abstention(
        val_logits, val_features, val_labels, temperature, evaluation.target_risk, evaluation.ood_quantile
    )
    test_features, test_logits = features_and_logits(model, test_images, device, mean=record.mean, std=record.std)
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
        model, test_images, test_labels, device, mean=record.mean, std=record.std, clean_accuracy=test["accuracy"]
    )
    return EvaluationReport.model_validate(
        {
            "test": test,
            "calibration": calibration,
            "robustness": robustness,
            "photos": photo_section(classifier, test_images, test_labels, evaluation, seed),
            "abstention": abstention_section(classifier, test_logits, test_features, test_labels, evaluation, seed),
            "misclassified": misclassified_examples(
                test_images, test_labels, softmax(test_logits, temperature).float()
            ),
            "provenance": record.provenance,
        }
    )


def photo_section(
    classifier: Classifier, images: np.ndarray, labels: np.ndarray, evaluation: EvaluationConfig, seed: int
) -> dict[str, Any]:
    """Accuracy on a fixed sample of test images rendered as product photos, per condition and severity, through
    the service's normalisation; the worst condition at its realistic severity named."""
    rows = photo_robustness(
        lambda uploads: np.array([s.label for s in classifier.classify_uploads(uploads)]),
        images,
        labels,
        seed=seed,
        per_class=evaluation.photo_per_class,
        size=evaluation.photo_size,
    )
    worst = worst_realistic(rows)
    log.info(
        "photo suite: worst realistic condition %s at %.3f (%.2f of clean)",
        worst.condition,
        worst.accuracy,
        worst.relative,
    )
    return {
        "rows": [asdict(r) for r in rows],
        "clean_accuracy": rows[0].accuracy,
        "worst": asdict(worst),
        "sample_size": rows[0].count,
        "photo_size": evaluation.photo_size,
    }


def abstention_section(
    classifier: Classifier,
    test_logits: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: np.ndarray,
    evaluation: EvaluationConfig,
    seed: int,
) -> dict[str, Any]:
    """How the fitted policy does on the test set (coverage, risk among confident answers, risk-coverage curve) and
    how many synthetic non-garments, uploaded as images, it marks unsure."""
    policy = classifier.policy
    assert policy is not None, "the policy is fitted before the abstention section is built"
    temperature = classifier.record.temperature
    selective = selective_summary(policy, test_logits, test_features, test_labels, temperature)
    confidence = softmax(test_logits, temperature).max(1).values.numpy()
    correct = test_logits.argmax(1).numpy() == np.asarray(test_labels)
    nongarments = nongarment_detection(classifier, evaluation.nongarments_per_kind, seed)
    log.info(
        "abstention on test: coverage %.4f, accuracy among confident %.4f; non-garments marked unsure %.3f",
        selective["coverage"],
        selective["accuracy"] or 0.0,
        nongarments["overall"],
    )
    return {
        "policy": policy.metadata(),
        "test": selective,
        "risk_coverage": risk_coverage_curve(confidence, correct),
        "nongarments": nongarments,
    }


def nongarment_detection(classifier: Classifier, per_kind: int, seed: int) -> dict[str, Any]:
    """Synthetic non-garments uploaded as PNGs through the service's path: the share marked unsure, per kind (in
    `NONGARMENT_KINDS` order) and overall, and how many were sent."""
    nongarments = synthetic_nongarments(per_kind, seed)
    scored = classifier.classify_uploads([encode_png(image) for _, image in nongarments])
    unsure = np.array([not s.confident for s in scored])  # (N,)
    kinds = np.array([kind for kind, _ in nongarments])  # (N,)
    return {
        "per_kind": {kind: float(unsure[kinds == kind].mean()) for kind in dict.fromkeys(kinds.tolist())},
        "overall": float(unsure.mean()) if len(unsure) else 0.0,
        "count": len(nongarments),
    }


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "bins"}
