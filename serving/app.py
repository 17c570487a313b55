"""FastAPI wiring of the prediction service; the model is loaded and warmed up in the lifespan, not at import.

uvicorn serving.app:app            # from the repository root; settings from FASHIONFLOW_* variables
fmnist-serve --run FashionFlow/123 # the console script (serving/cli.py)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .inference import MicroBatcher, Predictor
from .limits import BodyLimitMiddleware
from .metrics import MetricsMiddleware, ServiceMetrics
from .model_loading import ModelLoadError, load_model
from .preprocess import ImageError, ImageTooLarge, Prepared, pixels_from_values, prepare_image
from .schemas import BatchPrediction, Health, ModelInfo, PixelBatch, Prediction, Problem, Readiness
from .settings import Settings

log = logging.getLogger("serving")

# Uploads up to this size are decoded on the event loop: a small PNG takes well under a millisecond, less than a
# hop to the thread pool. Bigger ones go to the thread pool so one large photo cannot stall other requests.
INLINE_DECODE_BYTES = 64 * 1024

ERRORS = {
    400: {"model": Problem, "description": "Malformed request (e.g. a broken multipart body)."},
    413: {"model": Problem, "description": "Body, image or batch over the configured limit."},
    415: {"model": Problem, "description": "Wrong Content-Type."},
    422: {"model": Problem, "description": "Not an image, truncated image, bad pixel values or shape."},
    503: {"model": Problem, "description": "Model not loaded (yet, or any more)."},
}


def get_predictor(request: Request) -> Predictor:
    """The loaded model; 503 with the reason while there is none."""
    if request.app.state.predictor is None:
        raise HTTPException(503, f"model not ready: {request.app.state.not_ready}")
    return request.app.state.predictor


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


Model = Annotated[Predictor, Depends(get_predictor)]
TopK = Annotated[int | None, Query(ge=1, le=10, description="How many classes to list (default 3, configurable).")]


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service for `settings` (default: read from the environment)."""
    settings = settings or Settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.not_ready = "loading the model"
        try:
            served = load_model(settings)
        except ModelLoadError as err:
            log.error("cannot start: %s", err)
            raise
        predictor = Predictor(served)
        seconds = predictor.warm_up(settings.max_batch)
        prepare_image(_WARM_UP_PNG, settings.max_image_pixels)
        log.info("model of %s warm in %.2fs; serving", served.run_pathspec, seconds)
        if settings.batching:
            app.state.batcher = MicroBatcher(predictor, settings.max_batch)
            app.state.batcher.start()
        app.state.predictor, app.state.not_ready = predictor, None
        metrics.model_loaded.set(1)
        try:
            yield
        finally:
            app.state.predictor, app.state.not_ready = None, "shutting down"
            metrics.model_loaded.set(0)
            if app.state.batcher is not None:
                await app.state.batcher.stop()
                app.state.batcher = None

    app = FastAPI(
        title="FashionFlow prediction service",
        summary="Fashion-MNIST classes for uploaded images, from the model FashionFlow selected.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings, app.state.metrics = settings, metrics
    app.state.batcher = None
    app.state.predictor, app.state.not_ready = None, "the model is loaded when the service starts (lifespan not run)"
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def validation_problem(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's 422 body, but capped: a batch of bad pixels must not produce a megabyte of error entries.
        errors = [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in exc.errors()[:10]]
        return JSONResponse({"detail": errors}, status_code=422)

    async def prepare_upload(upload: UploadFile, index: int | None = None) -> Prepared:
        where = f"file {upload.filename!r}" if index is None else f"files[{index}] ({upload.filename!r})"
        data = await upload.read()
        try:
            if len(data) <= INLINE_DECODE_BYTES:
                return prepare_image(data, settings.max_image_pixels)
            return await run_in_threadpool(prepare_image, data, settings.max_image_pixels)
        except ImageTooLarge as err:
            raise HTTPException(413, f"{where}: {err}") from None
        except ImageError as err:
            raise HTTPException(422, f"{where}: {err}") from None

    def count(model: Predictor, rows: list[dict]) -> None:
        metrics.images.observe(len(rows))
        for row in rows:
            metrics.predictions.labels(row["class_name"]).inc()

    @app.get("/health", tags=["status"])
    async def health() -> Health:
        """The process is alive (it may still be loading or shutting down; see /ready)."""
        return Health(status="ok")

    @app.get("/ready", tags=["status"], responses={503: ERRORS[503]})
    async def ready(request: Request) -> Readiness:
        """200 once the model is loaded and warm; 503 with the reason otherwise."""
        if request.app.state.predictor is None:
            raise HTTPException(503, f"not ready: {request.app.state.not_ready}")
        return Readiness(ready=True, run=request.app.state.predictor.served.run_pathspec)

    @app.get("/model", tags=["model"], responses={503: ERRORS[503]})
    async def model_info(model: Model) -> ModelInfo:
        """Which model is served: run, hyper-parameters, data fingerprint, test metrics, classes, temperature."""
        served, record = model.served, model.record
        return ModelInfo(
            **served.info,
            model_args=record.model_args.to_dict(),
            class_names=list(record.class_names),
            temperature=record.temperature,
            normalization={"mean": record.mean, "std": record.std},
            device=str(served.device),
            provenance=record.provenance,
        )

    @app.post(
        "/predict",
        tags=["predict"],
        dependencies=[Depends(require_multipart)],
        responses={k: ERRORS[k] for k in (400, 413, 415, 422, 503)},
    )
    async def predict(
        request: Request,
        model: Model,
        file: Annotated[UploadFile, File(description="One image: PNG, JPEG, GIF, BMP, TIFF, WebP; any size/mode.")],
        top_k: TopK = None,
    ) -> Prediction:
        """Classify one uploaded image; probabilities are calibrated (softmax of logits / temperature)."""
        prepared = await prepare_upload(file)
        batcher = request.app.state.batcher
        if batcher is not None:
            probs = await batcher.probabilities(prepared.pixels)
        else:
            probs = model.probabilities(prepared.pixels[None])[0]
        row = model.describe(probs, top_k or settings.default_top_k)
        count(model, [row])
        return Prediction(**row, inverted=prepared.inverted, filename=file.filename)

    @app.post(
        "/predict/batch",
        tags=["predict"],
        dependencies=[Depends(require_multipart)],
        responses={k: ERRORS[k] for k in (400, 413, 415, 422, 503)},
    )
    async def predict_batch(
        model: Model,
        files: Annotated[
            list[UploadFile], File(description="Several images (limit: FASHIONFLOW_MAX_BATCH, default 64).")
        ],
        top_k: TopK = None,
    ) -> BatchPrediction:
        """Classify several uploaded images in one forward pass; results in upload order."""
        check_batch_size(len(files))
        prepared = [await prepare_upload(f, i) for i, f in enumerate(files)]
        probs = await run_in_threadpool(model.probabilities, np.stack([p.pixels for p in prepared]))
        k = top_k or settings.default_top_k
        rows = [model.describe(p, k) for p in probs]
        count(model, rows)
        return BatchPrediction(
            run=model.served.run_pathspec,
            predictions=[
                Prediction(**row, inverted=p.inverted, filename=f.filename)
                for row, p, f in zip(rows, prepared, files, strict=True)
            ],
        )

    @app.post(
        "/predict/pixels",
        tags=["predict"],
        dependencies=[Depends(require_json)],
        responses={k: ERRORS[k] for k in (413, 415, 422, 503)},
    )
    async def predict_pixels(model: Model, batch: PixelBatch) -> BatchPrediction:
        """Classify raw 28x28 images sent as JSON numbers (0-255, light garment on dark, as in Fashion-MNIST)."""
        check_batch_size(len(batch.images))
        try:
            pixels = np.stack([pixels_from_values(values, i) for i, values in enumerate(batch.images)])
        except ImageError as err:
            raise HTTPException(422, str(err)) from None
        probs = await run_in_threadpool(model.probabilities, pixels)
        rows = [model.describe(p, batch.top_k) for p in probs]
        count(model, rows)
        return BatchPrediction(run=model.served.run_pathspec, predictions=[Prediction(**row) for row in rows])

    def check_batch_size(n: int) -> None:
        if n > settings.max_batch:
            raise HTTPException(413, f"too many images in one request: {n}, the limit is {settings.max_batch}")

    @app.get("/metrics", tags=["status"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus text format: requests and latencies per route, predictions per class."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def demo() -> HTMLResponse:
        """A small page to upload or draw an image and see the top-3 classes."""
        return HTMLResponse(_DEMO_HTML)

    return app


def _warm_up_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (28, 28)).save(buffer, format="PNG")
    return buffer.getvalue()


_WARM_UP_PNG = _warm_up_png()
_DEMO_HTML = resources.files("serving").joinpath("static/demo.html").read_text(encoding="utf-8")

app = create_app()
