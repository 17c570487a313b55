"""Drift signals of the running service: a window of its recent predictions against the served model's reference.

The window and the arithmetic are `fmnist.trust.drift`'s; this module ties them to the served model (the reference comes
from its record, and a switch to another model starts a new window, since predicted classes and unsure answers are
the model's) and exposes them to Prometheus as gauges computed at scrape time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from fmnist.trust.drift import DriftReference, DriftSummary, DriftThresholds, DriftWindow, image_statistics

from .model_loading import ServedModel
from .settings import Settings

log = logging.getLogger(__name__)


def thresholds_from(settings: Settings) -> DriftThresholds:
    return DriftThresholds(
        class_divergence=settings.drift_class_divergence,
        unsure_increase=settings.drift_unsure_increase,
        inverted_share=settings.drift_inverted_share,
        input_shift=settings.drift_input_shift,
        min_samples=settings.drift_min_samples,
    )


def reference_of(served: ServedModel) -> DriftReference:
    """The drift reference stored in the model record; a uniform prior without input statistics for older records."""
    record = served.record
    if record.reference:
        try:
            return DriftReference.from_dict(record.reference)
        except (KeyError, TypeError, ValueError, IndexError) as err:
            log.warning("%s: drift reference unreadable (%s); using a uniform class prior", served.run_pathspec, err)
    return DriftReference.uniform(len(record.class_names))


class DriftMonitor:
    """The sliding window of one served model's predictions, and its reference."""

    def __init__(self, settings: Settings, served: ServedModel) -> None:
        self.thresholds = thresholds_from(settings)
        self.window = DriftWindow(settings.drift_window, len(served.record.class_names))
        self.reset(served)

    def reset(self, served: ServedModel) -> None:
        """Start a new window for `served` (after a switch: its classes and unsure answers are another model's)."""
        self.run = served.run_pathspec
        self.reference = reference_of(served)
        self.window.reset()

    def observe(
        self,
        run: str,
        pixels: np.ndarray,
        classes: Sequence[int],
        unsure: Sequence[bool],
        inverted: Sequence[bool | None],
    ) -> None:
        """Record the predictions of one request: (B, 28, 28) model inputs and what the model said about each.

        Predictions of a model that is no longer served (a request that began before a switch) are left out."""
        if run != self.run:
            return
        means, foreground = image_statistics(pixels)
        for i, cls in enumerate(classes):
            self.window.add(cls, unsure[i], inverted[i], float(means[i]), float(foreground[i]))

    def summary(self) -> DriftSummary:
        return self.window.summary(self.reference, self.thresholds)


class DriftCollector(Collector):
    """Prometheus gauges of the drift signals, computed from the window when scraped."""

    def __init__(self, app_state: Any) -> None:
        self.state = app_state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        monitor: DriftMonitor | None = getattr(self.state, "drift", None)
        value = GaugeMetricFamily(
            "fashionflow_drift_signal", "Drift signal over the recent-prediction window", labels=["signal"]
        )
        threshold = GaugeMetricFamily(
            "fashionflow_drift_threshold", "Value above which a drift signal counts as drift", labels=["signal"]
        )
        past = GaugeMetricFamily(
            "fashionflow_drift_past_threshold", "1 when the drift signal is past its threshold", labels=["signal"]
        )
        count = GaugeMetricFamily("fashionflow_drift_window_predictions", "Predictions in the drift window")
        if monitor is not None:
            summary = monitor.summary()
            count.add_metric([], summary.count)
            for signal in summary.signals:
                if signal.value is not None:
                    value.add_metric([signal.name], signal.value)
                threshold.add_metric([signal.name], signal.threshold)
                past.add_metric([signal.name], float(signal.past_threshold))
        yield from (value, threshold, past, count)

    def describe(self) -> Iterable[Any]:
        return []
