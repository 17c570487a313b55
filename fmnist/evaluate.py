"""Predictions and the metrics computed from them: accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .data import CLASS_NAMES, NUM_CLASSES, PIXEL_MEAN, PIXEL_STD
from .model import normalize
from .runtime import autocast


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    device: torch.device,
    batch_size: int = 1024,
    amp: torch.dtype | None = None,
    mean: float = PIXEL_MEAN,
    std: float = PIXEL_STD,
) -> torch.Tensor:
    """(N, 28, 28) uint8 images -> (N, 10) float32 logits on the CPU, in eval mode; restores the model's mode."""
    was_training = model.training
    model.eval()
    pixels = torch.as_tensor(images)
    out = []
    for start in range(0, len(pixels), batch_size):
        x = normalize(pixels[start : start + batch_size].to(device), mean, std)
        with autocast(device, amp):
            out.append(model(x.contiguous(memory_format=torch.channels_last)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, NUM_CLASSES)


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
