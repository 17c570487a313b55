"""Classify images: one upload, several uploads, or raw 28x28 pixel values sent as JSON.

Every upload goes through `fmnist.imaging.prepare_upload`, the normalisation the evaluate step measured on rendered
photos; every answer says whether the model is sure (`confident`) and, when not, why (`unsure_reason`), and names
the run whose model produced it (`run`). A request takes the served model once (`Serving.predictor`) and is answered
by it to the end, even while the service switches to a newly tagged model. Each prediction also enters the drift
window.

Answers are serialised by pydantic-core straight to JSON bytes (`_json`); FastAPI's own path validates the returned
model again and encodes it in Python, a tenth of a request's time at full load. The response models still document
the bodies in the OpenAPI schema.
"""

from __future__ import annotations

import io
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, BeforeValidator

from fmnist.imaging import Prepared, normalize_photo, prepare_upload
from fmnist.uploads import ImageError, ImageTooLarge, pixels_from_values

from ..deps import JsonServingDep, Serving, TopK, UploadServingDep
from ..schemas import ERRORS, BatchPrediction, PixelBatch, Prediction, SinglePrediction
from ..settings import Settings

router = APIRouter(prefix="/predict", tags=["predict"])

# Uploads up to this size are decoded on the event loop: a small PNG takes well under a millisecond, less than a
# hop to the thread pool. Bigger ones go to the thread pool so one large photo cannot stall other requests.
INLINE_DECODE_BYTES = 64 * 1024

UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {k: ERRORS[k] for k in (400, 413, 415, 422, 503)}

# What an uploaded file must be: an image in a format the decoder reads. Stated in the OpenAPI schema as the file
# parts' `encoding.contentType`, so generated clients and schema-driven test tools send images, not arbitrary bytes.
IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/tiff", "image/webp")


def _file_part(value: Any) -> Any:
    """A form part sent without a filename, as a file. RFC 7578 only recommends the filename, but Starlette hands such
    a part over as text: decoded as UTF-8 where the bytes are valid UTF-8, else as Latin-1. Encoding it back gives the
    bytes: Latin-1 whenever every character fits (always the case for binary image data, which is never valid UTF-8),
    UTF-8 otherwise. Files with a filename pass through untouched."""
    if not isinstance(value, str):
        return value
    try:
        data = value.encode("latin-1")
    except UnicodeEncodeError:
        data = value.encode("utf-8")
    return UploadFile(io.BytesIO(data), size=len(data))


# An uploaded image: a file part, with or without a filename.
ImagePart = Annotated[UploadFile, BeforeValidator(_file_part)]


def _images_only(field: str) -> dict[str, Any]:
    encoding = {field: {"contentType": ", ".join(IMAGE_MEDIA_TYPES)}}
    return {"requestBody": {"content": {"multipart/form-data": {"encoding": encoding}}}}


@router.post("", response_model=SinglePrediction, responses=UPLOAD_ERRORS, openapi_extra=_images_only("file"))
async def predict(
    serving: UploadServingDep,
    file: Annotated[
        ImagePart,
        File(
            description="One image: PNG, JPEG, GIF, BMP, TIFF, WebP; any size/mode.",
            json_schema_extra={"minLength": 1},  # an empty file is no image (422): the schema says so
        ),
    ],
    top_k: TopK = None,
) -> Response:
    """Classify one uploaded image; probabilities are calibrated (softmax of logits / temperature), and
    `confident: false` with an `unsure_reason` marks an answer not to be relied on. `run` names the model's run."""
    model, settings = serving.predictor, serving.settings
    prepared = await _prepare(file, settings)
    if serving.batcher is not None:
        scored = await serving.batcher.score(prepared.pixels, prepared.empty, model)
    else:
        scored = model.score(prepared.pixels[None], [prepared.empty])[0]
    prediction = model.describe(scored, top_k or settings.default_top_k, prepared.inverted, file.filename, model.run)
    _record(serving, prepared.pixels[None], [prediction])
    return _json(prediction)


