"""One function per flow step: each takes plain inputs and returns plain results, so the flow stays a thin shell.

Nothing here knows about Metaflow; the flow stores what these functions return as artifacts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from .checkpoint import ModelRecord
from .config import HParams, Profile, expand_grid, load_profile
from .data import CLASS_NAMES, Splits, load_dataset, make_splits
from .evaluate import classification_metrics, predict_logits
from .provenance import environment
from .runtime import amp_dtype, configure_threads, describe_device, pick_device
from .train import EpochCallback, check_injected_fault, train_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    """What the start step records: the validated profile, the grid to sweep, and where the code came from."""

    profile: dict[str, Any]
    grid: list[dict[str, Any]]
    environment: dict[str, Any]


def plan_run(profile_data: dict[str, Any]) -> RunPlan:
    """Validate the profile, expand its grid and record the code and library versions."""
    profile = load_profile(profile_data)
    grid = [hp.model_dump() for hp in expand_grid(profile)]
    log.info("profile %r: %d training split(s), seed %d", profile.name, len(grid), profile.seed)
    return RunPlan(profile=profile.model_dump(mode="json"), grid=grid, environment=environment())


@dataclass(frozen=True)
class PreparedData:
    """The load step's output: verified train/validation arrays and what identifies the data."""

    splits: Splits
    fingerprint: str
    source: str
    summary: dict[str, Any]


def prepare_data(profile_data: dict[str, Any]) -> PreparedData:
    """Load and verify the real dataset, then split a stratified validation set off the training set.

    The test set is verified here (it is part of the fingerprint) but not returned: only `evaluate` reads it.
    """
    profile = load_profile(profile_data)
    data = load_dataset(profile.data.dir, profile.data.download)
    splits = make_splits(data, profile.data.val_size, profile.seed, profile.data.train_subset)
    summary = {
        "source": data.source,
        "fingerprint": data.fingerprint,
        "train_size": len(splits.train_labels),
        "val_size": len(splits.val_labels),
        "test_size": len(data.test_labels),
        "train_class_counts": np.bincount(splits.train_labels, minlength=len(CLASS_NAMES)).tolist(),
        "val_class_counts": np.bincount(splits.val_labels, minlength=len(CLASS_NAMES)).tolist(),
    }
    return PreparedData(splits=splits, fingerprint=data.fingerprint, source=data.source, summary=summary)


@dataclass(frozen=True)
class SplitOutcome:
    """One trained split: its model record and the numbers the join ranks it by."""

    record: bytes
    summary: dict[str, Any]
    history: list[dict[str, float]]


def train_split(
    profile_data: dict[str, Any],
    hparams: dict[str, Any],
    index: int,
    splits: Splits,
    parallel_tasks: int = 1,
    on_epoch: EpochCallback | None = None,
) -> SplitOutcome:
    """Train split `index` of the grid on the device this process finds; weights come back as a model record."""
    check_injected_fault(index)
    profile = load_profile(profile_data)
    hp = HParams(**hparams)
    device = pick_device(profile.compute.device)
    threads = configure_threads(profile.compute.threads_per_task, 1 if device.type == "cuda" else parallel_tasks)
    amp = amp_dtype(device, profile.compute.amp)
    log.info("split %d on %s (%d torch threads, amp %s): %s", index, describe_device(device), threads, amp, hparams)
    # Each split gets its own seed, derived from the run's, so that splits differ only in their hyper-parameters
    # and initialisation noise is not mistaken for a hyper-parameter effect across reruns.
    result = train_model(hp, splits, device, seed=profile.seed * 1000 + index, amp=amp, on_epoch=on_epoch)
    summary = {
        "index": index,
        "hparams": hparams,
        "val_accuracy": result.val_accuracy,
        "val_loss": result.val_loss,
        "train_seconds": result.train_seconds,
        "images_per_second": result.images_per_second,
        "parameters": result.parameters,
        "device": describe_device(device),
    }
    record = ModelRecord(
        state_dict=result.state_dict,
        model_args=result.model_args,
        hparams=hparams,
        metrics={"val_accuracy": result.val_accuracy, "val_loss": result.val_loss},
        provenance={"split_index": index, "device": summary["device"], "train_seconds": result.train_seconds},
    )
    return SplitOutcome(record=record.to_bytes(), summary=summary, history=result.history)


@dataclass(frozen=True)
class Evaluation:
    """The evaluate step's output: test metrics, and the final model record that carries them."""

    record: bytes
    metrics: dict[str, Any]


def evaluate_selected(
    record_bytes: bytes, profile_data: dict[str, Any], fingerprint: str, provenance: dict[str, Any]
) -> Evaluation:
    """The chosen model on the test set: the first and only time the test set is read in a run."""
    profile: Profile = load_profile(profile_data)
    data = load_dataset(profile.data.dir, profile.data.download)
    if data.fingerprint != fingerprint:
        raise RuntimeError(
            f"dataset changed during the run: fingerprint {data.fingerprint[:12]} at evaluate, {fingerprint[:12]} at load"
        )
    device = pick_device(profile.compute.device)
    configure_threads(profile.compute.threads_per_task)
    record = ModelRecord.from_bytes(record_bytes)
    model = record.build(device)
    logits = predict_logits(model, data.test_images, device, mean=record.mean, std=record.std)  # (10000, 10)
    metrics = classification_metrics(logits, data.test_labels)
    log.info("test accuracy %.4f on %d images", metrics["accuracy"], metrics["num_examples"])
    record.metrics = {**record.metrics, "test_accuracy": metrics["accuracy"]}
    record.provenance = {**record.provenance, **provenance, "data_fingerprint": fingerprint}
    return Evaluation(record=record.to_bytes(), metrics=metrics)

