"""The model record: one self-describing blob shared by the flow (which writes it) and the service (which reads it).

It is a safetensors file: CPU weights plus JSON metadata (network arguments, normalisation, class names,
calibration temperature, abstention thresholds, metrics, provenance). Loading it never unpickles, so a record cannot
run code. It describes a finished model, not a training state: it cannot resume an optimiser.

Format 2 adds the abstention policy (its thresholds in the metadata, its feature statistics as tensors under the
`abstention.` prefix); records of format 1 still load, with no policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from fmnist.core.data import CLASS_NAMES, PIXEL_MEAN, PIXEL_STD
from fmnist.core.model import FashionCNN, ModelArgs, build_model
from fmnist.trust.abstention import AbstentionPolicy

FORMAT = "fashionflow.model/2"
READABLE_FORMATS = ("fashionflow.model/1", FORMAT)
ABSTENTION_PREFIX = "abstention."


class RecordError(ValueError):
    """Bytes that are not a valid model record; the message says what is wrong."""


@dataclass
class ModelRecord:
    """Everything needed to rebuild, run and describe a trained model."""

    state_dict: dict[str, torch.Tensor]  # CPU tensors
    model_args: ModelArgs
    class_names: tuple[str, ...] = CLASS_NAMES
    mean: float = PIXEL_MEAN
    std: float = PIXEL_STD
    # Softmax temperature fitted on the validation split; 1.0 until calibration has run.
    temperature: float = 1.0
    # When to answer "unsure"; fitted on the validation split by the evaluate step, None before that.
    abstention: AbstentionPolicy | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    # What in-distribution traffic looks like (`fmnist.trust.drift.DriftReference.to_dict()`): the service's drift
    # signals compare against it. Empty in records made before it existed.
    reference: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """The record without its weights, as plain data."""
        return {
            "format": FORMAT,
            "model_args": self.model_args.to_dict(),
            "class_names": list(self.class_names),
            "mean": self.mean,
            "std": self.std,
            "temperature": self.temperature,
            "abstention": self.abstention.metadata() if self.abstention is not None else None,
            "hparams": self.hparams,
            "metrics": self.metrics,
            "provenance": self.provenance,
            "reference": self.reference,
        }

    def to_bytes(self) -> bytes:
        """Serialise to safetensors bytes, metadata as JSON under the key 'fashionflow'."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict.items()}
        if self.abstention is not None:
            tensors.update({k: v.detach().cpu().contiguous() for k, v in self.abstention.tensors().items()})
        return save_safetensors(tensors, metadata={"fashionflow": json.dumps(self.metadata())})

    @classmethod
    def from_bytes(cls, blob: bytes) -> ModelRecord:
        """Parse bytes written by `to_bytes`; raises RecordError on anything else."""
        try:
            tensors = load_safetensors(blob)
            header_len = int.from_bytes(blob[:8], "little")
            header = json.loads(blob[8 : 8 + header_len])
            meta = json.loads(header["__metadata__"]["fashionflow"])
        except Exception as err:
            raise RecordError(f"not a FashionFlow model record: {err}") from None
        if meta.get("format") not in READABLE_FORMATS:
            raise RecordError(f"unsupported model record format {meta.get('format')!r}, expected {FORMAT!r}")
        weights = {k: v for k, v in tensors.items() if not k.startswith(ABSTENTION_PREFIX)}
        policy = meta.get("abstention")
        return cls(
            state_dict=weights,
            abstention=AbstentionPolicy.from_parts(
                policy, {k: v for k, v in tensors.items() if k.startswith(ABSTENTION_PREFIX)}
            )
            if policy
            else None,
            model_args=ModelArgs(**meta["model_args"]),
            class_names=tuple(meta["class_names"]),
            mean=meta["mean"],
            std=meta["std"],
            temperature=meta["temperature"],
            hparams=meta["hparams"],
            metrics=meta["metrics"],
            provenance=meta["provenance"],
            reference=meta.get("reference") or {},
        )

    def build(self, device: torch.device | str = "cpu") -> FashionCNN:
        """The network with these weights, in eval mode on `device`."""
        model = build_model(self.model_args)
        model.load_state_dict(self.state_dict)
        return model.to(device).eval()
