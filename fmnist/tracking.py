"""Experiment tracking with Weights & Biases: off by default, and never able to fail a run.

Switched on by the profile (`tracking.wandb: online | offline`) or by the standard `WANDB_MODE` variable, which
wins when set (`WANDB_MODE=disabled` switches tracking off whatever the profile says). Other standard variables
(`WANDB_API_KEY`, `WANDB_DIR`, `WANDB_PROJECT`, ...) work as W&B documents them. Every W&B call is guarded: an
exception (no network, no API key, W&B not installed) is logged as a warning and the run goes on untracked.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from typing import Any, Literal, cast

from fmnist.evaluation.report_schema import EvaluationReport

log = logging.getLogger(__name__)

Mode = Literal["online", "offline"]
_ENV_MODES: dict[str, Mode | None] = {
    "online": "online",
    "run": "online",
    "offline": "offline",
    "dryrun": "offline",
    "disabled": None,
}


def resolve_mode(profile_setting: str = "off") -> Mode | None:
    """'online', 'offline', or None (tracking off), from $WANDB_MODE if set, else the profile's setting."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in _ENV_MODES:
        return _ENV_MODES[env]
    if profile_setting in ("online", "offline"):
        return cast(Mode, profile_setting)
    return None


class Tracker:
    """One W&B run, or a no-op stand-in when tracking is off or W&B failed; same methods either way."""

    def __init__(self, run: Any = None) -> None:
        self._run = run

    @property
    def enabled(self) -> bool:
        """True while a W&B run is attached."""
        return self._run is not None

    @property
    def run_dir(self) -> str | None:
        """The local directory W&B writes this run's files to."""
        return getattr(self._run, "dir", None) if self._run is not None else None

    @classmethod
    def start(
        cls,
        tracking: dict[str, Any] | None,
        *,
        group: str,
        name: str,
        job_type: str,
        config: dict[str, Any] | None = None,
    ) -> Tracker:
        """A W&B run in `group` (the Metaflow run id) when tracking is on; a no-op Tracker otherwise."""
        tracking = tracking or {}
        mode = resolve_mode(tracking.get("wandb", "off"))
        if mode is None:
            return cls()
        try:
            import wandb

            run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or tracking.get("project", "fashionflow"),
                entity=os.environ.get("WANDB_ENTITY") or tracking.get("entity"),
                group=group,
                name=name,
                job_type=job_type,
                config=config or {},
                mode=mode,
                # Read per run, not once per process as W&B's settings singleton would.
                dir=os.environ.get("WANDB_DIR") or None,
                reinit="create_new",
                # Metaflow captures the step's stdout itself; W&B's console capture would only duplicate it.
                settings=wandb.Settings(console="off", silent=True),
            )
        except Exception as err:  # tracking must never fail the run
            log.warning("W&B tracking is off for %s: wandb.init failed: %s", name, err)
            return cls()
        log.info("W&B run %s (%s mode, group %s) at %s", name, mode, group, getattr(run, "dir", "?"))
        return cls(run)

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        if self._run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as err:  # tracking must never fail the run
            log.warning("W&B %s failed, continuing without it: %s", what, err)

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log a dict of metrics (e.g. one epoch's), optionally at `step`."""
        self._guard("log", lambda: self._run.log(metrics, step=step))

    def summarize(self, values: dict[str, Any]) -> None:
        """Set summary values of the run (the numbers W&B shows in its run table)."""
        self._guard("summary", lambda: self._run.summary.update(values))

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Log a table under `key`."""

        def log_it() -> None:
            import wandb

            self._run.log({key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

        self._guard(f"table {key}", log_it)

    def log_confusion_matrix(self, key: str, cm: Sequence[Sequence[int]], class_names: Sequence[str]) -> None:
        """Log a (C, C) count matrix (row = true class) as W&B's interactive confusion matrix."""

        def log_it() -> None:
            import wandb

            y_true = [t for t, row in enumerate(cm) for p, n in enumerate(row) for _ in range(int(n))]
            preds = [p for row in cm for p, n in enumerate(row) for _ in range(int(n))]
            plot = wandb.plot.confusion_matrix(y_true=y_true, preds=preds, class_names=list(class_names))
            self._run.log({key: plot})

        self._guard(f"confusion matrix {key}", log_it)

    def log_png(self, key: str, png: bytes, caption: str | None = None) -> None:
        """Log PNG bytes as an image."""

        def log_it() -> None:
            import wandb
            from PIL import Image

            self._run.log({key: wandb.Image(Image.open(io.BytesIO(png)), caption=caption)})

        self._guard(f"image {key}", log_it)

    def finish(self) -> None:
        """Close the run (flushes its files); the Tracker is a no-op afterwards."""
        self._guard("finish", lambda: self._run.finish())
        self._run = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()


def log_report(tracker: Tracker, report: EvaluationReport) -> None:
    """Log the evaluation report: headline summary, confusion matrix, calibration bins and reliability diagram,
    per-class scores, the robustness table, every photo-suite figure and the abstention figures. A no-op when
    tracking is off."""
    if not tracker.enabled:
        return
    from fmnist.core.data import CLASS_NAMES
    from fmnist.evaluation.plots import reliability_diagram

    summary = report.summary()
    tracker.log(summary)
    tracker.summarize(summary)
    tracker.log_confusion_matrix("confusion_matrix", report.test.confusion_matrix, CLASS_NAMES)
    cal = report.calibration
    tracker.log_table(
        "calibration_bins",
        [
            "bin_lo",
            "bin_hi",
            "count_before",
            "confidence_before",
            "accuracy_before",
            "count_after",
            "confidence_after",
            "accuracy_after",
        ],
        [
            [b.lo, b.hi, b.count, b.confidence, b.accuracy, a.count, a.confidence, a.accuracy]
            for b, a in zip(cal.test_before.bins, cal.test_after.bins, strict=True)
        ],
    )
    tracker.log_png("reliability_diagram", reliability_diagram(cal.test_before, cal.test_after))
    tracker.log_table(
        "per_class",
        ["class", "precision", "recall", "f1", "support"],
        [[c.name, c.precision, c.recall, c.f1, c.support] for c in report.test.per_class],
    )
    tracker.log_table(
        "robustness",
        ["perturbation", "accuracy", "change"],
        [[r.name, r.accuracy, r.change] for r in report.robustness],
    )
    rows = report.photos.rows
    tracker.log_table(
        "photo_robustness",
        ["condition", "severity", "realistic", "accuracy", "relative"],
        [[r.condition, r.severity, r.realistic, r.accuracy, r.relative] for r in rows],
    )
    tracker.log({f"photos/{r.condition}/{r.severity:g}": r.accuracy for r in rows})
    if report.wild_photos is not None:
        tracker.log_table(
            "wild_photos",
            ["condition", "severity", "realistic", "accuracy", "relative", "confident_share", "confident_accuracy"],
            [
                [w.condition, w.severity, w.realistic, w.accuracy, w.relative, w.confident_share, w.confident_accuracy]
                for w in report.wild_photos.rows
            ],
        )
    abstention = report.abstention
    tracker.log({f"nongarments_unsure/{k}": v for k, v in abstention.nongarments.per_kind.items()})
    tracker.log_table(
        "risk_coverage",
        ["coverage", "risk", "threshold"],
        [[p.coverage, p.risk, p.threshold] for p in abstention.risk_coverage],
    )
