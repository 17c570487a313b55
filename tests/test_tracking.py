"""W&B tracking: off by default, switched on by profile or WANDB_MODE, offline runs written with the metrics,
and a W&B failure never fails the caller."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from fmnist.core.config import EvaluationConfig, load_profile, parse_profile
from fmnist.core.data import Splits
from fmnist.core.model import ModelArgs, build_model
from fmnist.evaluation.report import build_report
from fmnist.pipeline import train_trial
from fmnist.release.model_record import ModelRecord
from fmnist.tracking import Tracker, log_report, resolve_mode

wandb = pytest.importorskip("wandb")


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B in offline mode, writing under tmp_path; returns the directory its runs appear in."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path / "wandb"


def run_files(wandb_dir: Path) -> dict[str, bytes]:
    """Offline run directory name -> the bytes of its .wandb run file (metric keys are stored as plain text)."""
    # The run file is flushed by W&B's background service; shutting it down makes the writes complete.
    wandb.teardown()
    runs = sorted(wandb_dir.glob("offline-run-*"))
    return {r.name: b"".join(f.read_bytes() for f in r.glob("run-*.wandb")) for r in runs}


def test_mode_resolution(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert resolve_mode("off") is None
    assert resolve_mode("offline") == "offline"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_mode("off") == "offline"  # the standard variable switches it on
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("online") is None  # ... and off


def test_off_by_default(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    tracker = Tracker.start(parse_profile("{}")["tracking"], group="1", name="train-0", job_type="train")
    assert not tracker.enabled
    tracker.log({"x": 1.0})  # no-ops
    tracker.finish()
    assert not (tmp_path / "wandb").exists()


def tiny_splits(n_train: int = 200, n_val: int = 50) -> Splits:
    rng = np.random.default_rng(0)
    return Splits(
        rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        np.arange(n_train, dtype=np.uint8) % 10,
        rng.integers(0, 256, size=(n_val, 28, 28), dtype=np.uint8),
        np.arange(n_val, dtype=np.uint8) % 10,
    )


def test_a_trial_is_an_offline_run_with_config_and_epoch_metrics(offline_wandb):
    profile = parse_profile("name: t\nhparams: {width: 4, epochs: 2, batch_size: 50}\ntracking: {wandb: offline}\n")
    train_trial(load_profile(profile), profile["hparams"], 3, tiny_splits(), run_id="4242")
    files = run_files(offline_wandb)
    assert len(files) == 1
    blob = next(iter(files.values()))
    for key in (b"train_loss", b"train_accuracy", b"val_loss", b"val_accuracy", b"images_per_second", b"epoch"):
        assert key in blob, key
    for text in (b"4242", b"trial-3", b"batch_size", b"label_smoothing"):  # group, name, config
        assert text in blob, text


def test_evaluation_report_is_logged(offline_wandb):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    labels = np.arange(40, dtype=np.uint8) % 10
    record = ModelRecord(state_dict=build_model(ModelArgs(width=4)).state_dict(), model_args=ModelArgs(width=4))
    evaluation = EvaluationConfig(
        photo_per_class=1, photo_size=56, nongarments_per_kind=1, wild_per_class=1, fit_photo_per_class=1
    )
    report = build_report(record, images, labels, images, labels, torch.device("cpu"), evaluation)
    with Tracker.start({}, group="4242", name="evaluate", job_type="evaluate") as tracker:
        assert tracker.enabled
        log_report(tracker, report)
    blob = next(iter(run_files(offline_wandb).values()))
    for key in (
        b"test_accuracy",
        b"test_ece_before",
        b"test_ece_after",
        b"temperature",
        b"confusion_matrix",
        b"calibration_bins",
        b"reliability_diagram",
        b"robustness",
        b"per_class",
        b"photo_robustness",
        b"wild_photos",
        b"risk_coverage",
    ):
        assert key in blob, key
    media = [p.name for p in offline_wandb.glob("offline-run-*/files/media/**/*") if p.is_file()]
    assert any(name.startswith("confusion_matrix") for name in media)
    assert any(name.startswith("reliability_diagram") for name in media)


def test_wandb_failure_only_warns(offline_wandb, monkeypatch, caplog):
    def broken_init(**kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken_init)
    with caplog.at_level(logging.WARNING, logger="fmnist.tracking"):
        tracker = Tracker.start({"wandb": "online"}, group="1", name="train-0", job_type="train")
    assert not tracker.enabled
    assert "no network" in caplog.text

    class BrokenRun:
        def log(self, *args, **kwargs):
            raise OSError("disk full")

        def finish(self):
            raise OSError("disk full")

    tracker = Tracker(BrokenRun())
    with caplog.at_level(logging.WARNING, logger="fmnist.tracking"):
        tracker.log({"x": 1})
        tracker.finish()
    assert caplog.text.count("disk full") == 2
