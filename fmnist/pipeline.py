"""One function per flow step: each takes the typed profile and plain inputs and returns plain results, so the flow
stays a thin shell.

Nothing here knows about Metaflow; the flow stores what these functions return as artifacts. The test-only fault
hook lives here too, at the edge, so that the training loop of the library never knows about it.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from typing import Any

import numpy as np

from fmnist.core.config import HParams, Profile, expand_grid
from fmnist.core.data import CLASS_NAMES, TEST_SIZE, Splits, load_dataset, make_splits
from fmnist.core.faults import failing, kill_point
from fmnist.core.provenance import environment
from fmnist.core.real_photos import fit_parts, load_real_photos
from fmnist.core.runtime import amp_dtype, configure_threads, describe_device, pick_device
from fmnist.evaluation.report import build_report
from fmnist.evaluation.report_schema import EvaluationReport
from fmnist.release.model_record import ModelRecord
from fmnist.tracking import Tracker, log_report
from fmnist.training.checkpoint import CheckpointStore, deterministic_kernels
from fmnist.training.loop import EpochCallback, train_model
from fmnist.training.photo_batches import photo_training_set
from fmnist.trust.drift import reference_from_images

log = logging.getLogger(__name__)

# Test hook: a comma-separated list of trial indices whose training raises InjectedFault before the first epoch, to
# exercise a failed foreach task and `resume`.
FAULT_ENV = "FASHIONFLOW_FAIL_TRIALS"


class InjectedFault(RuntimeError):
    """Raised on purpose by the FASHIONFLOW_FAIL_TRIALS test hook."""


def check_injected_fault(trial: int) -> None:
    """Raise InjectedFault if $FASHIONFLOW_FAIL_TRIALS names this trial."""
    if trial in failing(FAULT_ENV):
        raise InjectedFault(f"trial {trial} failed on purpose ({FAULT_ENV}={os.environ[FAULT_ENV]})")


# Test hook standing in for a spot reclamation: "<trial>:<epoch>[,...]" kills the training process itself (SIGKILL
# of its own pid, no Python clean-up) right after that epoch's checkpoint, on the task's first attempt only.
KILL_ENV = "FASHIONFLOW_KILL_TRIALS"


def kill_epoch(trial: int, attempt: int) -> int | None:
    """The epoch after which $FASHIONFLOW_KILL_TRIALS kills this trial on this attempt, or None."""
    return None if attempt > 0 else kill_point(KILL_ENV, trial)


def _killing(on_epoch: EpochCallback | None, epoch: int) -> EpochCallback:
    def callback(stats: dict[str, float]) -> None:
        if on_epoch is not None:
            on_epoch(stats)
        if int(stats["epoch"]) == epoch:
            log.warning("killing this process after epoch %d on purpose (%s)", epoch, KILL_ENV)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)

    return callback


@dataclass(frozen=True)
class RunPlan:
    """What the start step records: the trials to train (one grid point each) and where the code came from."""

    grid: list[dict[str, Any]]
    environment: dict[str, Any]


def plan_run(profile: Profile) -> RunPlan:
    """Expand the profile's grid into trials and record the code and library versions."""
    grid = [hp.model_dump() for hp in expand_grid(profile)]
    log.info("profile %r: %d trial(s), seed %d", profile.name, len(grid), profile.seed)
    return RunPlan(grid=grid, environment=environment())


@dataclass(frozen=True)
class PreparedData:
    """The load step's output: verified train/validation arrays and what identifies the data."""

    splits: Splits
    fingerprint: str
    source: str
    summary: dict[str, Any]


def prepare_data(profile: Profile) -> PreparedData:
    """Load and verify the real dataset, then split a stratified validation set off the training set; when a trial of
    the grid trains on real photographs, the `fit` split's training half too, as the model will see them.

    The test set is verified here (it is part of the fingerprint) but not returned: only `evaluate` reads it.
    """
    data = load_dataset(profile.data.dir, profile.data.download)
    splits = make_splits(data, profile.data.val_size, profile.seed, profile.data.train_subset)
    if any(hp.real_photo_share > 0 for hp in expand_grid(profile)):
        splits = with_real_photos(splits)
    has_class = np.zeros(0, dtype=bool) if splits.photo_right is None else splits.photo_right.any(axis=1)  # (M,)
    summary = {
        "source": data.source,
        "fingerprint": data.fingerprint,
        "train_size": len(splits.train_labels),
        "val_size": len(splits.val_labels),
        "test_size": TEST_SIZE,  # verified by load_dataset; only `evaluate` opens the test split
        "train_class_counts": np.bincount(splits.train_labels, minlength=len(CLASS_NAMES)).tolist(),
        "val_class_counts": np.bincount(splits.val_labels, minlength=len(CLASS_NAMES)).tolist(),
        "real_photos_trained_on": int(has_class.sum()),
        # Garments without a class, trained on towards the uniform answer by trials with `real_photo_no_class`.
        "real_photos_without_a_class": int((~has_class).sum()),
    }
    return PreparedData(splits=splits, fingerprint=data.fingerprint, source=data.source, summary=summary)


def with_real_photos(splits: Splits) -> Splits:
    """`splits` with the real photographs a trial may train on: the `fit` split's training half, as the model sees
    them (`fmnist.training.photo_batches.photo_training_set`)."""
    photo_images, photo_right = photo_training_set(fit_parts(load_real_photos("fit"))[0])
    return Splits(
        splits.train_images, splits.train_labels, splits.val_images, splits.val_labels, photo_images, photo_right
    )


@dataclass(frozen=True)
class TrialOutcome:
    """One trained trial: its model record (weights, no calibration yet) and the numbers the join ranks it by."""

    model: bytes
    summary: dict[str, Any]
    history: list[dict[str, float]]


