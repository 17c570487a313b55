"""Prometheus metrics of one app instance (its own registry) and the ASGI middleware that records requests."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServiceMetrics:
    """Request counts and latencies per route, predictions per class, and whether a model is loaded.

    With several uvicorn workers every worker counts its own requests; scrape each or run one worker per container.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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
            "fashionflow_model_loaded", "1 once the model is loaded and warm", registry=self.registry
        )


class MetricsMiddleware:
    """Counts every HTTP request and times it; the route label is the matched route's template, never the raw
    path, so probing random URLs cannot blow up the number of series."""

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
            self.metrics.requests.labels(label, scope["method"], str(status[0])).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - start)
