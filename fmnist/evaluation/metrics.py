"""Predictions and the metrics computed from them: accuracy with its interval, per-class scores, confusions."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fmnist.core.data import CLASS_NAMES, NUM_CLASSES


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(C, C) int64 counts; row = true class, column = predicted class."""
    return np.bincount(
        labels.astype(np.int64) * num_classes + predictions.astype(np.int64), minlength=num_classes**2
    ).reshape(num_classes, num_classes)


def classification_metrics(logits: torch.Tensor, labels: np.ndarray) -> dict[str, Any]:
    """Accuracy, per-class accuracy and the confusion matrix of (N, C) logits against (N,) labels."""
    predictions = logits.argmax(1).numpy()
    cm = confusion_matrix(labels, predictions)
    per_class = cm.diagonal() / np.maximum(cm.sum(1), 1)
    return {
        "accuracy": float((predictions == labels).mean()),
        "per_class_accuracy": {name: float(a) for name, a in zip(CLASS_NAMES, per_class, strict=True)},
        "confusion_matrix": cm.tolist(),
        "num_examples": len(labels),
    }


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; z = 1.96 gives 95% coverage. (0, 1) when trials is 0."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z**2 / trials
    centre = (p + z**2 / (2 * trials)) / denom
    half = z * np.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def per_class_scores(cm: np.ndarray, class_names: tuple[str, ...] = CLASS_NAMES) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of each class from a (C, C) confusion matrix (row = true class)."""
    cm = np.asarray(cm)
    tp = cm.diagonal().astype(np.float64)
    predicted = cm.sum(0).astype(np.float64)
    support = cm.sum(1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    pr = precision + recall
    f1 = np.divide(2 * precision * recall, pr, out=np.zeros_like(tp), where=pr > 0)
    return [
        {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)
    ]


def top_confusions(cm: np.ndarray, k: int = 5, class_names: tuple[str, ...] = CLASS_NAMES) -> list[dict[str, Any]]:
    """The k most frequent (true, predicted) mistakes, most frequent first; ties in class order."""
    cm = np.asarray(cm)
    off = [(int(cm[t, p]), t, p) for t in range(len(cm)) for p in range(len(cm)) if t != p and cm[t, p] > 0]
    off.sort(key=lambda c: (-c[0], c[1], c[2]))
    support = cm.sum(1)
    return [
        {"true": class_names[t], "predicted": class_names[p], "count": n, "share_of_class": n / max(1, int(support[t]))}
        for n, t, p in off[:k]
    ]


def report_metrics(logits: torch.Tensor, labels: np.ndarray) -> dict[str, Any]:
    """`classification_metrics` plus a 95% interval on accuracy, per-class P/R/F1, macro F1 and top confusions."""
    metrics = classification_metrics(logits, labels)
    n = metrics["num_examples"]
    correct = round(metrics["accuracy"] * n)
    per_class = per_class_scores(np.asarray(metrics["confusion_matrix"]))
    return {
        **metrics,
        "accuracy_ci95": list(wilson_interval(correct, n)),
        "per_class": per_class,
        "macro_f1": float(np.mean([c["f1"] for c in per_class])),
        "top_confusions": top_confusions(np.asarray(metrics["confusion_matrix"])),
    }
