"""Prometheus metrics of one app instance (its own registry) and the ASGI middleware that records requests.

With several uvicorn workers (`fmnist-serve --workers N`), the CLI points PROMETHEUS_MULTIPROC_DIR at a fresh folder
before the workers start: prometheus_client then keeps every worker's counts in files there, and `/metrics`, from
whichever worker answers, is the whole server's (its multiprocess mode). The drift signals stay the answering
worker's own: each worker keeps its own window of recent predictions.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

# The HTTP methods counted under their own name; any other (a client may send any token as a method) is "other", so
# made-up methods cannot add time series without end.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
# Stages of a tag switch that can fail, each counted from the start (at 0): the lookup of the tag, loading the
# record, its warm-up, and any of them running past the reload timeout.
RELOAD_STAGES = ("find", "load", "warm_up", "timeout")


class ServiceMetrics:
    """Request counts and latencies per route, predictions per class, the served model (loaded, which run, switches,
    failed switches) and the drift signals.

    With several workers under `fmnist-serve` the counts are the whole server's (see the module's docstring).
    """

    def __init__(self, app_state: Any = None) -> None:
        """`app_state`: the app's state, whose `drift` monitor the drift gauges read (none without it)."""
        self.registry = CollectorRegistry()
        self.worker_registry = CollectorRegistry()  # what only this worker knows: its drift window
        if app_state is not None:  # drift gauges, computed from the app's window at scrape time
            from .drift import DriftCollector

            self.worker_registry.register(DriftCollector(app_state))
        self.requests = Counter(
            "fashionflow_http_requests",
            "HTTP requests by route, method and status code",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fashionflow_http_request_duration_seconds",
            "Time from request start to response end, by route",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.predictions = Counter(
            "fashionflow_predictions",
            "Images classified, by predicted class",
            ["class_name"],
            registry=self.registry,
        )
        self.unsure = Counter(
            "fashionflow_unsure_answers",
            "Predictions marked confident: false, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.images = Histogram(
            "fashionflow_images_per_request",
            "Images in one prediction request",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.model_loaded = Gauge(
            "fashionflow_model_loaded",
            "1 once the model is loaded and warm (in every worker)",
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.model_info = Gauge(
            "fashionflow_model_info",
            "1 for the run whose model is served (one series: the previous run's is removed on a switch)",
            ["run"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.model_switches = Counter(
            "fashionflow_model_switches",
            "Switches to a newly tagged run's model, without a restart",
            registry=self.registry,
        )
        self.model_switched_at = Gauge(
            "fashionflow_model_switched_at_seconds",
            "Unix time at which the served model was loaded or last switched to",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.model_reload_failures = Counter(
            "fashionflow_model_reload_failures",
            "Newly tagged runs not switched to, by stage: find (the lookup), load (the record), warm_up, or timeout"
            " (one of them took longer than the reload timeout)",
            ["stage"],
            registry=self.registry,
        )
        for stage in RELOAD_STAGES:  # every series from the start, at 0
            self.model_reload_failures.labels(stage)
        self.model_stale = Gauge(
            "fashionflow_model_stale",
            "1 while following the tag has a problem (its run could not be loaded, or the tag not looked up, or one"
            " of them timed out; the current model keeps serving), else 0",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.decodes_admitted = Gauge(
            "fashionflow_decodes_admitted",
            "Uploads being decoded on a decoding lane's threads or waiting for one",
            ["lane"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.decode_refusals = Counter(
            "fashionflow_decode_refusals",
            "Uploads answered 503 because their decoding lane (small or large) was saturated: full (no slot) or wait"
            " (no thread within the wait)",
            ["lane", "reason"],
            registry=self.registry,
        )
        for lane in ("small", "large"):
            for reason in ("full", "wait"):
                self.decode_refusals.labels(lane, reason)
        self.decode_timeouts = Counter(
            "fashionflow_decode_timeouts",
            "Uploads answered 422 because their decode ran past decode_seconds",
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """The Prometheus text of `/metrics`: the whole server's counts (every worker's, in multiprocess mode, else
        this app's), then this worker's drift signals."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            merged = CollectorRegistry()
            MultiProcessCollector(merged)
            return generate_latest(merged) + generate_latest(self.worker_registry)
        return generate_latest(self.registry) + generate_latest(self.worker_registry)


class MetricsMiddleware:
    """Counts every HTTP request and times it. Every label comes from a fixed set: the route is the matched route's
    template (an unmatched path is "unmatched", never the raw path), the method one of METHODS or "other", the status
    a status code, so probing random URLs or made-up methods cannot blow up the number of series."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def record_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.requests.labels(label, method, str(status[0])).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - start)
