"""Typed dependencies of the routes, all from one place: what a prediction needs (`Serving`), the predictor, drift.

Everything lives on `app.state`, set by `serving.app.create_app` and its lifespan; a route asks for what it needs
with one of the `Annotated` aliases below, as FastAPI's own project template does. The prediction routes take one
dependency for all of it (content type checked, model taken, settings, metrics, batcher, drift window).

They are `async def` although none of them awaits anything: FastAPI runs a plain `def` dependency in the thread
pool, and those hops cost more per request than the dependencies themselves (measured with py-spy under wrk).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request

from .decoding import DecodePool
from .drift import DriftMonitor
from .inference import MicroBatcher, Predictor
from .metrics import ServiceMetrics
from .settings import Settings


async def get_predictor(request: Request) -> Predictor:
    """The loaded model; 503 with the reason while there is none.

    Taken once per request: a request is answered by this predictor to the end, even if the service switches to a
    newly tagged model meanwhile (`serving.following`), so its response names the run that produced it."""
    return current_serving(request).predictor


async def get_metrics(request: Request) -> ServiceMetrics:
    """The app's Prometheus metrics (its own registry)."""
    return request.app.state.metrics


async def get_drift(request: Request) -> DriftMonitor:
    """The drift window of the served model; 503 while no model is loaded."""
    monitor = current_serving(request).drift
    if monitor is None:  # set together with the predictor (`serving.following.install`)
        raise HTTPException(503, f"model not ready: {request.app.state.not_ready}")
    return monitor


@dataclass(frozen=True, slots=True)
class Serving:
    """Everything a prediction request uses, taken from the app once, in one dependency: each dependency costs
    FastAPI a few microseconds of resolution per request, which at thousands of requests a second is measurable."""

    predictor: Predictor  # answers this request to the end, even if the service switches models meanwhile
    settings: Settings
    metrics: ServiceMetrics
    batcher: MicroBatcher | None
    drift: DriftMonitor | None
    decoder: DecodePool  # set with the predictor, in the lifespan


async def serving_uploads(request: Request) -> Serving:
    """For the upload routes: 415 unless the body is multipart/form-data, then 503 while no model is loaded."""
    require_multipart(request)
    return current_serving(request)


async def serving_json(request: Request) -> Serving:
    """For the JSON routes: 415 unless the body is application/json, then 503 while no model is loaded."""
    require_json(request)
    return current_serving(request)


def current_serving(request: Request) -> Serving:
    """What a prediction request uses, from the app's state; 503 while no model is loaded."""
    state = request.app.state
    if state.predictor is None:
        raise HTTPException(503, f"model not ready: {state.not_ready}")
    return Serving(state.predictor, state.settings, state.metrics, state.batcher, state.drift, state.decoder)


def require_multipart(request: Request) -> None:
    """415 unless the body is multipart/form-data (checked before the body is looked at)."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise HTTPException(415, f"expected Content-Type multipart/form-data with the image file(s), got {kind!r}")


def require_json(request: Request) -> None:
    """415 unless the body is application/json."""
    kind = request.headers.get("content-type", "")
    if kind.split(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, f"expected Content-Type application/json, got {kind!r}")


UploadServingDep = Annotated[Serving, Depends(serving_uploads)]
JsonServingDep = Annotated[Serving, Depends(serving_json)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
DriftDep = Annotated[DriftMonitor, Depends(get_drift)]
TopK = Annotated[int | None, Query(ge=1, le=10, description="How many classes to list (default 3, configurable).")]