def trial_seed(run_seed: int, index: int) -> int:
    """The seed of a run's trial `index`, from the run's seed: a rerun or resumed trial reproduces, and a benchmark
    that seeds a candidate as trial 0 of a run trains the very same network."""
    return run_seed * 1000 + index


def train_trial(
    profile: Profile,
    hparams: dict[str, Any],
    index: int,
    splits: Splits,
    parallel_tasks: int = 1,
    on_epoch: EpochCallback | None = None,
    run_id: str = "local",
    checkpoints: CheckpointStore | None = None,
    attempt: int = 0,
) -> TrialOutcome:
    """Train trial `index` of the grid on the device this process finds; weights come back as a model record.

    With `checkpoints`, the trial saves its state as it goes and resumes from the latest one an earlier attempt
    left (`attempt` counts retries of the task). With tracking on, the trial is a W&B run named `trial-<index>` in
    group `run_id` (config + per-epoch metrics).
    """
    check_injected_fault(index)
    kill_after = kill_epoch(index, attempt)
    hp = HParams(**hparams)
    device = pick_device(profile.compute.device)
    threads = configure_threads(profile.compute.threads_per_task, 1 if device.type == "cuda" else parallel_tasks)
    amp = amp_dtype(device, profile.compute.amp)
    log.info("trial %d on %s (%d torch threads, amp %s): %s", index, describe_device(device), threads, amp, hparams)
    tracker = Tracker.start(
        profile.tracking.model_dump(),
        group=run_id,
        name=f"trial-{index}",
        job_type="train",
        config={**hparams, "trial_index": index, "profile": profile.name, "seed": profile.seed},
    )

    def epoch_done(stats: dict[str, float]) -> None:
        tracker.log(stats, step=int(stats["epoch"]))
        if on_epoch is not None:
            on_epoch(stats)

    with tracker, deterministic_kernels(profile.compute.deterministic):
        result = train_model(
            hp,
            splits,
            device,
            seed=trial_seed(profile.seed, index),
            amp=amp,
            on_epoch=epoch_done if kill_after is None else _killing(epoch_done, kill_after),
            checkpoints=checkpoints,
        )
        tracker.summarize(
            {
                "val_accuracy": result.val_accuracy,
                "val_loss": result.val_loss,
                "train_seconds": result.train_seconds,
                "parameters": result.parameters,
            }
        )
    summary = {
        "index": index,
        "hparams": hparams,
        "val_accuracy": result.val_accuracy,
        "val_loss": result.val_loss,
        "train_seconds": result.train_seconds,
        "images_per_second": result.images_per_second,
        "parameters": result.parameters,
        "device": describe_device(device),
        "resumed_at_epoch": result.resumed_at,
        "attempt": attempt,
    }
    record = ModelRecord(
        state_dict=result.state_dict,
        model_args=result.model_args,
        hparams=hparams,
        metrics={"val_accuracy": result.val_accuracy, "val_loss": result.val_loss},
        provenance={"trial_index": index, "device": summary["device"], "train_seconds": result.train_seconds},
    )
    return TrialOutcome(model=record.to_bytes(), summary=summary, history=result.history)


@dataclass(frozen=True)
class Evaluation:
    """The evaluate step's output: the calibrated model record (temperature and abstention thresholds fitted) and
    the whole evaluation report."""

    model: bytes
    report: EvaluationReport


def evaluate_selected(
    trained_model: bytes,
    profile: Profile,
    fingerprint: str,
    provenance: dict[str, Any],
    val_images: np.ndarray,
    val_labels: np.ndarray,
    run_id: str = "local",
) -> Evaluation:
    """The chosen model on the test set (its first and only read in a run), calibrated on the validation split.

    The fitted temperature, the headline numbers and the provenance go into the returned model record, so the
    service serves calibrated probabilities and can say where its model came from.
    """
    data = load_dataset(profile.data.dir, profile.data.download)
    if data.fingerprint != fingerprint:
        raise RuntimeError(
            f"dataset changed during the run: fingerprint {data.fingerprint[:12]} at evaluate, "
            f"{fingerprint[:12]} at load"
        )
    device = pick_device(profile.compute.device)
    configure_threads(profile.compute.threads_per_task)
    record = ModelRecord.from_bytes(trained_model)
    record.provenance = {
        **record.provenance,  # trial index, training device and time, from the train step
        **provenance,  # run, profile, code and library versions, from the flow
        "data_fingerprint": fingerprint,
        "seed": profile.seed,
        "hparams": record.hparams,
        "evaluation_device": describe_device(device),
    }
    # Fits the temperature and the abstention thresholds into `record` (validation only), then reads the test set.
    test_images, test_labels = data.test_split()  # logs that the evaluate step opened it
    report = build_report(
        record,
        test_images,
        test_labels,
        val_images,
        val_labels,
        device,
        profile.evaluation,
        seed=profile.seed,
    )
    record.metrics = {**record.metrics, **report.summary()}
    # The service's drift reference: the validation split is drawn from the training set, so it stands for it (its
    # unsure share included: the test set chooses nothing, not even a reference).
    unsure = report.validation_unsure_share
    record.reference = reference_from_images(val_images, val_labels, len(record.class_names), unsure).to_dict()
    with Tracker.start(
        profile.tracking.model_dump(),
        group=run_id,
        name="evaluate",
        job_type="evaluate",
        config={**record.hparams, "profile": profile.name, "data_fingerprint": fingerprint},
    ) as tracker:
        log_report(tracker, report)
    return Evaluation(model=record.to_bytes(), report=report)
