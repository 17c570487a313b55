"""FastAPI wiring of the prediction service: the app factory, its lifespan (the model is loaded and warmed up there,
not at import), middleware and routers. The routes live in `serving/routes/`, their dependencies in `serving/deps.py`.

uvicorn serving.app:app            # from the repository root; settings from FASHIONFLOW_* variables
fmnist-serve --run FashionFlow/123 # the console script (serving/cli.py)
fmnist-serve --tag production      # follows the tag: switches to a newly tagged run without a restart
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image

from fmnist.images.normalise import prepare_upload

from .decoding import DecodePool
from .following import ModelFollower, install, warm
from .inference import MicroBatcher
from .limits import BodyLimitMiddleware
from .metrics import MetricsMiddleware, ServiceMetrics
from .model_loading import ModelLoadError, load_model
from .open_inference import ProtocolError
from .request_ids import RequestIdMiddleware
from .routes import drift, inference_protocol, model, predict, status
from .settings import Settings

log = logging.getLogger("serving")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load and warm up the model before the first request, then follow the tag if asked to (`serving.following`);
    put the service out of readiness on the way down."""
    settings: Settings = app.state.settings
    app.state.not_ready = "loading the model"
    try:
        served = load_model(settings)
    except ModelLoadError as err:
        log.error("cannot start: %s", err)
        raise
    try:
        predictor, seconds = warm(served, settings)
    except RuntimeError as err:
        log.error("cannot start: the model of %s fails its warm-up: %s", served.run_pathspec, err)
        raise ModelLoadError(f"the model of {served.run_pathspec} fails its warm-up: {err}") from None
    prepare_upload(_warm_up_png(), settings.max_image_pixels)
    app.state.decoder = DecodePool(
        settings.decode_threads,
        settings.decode_queue,
        settings.decode_wait_seconds,
        app.state.metrics,
        decode_seconds=settings.decode_seconds,
        small_pixels=settings.small_decode_pixels,
    )
    log.info("model of %s warm in %.2fs; serving", served.run_pathspec, seconds)
    if settings.batching:
        app.state.batcher = MicroBatcher(predictor, settings.max_batch)
        app.state.batcher.start()
    install(app, predictor)
    app.state.not_ready = None
    app.state.metrics.model_loaded.set(1)
    if settings.reload_interval > 0:
        app.state.follower = ModelFollower(app, settings)
        app.state.follower.start()
    try:
        yield
    finally:
        app.state.predictor, app.state.not_ready = None, "shutting down"
        app.state.metrics.model_loaded.set(0)
        if app.state.follower is not None:
            await app.state.follower.stop()
            app.state.follower = None
        if app.state.batcher is not None:
            await app.state.batcher.stop()
            app.state.batcher = None
        app.state.decoder.shutdown()


async def validation_problem(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 body, but capped: a batch of bad pixels must not produce a megabyte of error entries."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse({"detail": [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in errors[:10]]}, 422)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service for `settings` (default: read from the environment)."""
    app = FastAPI(
        title="FashionFlow prediction service",
        summary="Fashion-MNIST classes for uploaded images, from the model FashionFlow selected, and whether the"
        " model is sure.",
        version="0.2.0",
        lifespan=lifespan,
    )
    app.state.settings, app.state.metrics = settings or Settings(), ServiceMetrics(app.state)
    app.state.predictor, app.state.batcher, app.state.follower, app.state.drift = None, None, None, None
    app.state.model_since, app.state.decoder = None, None
    app.state.not_ready = "the model is loaded when the service starts (lifespan not run)"
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=app.state.settings.max_body_bytes,
        max_seconds=app.state.settings.body_timeout_seconds,
        path_limits={"/predict/pixels": pixel_body_limit(app.state.settings)},
    )
    # Outermost (added last), so that a 413 or 408 from the limits also carries the request's id.
    app.add_middleware(RequestIdMiddleware)
    app.add_exception_handler(RequestValidationError, validation_problem)
    app.add_exception_handler(ProtocolError, inference_protocol.protocol_error)
    # The prediction routes first: FastAPI matches a request against the routers in order, and most requests are
    # predictions (matching them last would make each one try every other route first).
    for router in (predict.router, inference_protocol.router, status.router, model.router, drift.router):
        app.include_router(router)
    _document_limits(app, app.state.settings)
    return app


def pixel_body_limit(settings: Settings) -> int:
    """The largest `/predict/pixels` body worth parsing: `max_batch` images of 784 values at 32 bytes each (a
    17-digit float with its comma and an indented line's spaces), plus room for the options, capped by the general
    body limit (1.6 MiB for 64 images). JSON parsing holds the interpreter whatever thread runs it, so a body of
    millions of numbers is refused by its size instead of parsed: posting 6 MB of them held /health at p50 193 ms,
    p99 234 ms; refused by size, p50 1.7 ms, p99 6.0 ms; a body just under the limit (830,000 numbers), p50 24 ms,
    p99 47 ms against 55 and 66 before (`benchmarks/serve_pixels_block.py [--numbers 830000] --compare-tree DIR`)."""
    return min(settings.max_body_bytes, settings.max_batch * 784 * 32 + 64 * 1024)


def _document_limits(app: FastAPI, settings: Settings) -> None:
    """Put the batch limit of these settings into the OpenAPI schema (`maxItems`), so the schema says what is valid."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schemas = generate()["components"]["schemas"]
            schemas["Body_predict_batch_predict_batch_post"]["properties"]["files"]["maxItems"] = settings.max_batch
            schemas["PixelBatch"]["properties"]["images"]["maxItems"] = settings.max_batch
            schemas.update(inference_protocol.schema_components())
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def _warm_up_png() -> bytes:
    """A small photo-like PNG (a dark square on light grey), so warm-up runs every stage of the normalisation."""
    image = Image.new("L", (96, 96), 200)
    image.paste(40, (24, 16, 72, 80))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


app = create_app()
