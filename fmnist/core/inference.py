"""Batched inference: (N, 28, 28) uint8 images through a network in eval mode, outputs gathered on the CPU.

One loop for every caller that scores many images at once (training's validation pass, the evaluation metrics and
perturbations, the abstention fit), so batching, normalisation and the train/eval mode flip are written once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numpy as np
import torch
from torch import nn

from fmnist.core.data import PIXEL_MEAN, PIXEL_STD
from fmnist.core.model import FashionCNN, normalize
from fmnist.core.runtime import autocast


@torch.no_grad()
def _batched(
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    device: torch.device,
    batch_size: int,
    mean: float,
    std: float,
    amp: torch.dtype | None,
) -> list[list[torch.Tensor]]:
    """One list per output of `forward`, each with a float32 CPU tensor per batch; restores the model's mode."""
    was_training = model.training
    model.eval()
    pixels = torch.as_tensor(images)
    outputs: list[list[torch.Tensor]] = []
    # An empty input still makes one (empty) pass, so every output has its width: (0, 10), (0, D).
    for start in range(0, max(1, len(pixels)), batch_size):
        x = normalize(pixels[start : start + batch_size].to(device), mean, std)  # (B, 1, 28, 28)
        with autocast(device, amp):
            results = forward(x.contiguous(memory_format=torch.channels_last))
        if not outputs:
            outputs = [[] for _ in results]
        for gathered, result in zip(outputs, results, strict=True):
            gathered.append(result.float().cpu())
    model.train(was_training)
    return outputs


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
    (logits,) = _batched(lambda x: (model(x),), model, images, device, batch_size, mean, std, amp)
    return torch.cat(logits)


def features_and_logits(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    device: torch.device,
    batch_size: int = 1024,
    mean: float = PIXEL_MEAN,
    std: float = PIXEL_STD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 28, 28) uint8 images -> ((N, D) descriptors, (N, C) logits), float32 on the CPU.

    The model must have `describe` (images -> descriptor and logits in one pass), as `FashionCNN` does. No mixed
    precision: the covariance fitted on these features needs full float32 precision.
    """
    features, logits = _batched(cast(FashionCNN, model).describe, model, images, device, batch_size, mean, std, None)
    return torch.cat(features), torch.cat(logits)
