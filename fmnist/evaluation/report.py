"""The evaluation report: how good the chosen model is, where it fails (perturbed pixels, product photos), how far
its confidence can be believed, when it says "unsure", and where it came from. `build_report` assembles it as an
`EvaluationReport` (`fmnist.evaluation.report_schema`), which the cards, the tracker and the model record read.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from fmnist.core.config import EvaluationConfig
from fmnist.core.data import CLASS_NAMES, NUM_CLASSES
from fmnist.core.inference import features_and_logits
from fmnist.core.real_photos import RealPhoto, fit_parts, load_real_photos, sample_per_folder
from fmnist.evaluation.answers import LeaveOut, service_answers
from fmnist.evaluation.leave_out import REAL as REAL_CONDITION
from fmnist.evaluation.leave_out import PhotoFit, leave_one_condition_out
from fmnist.evaluation.metrics import report_metrics
from fmnist.evaluation.nongarments import DEV_STREAM as SYNTHETIC_DEV_STREAM
from fmnist.evaluation.nongarments import REPORT_STREAM as SYNTHETIC_REPORT_STREAM
from fmnist.evaluation.nongarments import encode_png, synthetic_nongarments
from fmnist.evaluation.photo_mix import render_validation_photos
from fmnist.evaluation.photos import photo_robustness, worst_realistic
from fmnist.evaluation.real_nongarments import Part, handwritten_digits, real_photographs
from fmnist.evaluation.real_photo_suite import real_photo_table
from fmnist.evaluation.report_schema import EvaluationReport
from fmnist.evaluation.robustness import robustness_table
from fmnist.evaluation.wild_photos import REPORT_STREAM as WILD_REPORT_STREAM
from fmnist.evaluation.wild_photos import wild_robustness, worst_conditions
from fmnist.release.classifier import Classifier
from fmnist.release.model_record import ModelRecord
from fmnist.training.photo_batches import real_photo_inputs
from fmnist.trust.abstention import AbstentionPolicy
from fmnist.trust.abstention_fit import fit_abstention, risk_coverage_curve, selective_summary
from fmnist.trust.calibration import calibration_summary, fit_temperature, softmax

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
    val_features, val_logits, policy, photo_fit = fit_on_validation(
        record, model, val_images, val_labels, device, evaluation, seed
    )
    # Each photo condition's rows also judged by the photo thresholds fitted without it (`leave_out`).
    quantile = evaluation.photo_ood_quantile
    leave_out = None if photo_fit is None else leave_one_condition_out(classifier, photo_fit, quantile)
    temperature = record.temperature
    # The drift reference's unsure share: clean validation images under the fitted policy (never the test set).
    validation_unsure = 1.0 - selective_summary(policy, val_logits, val_features, val_labels, temperature)["coverage"]
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
            "photos": photo_section(classifier, test_images, test_labels, evaluation, seed, leave_out),
            "wild_photos": wild_photo_section(classifier, test_images, test_labels, evaluation, seed, leave_out),
            "real_photos": real_photo_section(classifier, evaluation),
            "abstention": abstention_section(classifier, test_logits, test_features, test_labels, evaluation, seed),
            "validation_unsure_share": validation_unsure,
            "misclassified": misclassified_examples(
                test_images, test_labels, softmax(test_logits, temperature).float()
            ),
            "provenance": record.provenance,
        }
    )


def fit_on_validation(
    record: ModelRecord,
    model: torch.nn.Module,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    device: torch.device,
    evaluation: EvaluationConfig,
    seed: int,
    **policy_options: Any,
) -> tuple[torch.Tensor, torch.Tensor, AbstentionPolicy, PhotoFit | None]:
    """Fit `record`'s temperature and abstention policy on validation images (and, per the profile, validation
    garments rendered as photos); returns the clean images' (features, logits), the policy and the photo part of its
    fit (None without one). The evaluate step and the development benchmark (`benchmarks/photo_robustness.py`) both
    fit through here; `policy_options` (`ood_score`, `feature_power`, `ridge`) go to `fit_abstention`, for the
    benchmark to compare them on validation."""
    val_features, val_logits = features_and_logits(model, val_images, device, mean=record.mean, std=record.std)
    record.temperature = fit_temperature(val_logits, val_labels)
    # The real photos' fit split, read and checked once: its halves go to the photo thresholds and the components.
    fit_photos = load_real_photos("fit") if evaluation.real_photos_per_folder > 0 else []
    photo_fit = _validation_photos(record, model, val_images, val_labels, device, evaluation, seed, fit_photos)
    record.abstention = policy = fit_abstention(
        val_logits,
        val_features,
        val_labels,
        record.temperature,
        evaluation.target_risk,
        evaluation.ood_quantile,
        photos=None if photo_fit is None else photo_fit.as_photos(),
        photo_ood_quantile=evaluation.photo_ood_quantile,
        photo_density=_density_photos(record, model, device, evaluation, fit_photos) if photo_fit is not None else None,
        real_photos=None if photo_fit is None else photo_fit.condition == REAL_CONDITION,
        photo_component_quantile=evaluation.photo_component_quantile,
        photo_components_per_family=evaluation.photo_components_per_family,
        **policy_options,
    )
    return val_features, val_logits, policy, photo_fit


def _real_inputs(photos: list[RealPhoto]) -> tuple[np.ndarray, np.ndarray]:
    """Real photos through the service's normalisation: (model inputs (m, 28, 28) uint8, right classes (m, C) bool:
    every class right for a family answer), the uploads it finds empty left out (they are unsure whatever the
    scores)."""
    return real_photo_inputs(photos, lambda photo: photo.right_classes)


def _density_photos(
    record: ModelRecord,
    model: torch.nn.Module,
    device: torch.device,
    evaluation: EvaluationConfig,
    fit_photos: list[RealPhoto],
) -> tuple[torch.Tensor, np.ndarray] | None:
    """(features, right classes) of the real photos the photo components are fitted on: the first half of the `fit`
    split `fit_photos` (`fit_parts`, the half training may see), never the photos the components' threshold is fitted
    on. None when the profile leaves them out."""
    if not evaluation.real_photo_density or not fit_photos:
        return None
    pixels, right = _real_inputs(sample_per_folder(fit_parts(fit_photos)[0], evaluation.real_photos_per_folder))
    if not len(pixels):
        return None
    features, _ = features_and_logits(model, pixels, device, mean=record.mean, std=record.std)
    return features, right


def _validation_photos(
    record: ModelRecord,
    model: torch.nn.Module,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    device: torch.device,
    evaluation: EvaluationConfig,
    seed: int,
    fit_photos: list[RealPhoto],
) -> PhotoFit | None:
    """The photos the abstention fit holds to the photo thresholds, with their logits, features, right classes and
    conditions: validation garments rendered as photos of both families, and the real photographs' `fit` split,
    `fit_photos` (a family answer right for a longsleeve or a pair of shoes, no class right for a hat); uploads the
    normalisation finds empty are left out (they are unsure whatever the scores). None when the profile fits on clean
    images only."""
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (pixels (m, 28, 28), right (m, C), condition (m,))
    if evaluation.fit_photo_per_class > 0:
        mix = render_validation_photos(
            val_images, val_labels, seed, evaluation.fit_photo_per_class, size=evaluation.photo_size
        )
        found = ~mix.empty
        right = np.zeros((int(found.sum()), NUM_CLASSES), dtype=bool)
        right[np.arange(len(right)), mix.labels[found]] = True
        parts.append((mix.pixels[found], right, mix.condition[found]))
    if fit_photos:
        photos = fit_photos
        if record.hparams.get("real_photo_share", 0) > 0:  # never the photos the network trained on
            photos = fit_parts(photos)[1]
        pixels, right = _real_inputs(sample_per_folder(photos, evaluation.real_photos_per_folder))
        if len(pixels):
            parts.append((pixels, right, np.full(len(pixels), REAL_CONDITION)))
    if not parts:
        return None
    pixels = np.concatenate([p for p, _, _ in parts])
    features, logits = features_and_logits(model, pixels, device, mean=record.mean, std=record.std)
    return PhotoFit(
        logits, features, np.concatenate([r for _, r, _ in parts]), np.concatenate([c for _, _, c in parts])
    )


def real_photo_section(classifier: Classifier, evaluation: EvaluationConfig, worst: int = 24) -> dict[str, Any] | None:
    """The real photographs' report split (at most `real_photos_per_folder` per folder) through the service's path:
    per folder accuracy, confident share and accuracy of the confident answers; the worst answers with what the
    model saw. None when the profile leaves real photos out."""
    if evaluation.real_photos_per_folder == 0:
        return None
    photos = sample_per_folder(load_real_photos("report"), evaluation.real_photos_per_folder)
    table = real_photo_table(service_answers(classifier), photos)
    labels, confident, inputs = table.pop("labels"), table.pop("confident_flags"), table.pop("inputs")
    family_sure = table.pop("family_flags")
    table["worst"] = [
        {
            "name": photos[i].name,
            "folder": photos[i].folder,
            "predicted": CLASS_NAMES[int(labels[i])],
            "confident": bool(confident[i]),
            "family_sure": bool(family_sure[i]),
            "image": inputs[i].tolist(),
        }
        for i in table["worst"][:worst]
    ]
    log.info(
        "real photographs: family accuracy %.3f, %.3f answered confidently, %.3f of those right; %.3f sure of the"
        " family, %.3f of those right",
        table["family_accuracy"] or 0,
        table["confident"] or 0,
        table["confident_family_accuracy"] or 0,
        table["family_sure"] or 0,
        table["family_sure_accuracy"] or 0,
    )
    return table


def photo_section(
    classifier: Classifier,
    images: np.ndarray,
    labels: np.ndarray,
    evaluation: EvaluationConfig,
    seed: int,
    leave_out: LeaveOut | None = None,
) -> dict[str, Any]:
    """Accuracy on a fixed sample of test images rendered as product photos, per condition and severity, through
    the service's normalisation; the worst condition at its realistic severity named."""
    rows = photo_robustness(
        service_answers(classifier),
        images,
        labels,
        seed=seed,
        per_class=evaluation.photo_per_class,
        size=evaluation.photo_size,
        leave_out=leave_out,
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


def wild_photo_section(
    classifier: Classifier,
    images: np.ndarray,
    labels: np.ndarray,
    evaluation: EvaluationConfig,
    seed: int,
    leave_out: LeaveOut | None = None,
) -> dict[str, Any]:
    """The in-the-wild suite (`fmnist.evaluation.wild_photos`) on a fixed sample of test images: per condition and
    severity, accuracy, the share answered confidently and the accuracy of those answers; the worst condition on
    each."""
    rows = wild_robustness(
        service_answers(classifier),
        images,
        labels,
        seed=seed,
        stream=WILD_REPORT_STREAM,
        per_class=evaluation.wild_per_class,
        size=evaluation.photo_size,
        leave_out=leave_out,
    )
    worst = worst_conditions(rows)
    log.info(
        "wild photos: worst realistic accuracy %s %.3f; worst confident accuracy %s %.3f",
        worst["accuracy"].condition,
        worst["accuracy"].accuracy,
        worst["confident_accuracy"].condition,
        worst["confident_accuracy"].confident_accuracy,
    )
    return {
        "rows": [asdict(r) for r in rows],
        "clean_accuracy": rows[0].accuracy,
        "worst": {figure: asdict(row) for figure, row in worst.items()},
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


def nongarment_detection(classifier: Classifier, per_kind: int, seed: int, part: Part = "report") -> dict[str, Any]:
    """Things that are not garments, uploaded through the service's path, counted honestly.

    Four sets: synthetic non-garments (`fmnist.evaluation.nongarments`), real photographs and faces
    (`fmnist.evaluation.real_nongarments`), and handwritten digits (near-distribution: light strokes on black). For
    each, the share the service marks unsure, the share the normaliser's `empty` rule declares empty before any score is
    computed, and the share the model's scores alone (OOD and confidence thresholds, on the normalised input) mark
    unsure. `part="dev"` gives the development sets (other seeds and photographs), which choices are made on.
    """
    stream = SYNTHETIC_REPORT_STREAM if part == "report" else SYNTHETIC_DEV_STREAM
    synthetic = [(kind, encode_png(image)) for kind, image in synthetic_nongarments(per_kind, seed, stream=stream)]
    photographs = real_photographs(part, seed)
    sets = {
        "synthetic": synthetic,
        "photographs": [(name, data) for name, data in photographs if name != "face"],
        "faces": [(name, data) for name, data in photographs if name == "face"],
        "digits": handwritten_digits(part),
    }
    measured = {name: _nongarment_set(classifier, items) for name, items in sets.items()}
    synthetic_set = measured["synthetic"]
    return {
        # The synthetic set's figures, as before, at the top level.
        "per_kind": synthetic_set["per_kind"],
        "overall": synthetic_set["unsure"],
        "count": synthetic_set["count"],
        "sets": measured,
    }


def _nongarment_set(classifier: Classifier, items: list[tuple[str, bytes]]) -> dict[str, Any]:
    """Shares of `items` (kind, upload) marked unsure by the service, declared empty, and unsure by scores alone."""
    if not items:
        return {"count": 0, "unsure": 0.0, "empty_rule": 0.0, "model_scores": 0.0, "per_kind": {}}
    answers = service_answers(classifier)([data for _, data in items])
    assert answers.inputs is not None and answers.empty is not None
    # The model's verdict on the normalised input with the empty rule left out: what the scores alone catch. Unsure
    # means sure of nothing: a garment family named for a non-garment is as wrong as a class.
    by_scores = np.array([s.family is None for s in classifier.score(answers.inputs, photo=answers.photo)])
    unsure = ~answers.sure  # (N,)
    kinds = np.array([kind for kind, _ in items])  # (N,)
    return {
        "count": len(items),
        "unsure": float(unsure.mean()),
        "empty_rule": float(answers.empty.mean()),
        "model_scores": float(by_scores.mean()),
        "per_kind": {kind: float(unsure[kinds == kind].mean()) for kind in dict.fromkeys(kinds.tolist())},
        "per_kind_model_scores": {
            kind: float(by_scores[kinds == kind].mean()) for kind in dict.fromkeys(kinds.tolist())
        },
    }


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "bins"}
