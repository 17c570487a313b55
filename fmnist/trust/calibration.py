"""How far a model's confidence can be believed: expected calibration error, NLL, and temperature scaling.

Temperature scaling divides the logits by one scalar T fitted on the validation split (never the test set): it
changes confidences but not a single prediction, so accuracy is untouched. T > 1 softens an over-confident model,
T < 1 sharpens an under-confident one (label smoothing makes models under-confident).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

# 15 equal-width confidence bins, as in Guo et al. (2017), "On Calibration of Modern Neural Networks".
ECE_BINS = 15


def _as_tensor(x: np.ndarray | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(dtype)


def reliability_bins(
    probs: np.ndarray | torch.Tensor, labels: np.ndarray, n_bins: int = ECE_BINS
) -> list[dict[str, Any]]:
    """Per confidence bin: its range, how many predictions fall in it, their mean confidence and their accuracy.

    probs: (N, C) probabilities; labels: (N,). A prediction's confidence is its top probability; bins are
    (lo, hi], the first one [0, hi].
    """
    p = _as_tensor(probs, torch.float64)
    y = torch.as_tensor(np.asarray(labels).astype(np.int64))
    confidence, predicted = p.max(1)
    correct = (predicted == y).double()
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    # Bin b holds confidences in (edges[b], edges[b+1]]; a confidence of exactly 0 goes to bin 0.
    which = (torch.bucketize(confidence, edges, right=False) - 1).clamp(0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        mask = which == b
        count = int(mask.sum())
        bins.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "count": count,
                "confidence": float(confidence[mask].mean()) if count else 0.0,
                "accuracy": float(correct[mask].mean()) if count else 0.0,
            }
        )
    return bins


def expected_calibration_error(probs: np.ndarray | torch.Tensor, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over equal-width confidence bins, in [0, 1]."""
    bins = reliability_bins(probs, labels, n_bins)
    total = sum(b["count"] for b in bins)
    if total == 0:
        return 0.0
    return sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / total


def negative_log_likelihood(logits: torch.Tensor, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of softmax(logits / T) against the labels, in nats."""
    y = torch.as_tensor(np.asarray(labels).astype(np.int64))
    return float(nn.functional.cross_entropy(logits.double() / temperature, y))


def softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(N, C) probabilities of logits scaled by 1/T."""
    return torch.softmax(logits.double() / temperature, dim=1)


def fit_temperature(logits: torch.Tensor, labels: np.ndarray, max_iter: int = 100) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T); fit on held-out (validation) logits only.

    Optimised over log T with L-BFGS, so T stays positive without constraints; the NLL is convex in 1/T, so this
    finds the global minimum from T = 1.
    """
    z = logits.detach().double()  # (N, C)
    y = torch.as_tensor(np.asarray(labels).astype(np.int64))
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature) or temperature <= 0:
        return 1.0
    return temperature


def calibration_summary(logits: torch.Tensor, labels: np.ndarray, temperature: float = 1.0) -> dict[str, Any]:
    """ECE, NLL and reliability bins of logits at temperature T."""
    probs = softmax(logits, temperature)
    bins = reliability_bins(probs, labels)
    total = max(1, sum(b["count"] for b in bins))
    return {
        "temperature": temperature,
        "ece": sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / total,
        "nll": negative_log_likelihood(logits, labels, temperature),
        "mean_confidence": float(probs.max(1).values.mean()) if len(probs) else 0.0,
        "bins": bins,
    }