@router.post("/batch", response_model=BatchPrediction, responses=UPLOAD_ERRORS, openapi_extra=_images_only("files"))
async def predict_batch(
    serving: UploadServingDep,
    files: Annotated[
        list[ImagePart],
        File(
            description="Several images (limit: FASHIONFLOW_MAX_BATCH, default 64).",
            # At least one, each non-empty: what the service accepts, stated in the schema only, so the answers to
            # anything else keep the service's own 4xx messages.
            json_schema_extra={
                "minItems": 1,
                "items": {"type": "string", "contentMediaType": "application/octet-stream", "minLength": 1},
            },
        ),
    ],
    top_k: TopK = None,
) -> Response:
    """Classify several uploaded images in one forward pass; results in upload order."""
    model, settings = serving.predictor, serving.settings
    _check_batch_size(len(files), settings)
    prepared = [await _prepare(f, settings, i) for i, f in enumerate(files)]
    pixels = np.stack([p.pixels for p in prepared])  # (B, 28, 28)
    scored = await run_in_threadpool(model.score, pixels, [p.empty for p in prepared])
    k = top_k or settings.default_top_k
    predictions = [
        model.describe(s, k, p.inverted, f.filename) for s, p, f in zip(scored, prepared, files, strict=True)
    ]
    _record(serving, pixels, predictions)
    return _json(BatchPrediction(run=model.run, predictions=predictions))


@router.post("/pixels", response_model=BatchPrediction, responses={k: ERRORS[k] for k in (400, 413, 415, 422, 503)})
async def predict_pixels(serving: JsonServingDep, batch: PixelBatch) -> Response:
    """Classify raw 28x28 images sent as JSON numbers (0-255, light garment on dark, as in Fashion-MNIST); with
    `normalize: true` they first go through the same normalisation as uploads."""
    model = serving.predictor
    _check_batch_size(len(batch.images), serving.settings)
    try:
        pixels = np.stack([pixels_from_values(values, i) for i, values in enumerate(batch.images)])  # (B, 28, 28)
    except ImageError as err:
        raise HTTPException(422, str(err)) from None
    inverted: list[bool | None] = [None] * len(pixels)
    empty = [False] * len(pixels)
    if batch.normalize:
        normalized = [normalize_photo(p) for p in pixels]
        pixels = np.stack([n.pixels for n in normalized])
        inverted, empty = [n.inverted for n in normalized], [n.empty for n in normalized]
    scored = await run_in_threadpool(model.score, pixels, empty)
    predictions = [model.describe(s, batch.top_k, inv) for s, inv in zip(scored, inverted, strict=True)]
    _record(serving, pixels, predictions)
    return _json(BatchPrediction(run=model.run, predictions=predictions))


async def _prepare(upload: UploadFile, settings: Settings, index: int | None = None) -> Prepared:
    """Read and normalise one upload; 413 or 422 naming the file and the problem."""
    named = f" ({upload.filename!r})" if upload.filename is not None else " (no filename)"
    where = f"the file{named}" if index is None else f"files[{index}]{named}"
    data = await upload.read()
    try:
        if len(data) <= INLINE_DECODE_BYTES:
            return prepare_upload(data, settings.max_image_pixels)
        return await run_in_threadpool(prepare_upload, data, settings.max_image_pixels)
    except ImageTooLarge as err:
        raise HTTPException(413, f"{where}: {err}") from None
    except ImageError as err:
        raise HTTPException(422, f"{where}: {err}") from None


def _check_batch_size(n: int, settings: Settings) -> None:
    if n > settings.max_batch:
        raise HTTPException(413, f"too many images in one request: {n}, the limit is {settings.max_batch}")


def _json(body: BaseModel) -> Response:
    return Response(body.model_dump_json(), media_type="application/json")


def _record(serving: Serving, pixels: np.ndarray, predictions: list[Prediction]) -> None:
    """Count the predictions (Prometheus) and add them to the drift window (O(1) each; signals are computed when
    read). `pixels`: the (B, 28, 28) model inputs."""
    metrics = serving.metrics
    metrics.images.observe(len(predictions))
    for p in predictions:
        metrics.predictions.labels(p.class_name).inc()
        if not p.confident:
            metrics.unsure.labels(p.unsure_reason or "unknown").inc()
    if serving.drift is not None:
        serving.drift.observe(
            serving.predictor.run,
            pixels,
            [p.class_index for p in predictions],
            [not p.confident for p in predictions],
            [p.inverted for p in predictions],
        )
