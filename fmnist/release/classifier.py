"""A released model as users meet it: calibrated probabilities and an honest "unsure", for 28x28 images or uploads.

The service answers with `Classifier.score`; the evaluate step measures photos and non-garments through
`Classifier.classify_uploads`, which is the service's own path (normalisation, network, temperature, abstention),
so the report's figures are what a user of the API gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from fmnist.core.data import FAMILY_OF
from fmnist.core.runtime import available_cores
from fmnist.images.normalise import prepare_upload
from fmnist.images.uploads import DEFAULT_MAX_PIXELS
from fmnist.release.model_record import ModelRecord
from fmnist.release.scoring_graph import OnnxScorer, ScoringGraph
from fmnist.trust.abstention import LOW_CONFIDENCE, UNLIKE_TRAINING, AbstentionPolicy

# A record written before abstention thresholds existed carries none: its answers count as confident only above
# this calibrated probability, a conservative stand-in that the service's /model reports as such.
LEGACY_CONFIDENCE = 0.9
# Uploads are scored this many at a time when a whole list is classified (the evaluate step's photo suites).
CHUNK = 256
# Threads normalising a list of uploads at once: one per core the process may use.
WORKERS = available_cores()

# What runs the network: eager torch (any device) or the exported graph in ONNX Runtime (CPU;
# `fmnist.release.scoring_graph`).
Runtime = Literal["torch", "onnxruntime"]


@dataclass(frozen=True)
class Scored:
    """The model's view of one image: calibrated probabilities and whether to trust the top one."""

    probabilities: np.ndarray  # (num_classes,) float32
    # The answer can be relied on: its class, or for a photo at least its garment family (`abstention.Decision`).
    confident: bool
    class_confident: bool  # the class itself can be relied on (implies `confident`)
    unsure_reason: str | None  # "low_confidence" or "unlike_training_images"; None when confident
    family: str | None = None  # the garment family the answer can be relied on for; None when not confident

    @property
    def label(self) -> int:
        """The most probable class index."""
        return int(self.probabilities.argmax())


class Classifier:
    """A model record built on a device, answering as the service does.

    `runtime="onnxruntime"` runs the record's `ScoringGraph` in ONNX Runtime on the CPU (raises
    `scoring_graph.RuntimeUnavailable` where it cannot); the answers are torch's within float rounding."""

    def __init__(self, record: ModelRecord, device: torch.device, runtime: Runtime = "torch", threads: int = 1) -> None:
        self.record, self.device, self.runtime, self.threads = record, device, runtime, threads
        self.network = record.build(device)
        self.graph = ScoringGraph(record, self.network).to(device)
        self.onnx = OnnxScorer(self.graph, threads) if runtime == "onnxruntime" else None

    @property
    def policy(self) -> AbstentionPolicy | None:
        """The record's abstention policy; read from the record, so one fitted after construction counts."""
        return self.record.abstention

    def score(
        self,
        pixels: np.ndarray,
        empty: Sequence[bool] | None = None,
        photo: Sequence[bool] | np.ndarray | None = None,
    ) -> list[Scored]:
        """(B, 28, 28) uint8 images, light on dark -> one `Scored` per image. `empty[i]` marks an upload in which
        normalisation found nothing but background: whatever the network says, that is no garment. `photo[i]` marks
        an input the normaliser had to transform (`imaging.Normalized.photo`): it is held to the policy's photo
        threshold; None takes every input as a scan in Fashion-MNIST's own form."""
        if len(pixels) == 0:
            return []
        if not self.graph.matches(self.record):  # the graph carries policy and temperature: rebuild it
            self.graph = ScoringGraph(self.record, self.network).to(self.device)
            self.onnx = OnnxScorer(self.graph, self.threads) if self.onnx is not None else None
        if self.onnx is not None:
            probs64, scan_ood, distance = self.onnx(pixels)  # (B, C), (B,), (B,) float64
        else:
            probs64, scan_ood, distance = self._torch_scores(pixels)
        probs = probs64.astype(np.float32)
        confidence = probs64.max(1)  # (B,) float64
        if self.policy is not None:
            marks = None if photo is None else np.asarray(photo, dtype=bool)
            # A photo may also pass as close to the real photos of a garment family (`AbstentionPolicy.photo_scores`).
            ood = self.policy.marked_scores(scan_ood, distance, marks)  # (B,)
            verdicts = [
                (d.confident, d.class_confident, d.reason, d.family) for d in self.policy.decisions(probs64, ood, marks)
            ]
        else:
            verdicts = [
                (sure, sure, None if sure else LOW_CONFIDENCE, FAMILY_OF[label] if sure else None)
                for sure, label in zip(confidence >= LEGACY_CONFIDENCE, probs64.argmax(1).tolist(), strict=True)
            ]
        blank = list(empty) if empty is not None else [False] * len(probs)
        return [
            Scored(p, False, False, UNLIKE_TRAINING) if nothing else Scored(p, bool(sure), bool(exact), reason, family)
            for p, (sure, exact, reason, family), nothing in zip(probs, verdicts, blank, strict=True)
        ]

    @torch.inference_mode()
    def _torch_scores(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, 28, 28) uint8 -> ((B, C) float64 calibrated probabilities, (B,) float64 OOD score, (B,) float64
        distance to the nearest photo component), eager torch: the calibrated softmax the evaluation report used, so
        served probabilities match the report's."""
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, non_blocking=True)
        probabilities, ood, distance = self.graph(x)
        return probabilities.cpu().numpy(), ood.cpu().numpy(), distance.cpu().numpy()

    def classify_uploads(self, uploads: Sequence[bytes], max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Scored]:
        """Encoded images -> `Scored`, each through the service's normalisation
        (`fmnist.images.normalise.prepare_upload`)."""
        return self.classify_with_inputs(uploads, max_pixels)[0]

    def classify_with_inputs(
        self, uploads: Sequence[bytes], max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> tuple[list[Scored], np.ndarray, np.ndarray, np.ndarray]:
        """(scored, (N, 28, 28) uint8 model inputs, (N,) bool empty flags, (N,) bool photo flags) of uploads: what
        `classify_uploads` answers, with what the model saw (the photo suites report both)."""
        scored: list[Scored] = []
        inputs, empties, photos = [], [], []
        for start in range(0, len(uploads), CHUNK):
            # Decoding and normalising release the GIL for most of their work: threads use every core.
            with ThreadPoolExecutor(max_workers=WORKERS) as pool:
                prepared = list(pool.map(lambda data: prepare_upload(data, max_pixels), uploads[start : start + CHUNK]))
            pixels = np.stack([p.pixels for p in prepared])  # (b, 28, 28)
            empty = np.array([p.empty for p in prepared], dtype=bool)  # (b,)
            photo = np.array([p.photo for p in prepared], dtype=bool)  # (b,)
            scored += self.score(pixels, empty.tolist(), photo.tolist())
            inputs.append(pixels)
            empties.append(empty)
            photos.append(photo)
        if not inputs:
            return scored, np.zeros((0, 28, 28), np.uint8), np.zeros(0, bool), np.zeros(0, bool)
        return scored, np.concatenate(inputs), np.concatenate(empties), np.concatenate(photos)
