"""Typed dependencies of the routes, all from one place: settings, metrics, the predictor, the batcher, drift.

Everything lives on `app.state`, set by `serving.app.create_app` and its lifespan; a route asks for what it needs
with one of the `Annotated` aliases below, as FastAPI's own project template does.

They are `async def` although none of them awaits anything: FastAPI runs a plain `def` dependency in the thread
pool, and those hops cost more per request than the dependencies themselves (measured with py-spy under wrk).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request

from .drift import DriftMonitor
from .inference import MicroBatcher, Predictor
from .metrics import ServiceMetrics
from .settings import Settings


async def get_settings(request: Request) -> Settings:
    """The service's settings (one object, read from the environment when the app was made)."""
    return request.app.state.settings


async def get_metrics(request: Request) -> ServiceMetrics:
    """The app's Prometheus metrics (its own registry)."""
    return request.app.state.metrics


async def get_predictor(request: Request) -> Predictor:
    """The loaded model; 503 with the reason while there is none.

    Taken once per request: a request is answered by this predictor to the end, even if the service switches to a
    newly tagged model meanwhile (`serving.following`), so its response names the run that produced it."""
    predictor = request.app.state.predictor
    if predictor is None:
        raise HTTPException(503, f"model not ready: {request.app.state.not_ready}")
    return predictor


async def get_batcher(request: Request) -> MicroBatcher | None:
    """The micro-batcher of single-image requests, when batching is on."""
    return request.app.state.batcher


async def get_drift(request: Request) -> DriftMonitor:
    """The drift window of the served model; 503 while no model is loaded."""
    monitor = request.app.state.drift
    if monitor is None or request.app.state.predictor is None:
        raise HTTPException(503, f"model not ready: {request.app.state.not_ready}")
    return monitor


async def require_multipart(request: Request) -> None:
    """415 unless the body is multipart/form-data (checked before the body is looked at)."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise HTTPException(415, f"expected Content-Type multipart/form-data with the image file(s), got {kind!r}")


async def require_json(request: Request) -> None:
    """415 unless the body is application/json."""
    kind = request.headers.get("content-type", "")
    if kind.split(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, f"expected Content-Type application/json, got {kind!r}")


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
BatcherDep = Annotated[MicroBatcher | None, Depends(get_batcher)]
DriftDep = Annotated[DriftMonitor, Depends(get_drift)]
TopK = Annotated[int | None, Query(ge=1, le=10, description="How many classes to list (default 3, configurable).")]
