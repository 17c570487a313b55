"""The model on its device: normalise a batch exactly as training did and return calibrated probabilities."""

from __future__ import annotations

import time

import numpy as np
import torch

from fmnist.model import normalize

from .model_loading import ServedModel


class Predictor:
    """Runs the served network in inference mode; probabilities are softmax(logits / temperature)."""

    def __init__(self, served: ServedModel) -> None:
        self.served = served
        self.record = served.record
        self.class_names = list(served.record.class_names)

    @torch.inference_mode()
    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """(B, 28, 28) uint8 images, light on dark -> (B, num_classes) float32 calibrated probabilities."""
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.served.device, non_blocking=True)
        logits = self.served.network(normalize(x, self.record.mean, self.record.std))
        return torch.softmax(logits.float() / self.record.temperature, dim=1).cpu().numpy()

    def warm_up(self, max_batch: int, rounds: int = 3) -> float:
        """Run the batch sizes the service will see, so the first real request pays no one-off costs; seconds."""
        start = time.perf_counter()
        for _ in range(rounds):
            for size in sorted({1, min(8, max_batch), max_batch}):
                self.probabilities(np.zeros((size, 28, 28), dtype=np.uint8))
        return time.perf_counter() - start

    def describe(self, probs: np.ndarray, top_k: int) -> dict:
        """One row of probabilities -> the prediction fields of the response."""
        order = np.argsort(-probs, kind="stable")[:top_k]
        best = int(order[0])
        return {
            "class_index": best,
            "class_name": self.class_names[best],
            "probability": float(probs[best]),
            "top_k": [
                {"class_index": int(i), "class_name": self.class_names[i], "probability": float(probs[i])}
                for i in order
            ],
            "probabilities": [float(p) for p in probs],
        }
