"""Report metrics on hand-checkable cases: confusion matrix, per-class scores, accuracy interval, confusions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fmnist.core.config import EvaluationConfig
from fmnist.core.data import CLASS_NAMES
from fmnist.core.model import ModelArgs, build_model
from fmnist.evaluation.metrics import (
    classification_metrics,
    confusion_matrix,
    per_class_scores,
    report_metrics,
    top_confusions,
    wilson_interval,
)
from fmnist.evaluation.report import build_report
from fmnist.evaluation.report_schema import EvaluationReport
from fmnist.release.model_record import ModelRecord

# The photo suite and the non-garments at their smallest: the report's shape, not its figures, is under test here.
TINY_EVALUATION = EvaluationConfig(
    photo_per_class=1,
    photo_size=56,
    nongarments_per_kind=1,
    wild_per_class=1,
    fit_photo_per_class=1,
    real_photos_per_folder=2,
)


def tiny_record(width: int = 4) -> ModelRecord:
    """An untrained network as a model record."""
    torch.manual_seed(0)
    model = build_model(ModelArgs(width=width))
    return ModelRecord(state_dict=model.state_dict(), model_args=ModelArgs(width=width))


def test_confusion_matrix_of_known_predictions():
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 1, 1, 1, 1, 0])
    cm = confusion_matrix(labels, preds, num_classes=3)
    assert cm.tolist() == [[1, 2, 0], [0, 2, 0], [1, 0, 0]]


def test_per_class_precision_recall_f1():
    cm = np.array([[1, 2, 0], [0, 2, 0], [1, 0, 0]])
    scores = per_class_scores(cm, ("a", "b", "c"))
    a, b, c = scores
    # a: 1 of 2 predicted-a right (P 0.5), 1 of 3 true-a found (R 1/3), F1 = 2PR/(P+R) = 0.4.
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == pytest.approx((0.5, 1 / 3, 0.4, 3))
    # b: 2 of 4 predicted-b right (P 0.5), both true-b found (R 1), F1 2/3.
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((0.5, 1.0, 2 / 3))
    # c is never predicted: precision, recall and F1 are 0, not NaN.
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == (0.0, 0.0, 0.0, 1)


def test_wilson_interval_known_values():
    # Published example: 81 of 263 -> (0.2553, 0.3662) at 95%.
    lo, hi = wilson_interval(81, 263)
    assert (lo, hi) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    # It stays inside [0, 1] at the extremes and narrows with more trials.
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0) and wilson_interval(10, 10)[0] > 0.6
    assert wilson_interval(0, 10)[0] == 0.0
    assert np.diff(wilson_interval(9000, 10000)) < np.diff(wilson_interval(90, 100))


def test_top_confusions_most_frequent_first():
    cm = np.zeros((10, 10), dtype=int)
    np.fill_diagonal(cm, 90)
    cm[6, 0], cm[6, 2], cm[4, 2], cm[0, 6] = 30, 20, 5, 25
    top = top_confusions(cm, k=3)
    assert [(c["true"], c["predicted"], c["count"]) for c in top] == [
        ("Shirt", "T-shirt/top", 30),
        ("T-shirt/top", "Shirt", 25),
        ("Shirt", "Pullover", 20),
    ]
    assert top[0]["share_of_class"] == pytest.approx(30 / 140)


def test_report_metrics_extend_classification_metrics():
    labels = np.arange(10).repeat(10)
    logits = torch.nn.functional.one_hot(torch.as_tensor(labels), 10).float()
    logits[:5] = torch.nn.functional.one_hot(torch.tensor(6), 10).float()  # five T-shirts called Shirt
    metrics = report_metrics(logits, labels)
    assert metrics.keys() >= classification_metrics(logits, labels).keys()
    assert metrics["accuracy"] == pytest.approx(0.95)
    lo, hi = metrics["accuracy_ci95"]
    assert lo < 0.95 < hi
    assert metrics["top_confusions"][0] == {
        "true": "T-shirt/top",
        "predicted": "Shirt",
        "count": 5,
        "share_of_class": 0.5,
    }
    assert [c["class"] for c in metrics["per_class"]] == list(CLASS_NAMES)


def test_build_report_on_a_tiny_model():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(60, 28, 28), dtype=np.uint8)
    labels = np.arange(10).repeat(6).astype(np.uint8)
    record = tiny_record()
    record.provenance = {"run": "x"}
    report = build_report(record, images, labels, images[:30], labels[:30], torch.device("cpu"), TINY_EVALUATION)
    assert isinstance(report, EvaluationReport)
    assert report.calibration.temperature > 0
    # Fitted into the record, on the validation images, before the test set was scored.
    assert record.temperature == report.calibration.temperature
    assert record.abstention is not None and record.abstention.num_fit_examples == 30
    # The photo part of the fit: validation garments (1 per class, every condition of both families) as photos,
    # and 2 real photos of the fit split per upstream folder (those the normaliser finds a garment in).
    assert 10 * 2 < record.abstention.num_fit_photos <= 10 * 26 + 10 * 2
    assert report.real_photos is not None and report.real_photos.count == 10 * 2
    assert report.validation_unsure_share is not None and 0.0 <= report.validation_unsure_share <= 1.0
    assert report.wild_photos is not None and report.wild_photos.rows[1].condition == "plain"
    assert set(report.abstention.nongarments.sets) == {"synthetic", "photographs", "faces", "digits"}
    assert report.photos.rows[0].condition == "clean"
    assert report.photos.worst.realistic is True
    assert set(report.abstention.nongarments.per_kind) >= {"uniform_noise", "checkerboard", "text"}
    assert report.abstention.risk_coverage[-1].coverage == 1.0
    assert report.robustness[0].name == "clean"
    confidences = [m.confidence for m in report.misclassified]
    assert confidences == sorted(confidences, reverse=True)
    assert all(np.asarray(m.image).shape == (28, 28) for m in report.misclassified)
    summary = report.summary()
    assert summary["test_accuracy"] == report.test.accuracy
    assert {"temperature", "test_ece_before", "test_ece_after", "test_nll_after"} <= summary.keys()


def test_the_report_round_trips_through_its_plain_artifact_form():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    labels = np.arange(40).astype(np.uint8) % 10
    report = build_report(tiny_record(), images, labels, images, labels, torch.device("cpu"), TINY_EVALUATION)
    artifact = report.to_artifact()
    assert artifact["test"]["per_class"][0]["class"] == "T-shirt/top"  # stored under the field names readers know
    json.dumps(artifact)  # plain data, nothing that needs this package to read
    assert EvaluationReport.model_validate(artifact) == report
    # calibration, photos, unsure, real photographs, in-the-wild photos, non-garments
    assert len(report.summary_lines()) == 6
    assert report.summary_lines()[3].startswith("real photographs (20)")
