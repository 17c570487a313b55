"""Training checkpoints: everything needed to continue a trial where it stopped, bit for bit.

A checkpoint is not a model record (`fmnist.model_record`, what the service loads): it carries the optimiser,
the learning-rate schedule, the weight average, the random-number generators and the history, so that a trial
interrupted after epoch k (a spot instance reclaimed, a killed process) and resumed ends with exactly the weights
of an uninterrupted one. Only the latest checkpoint of a trial matters; each save replaces the previous one.

Where checkpoints live is the caller's business: `CheckpointStore` is a directory plus a hook called after each
save, so the flow can mirror them to Metaflow's datastore (local or S3; `flows/flow_checkpoints.py`) and put the
latest back in the directory when a task is retried, while this package knows nothing of Metaflow.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

FILE_NAME = "training_state.pt"
FORMAT = "fashionflow.training-state/1"


@dataclass
class TrainingState:
    """A trial's state after `epoch` completed epochs; tensors on the CPU."""

    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    generator: torch.Tensor  # the trial's torch.Generator state: batch order and augmentation draws
    torch_rng: torch.Tensor  # torch's global CPU generator: dropout
    ema: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0

    def to_bytes(self) -> bytes:
        """Serialise with torch.save; `from_bytes` reads it back with weights_only=True (no arbitrary unpickling)."""
        buffer = io.BytesIO()
        torch.save({"format": FORMAT, **self.__dict__}, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> TrainingState:
        """Parse bytes written by `to_bytes`; raises ValueError on anything else."""
        try:
            data = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"not a FashionFlow training checkpoint: {err}") from None
        if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
            raise ValueError(f"not a FashionFlow training checkpoint of format {FORMAT!r}")
        return cls(**data)


class CheckpointStore:
    """The latest training state of one trial, as a file in `directory`, saved every `every` epochs.

    `on_save(epoch)` runs after each write (the flow copies the file to Metaflow's datastore there);
    `on_resume(epoch)` runs when a state left by an earlier attempt is found (the flow's live card says so).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        every: int = 1,
        on_save: Callable[[int], None] | None = None,
        on_resume: Callable[[int], None] | None = None,
    ) -> None:
        self.path = Path(directory) / FILE_NAME
        self.every, self.on_save, self.on_resume = max(1, every), on_save, on_resume

    def latest(self) -> TrainingState | None:
        """The state found in the directory (put there by a previous attempt), or None."""
        if not self.path.exists():
            return None
        state = TrainingState.from_bytes(self.path.read_bytes())
        log.info(
            "found a checkpoint after epoch %d in %s: resuming at epoch %d", state.epoch, self.path, state.epoch + 1
        )
        if self.on_resume is not None:
            self.on_resume(state.epoch + 1)
        return state

    def due(self, epoch: int, last_epoch: int) -> bool:
        """Whether to save after `epoch`: every `every` epochs, never after the last (the result is saved then)."""
        return epoch % self.every == 0 and epoch < last_epoch

    def save(self, state: TrainingState) -> None:
        """Replace the checkpoint with `state` (write to a temporary file, then rename: never a torn checkpoint)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_bytes(state.to_bytes())
        partial.replace(self.path)
        if self.on_save is not None:
            self.on_save(state.epoch)
