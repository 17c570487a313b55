"""Liveness, readiness, Prometheus metrics and the demo page."""

from __future__ import annotations

import os
from importlib import resources

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..deps import MetricsDep
from ..schemas import ERRORS, Health, Readiness

router = APIRouter(tags=["status"])

_DEMO_HTML = resources.files("serving").joinpath("static/demo.html").read_text(encoding="utf-8")


@router.get("/health")
async def health() -> Health:
    """The process is alive (it may still be loading or shutting down; see /ready)."""
    return Health(status="ok")


@router.get("/ready", responses={503: ERRORS[503]}, response_model_exclude_none=True)
async def ready(request: Request) -> Readiness:
    """200 once the model is loaded and warm; 503 with the reason otherwise. While following the tag has a problem
    (a newly tagged run that fails to load or times out), still 200, the model in `run` serving on, with the
    problem in `following_problem`."""
    state = request.app.state
    predictor = state.predictor
    if predictor is None:
        raise HTTPException(503, f"not ready: {state.not_ready}")
    problem = state.follower.problem if state.follower is not None else None
    return Readiness(ready=True, run=predictor.served.run_pathspec, pid=os.getpid(), following_problem=problem)


@router.get("/metrics", response_class=Response)
async def prometheus_metrics(metrics: MetricsDep) -> Response:
    """Prometheus text format: requests and latencies per route, predictions per class, unsure answers."""
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def demo() -> HTMLResponse:
    """A small page to upload or draw an image and see the top-3 classes, and whether the model is sure."""
    return HTMLResponse(_DEMO_HTML)
