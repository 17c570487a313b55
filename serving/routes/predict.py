"""Classify images: one upload, several uploads, or raw 28x28 pixel values sent as JSON.

Every upload goes through `fmnist.images.normalise.prepare_upload`, the normalisation the evaluate step measured on
rendered photos; every answer says whether the model is sure (`confident`; of the class too, `class_confident`) and,
when not, why (`unsure_reason`), and names the run whose model produced it (`run`). A request takes the served model
once (`Serving.predictor`) and is answered by it to the end, even while the service switches to a newly tagged model.
Each prediction also enters the drift window. With `return_input` an answer also carries the 28x28 image the network
received (`model_input`), so a user can tell a bad crop from a bad model; without it the answers are exactly as they
were, at no extra cost.

Answers are serialised by pydantic-core straight to JSON bytes (`_json`); FastAPI's own path validates the returned
model again and encodes it in Python, a tenth of a request's time at full load. The response models still document
the bodies in the OpenAPI schema.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import APIRouter, File, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, BeforeValidator

from fmnist.images.normalise import WORK_SIZE, Prepared, normalize_photo, prepare_opened
from fmnist.images.uploads import ImageError, ImageTooLarge, Upload, open_upload, pixels_from_values

from ..deps import JsonServingDep, Serving, TopK, UploadServingDep
from ..inference import png_data_url
from ..schemas import (
    ERRORS,
    BatchPrediction,
    BatchPredictionWithInput,
    CropBox,
    PixelBatch,
    Prediction,
    PredictionWithInput,
    SinglePrediction,
    SinglePredictionWithInput,
)
from ..settings import Settings

# An answer's form with `model_input` (`_with_input`): for one upload, or for one image of a batch.
WithInput = TypeVar("WithInput", SinglePredictionWithInput, PredictionWithInput)
# (left, top, right, bottom) fractions of an upload: where the garment was found (`Normalized.box`).
Box = tuple[float, float, float, float]


class OffloadedJSONRequest(Request):
    """A request whose JSON body, when large, is parsed on a worker thread: up to the body limit (10 MiB) of numbers
    takes a tenth of a second and more to parse, time the event loop would otherwise not serve anyone else."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            if len(body) <= INLINE_JSON_BYTES:
                self._json = json.loads(body)
            else:
                self._json = await run_in_threadpool(json.loads, body)
        return self._json


class OffloadedJSONRoute(APIRoute):
    """The routes of this router hand FastAPI an `OffloadedJSONRequest` (FastAPI's custom-route mechanism)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(OffloadedJSONRequest(request.scope, request.receive))

        return route


router = APIRouter(prefix="/predict", tags=["predict"], route_class=OffloadedJSONRoute)

# JSON bodies up to this size are parsed on the event loop (a few images' pixels, about 3 kB each); larger ones on a
# worker thread. Converting the values to arrays follows the same rule, by image count. Bounds chosen by size, not
# measured; what was measured is the whole route under a hostile body (`pixel_body_limit` in serving/app.py).
INLINE_JSON_BYTES = 64 * 1024
INLINE_PIXEL_IMAGES = 8

# Uploads that decode to at most this many pixels (read from the header, before any pixel is decoded) are decoded on
# the event loop: a 28x28 scan decodes and normalises in a fraction of a millisecond, less than a hop to a thread.
# Anything bigger goes to the bounded decode pool (serving/decoding.py), whatever its file size: a 48 kB PNG can
# claim 36 megapixels. The bound keeps the event loop's share of a decode small (`benchmarks/serve_decode.py`).
INLINE_DECODE_PIXELS = 64 * 64

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


# `return_input` of the upload routes, read from the query string by `_return_input` rather than declared as a
# FastAPI parameter: FastAPI resolves every declared parameter on every request, sent or not (about 5 us each,
# measured with `request_params_to_args`), and the option is off on the hot path. So the schema states it here.
RETURN_INPUT = "return_input"
RETURN_INPUT_PARAMETER: dict[str, Any] = {
    "name": RETURN_INPUT,
    "in": "query",
    "required": False,
    "schema": {"type": "boolean", "default": False, "title": "Return Input"},
    "description": "Also return the 28x28 image the network received, after normalisation, as `model_input` (a"
    " lossless PNG data URL), to tell a bad crop from a bad model: `true` or `false`.",
}

# The 200 answer: the plain body, or with `return_input` the same body plus `model_input` (`...WithInput` schemas).
ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The prediction(s); with `return_input`, each one also carries the image the model saw"
        " (`model_input`)."
    },
    **{k: ERRORS[k] for k in (400, 413, 415, 422, 503)},
}


def _upload_extra(field: str) -> dict[str, Any]:
    """What the upload routes add to their OpenAPI operation: the file parts are images (`encoding.contentType`, so
    generated clients and schema-driven test tools send images), and the `return_input` query parameter."""
    encoding = {field: {"contentType": ", ".join(IMAGE_MEDIA_TYPES)}}
    return {
        "parameters": [RETURN_INPUT_PARAMETER],
        "requestBody": {"content": {"multipart/form-data": {"encoding": encoding}}},
    }


@router.post(
    "",
    response_model=SinglePrediction | SinglePredictionWithInput,
    responses=ANSWERS,
    openapi_extra=_upload_extra("file"),
)
async def predict(
    request: Request,
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
    `confident: false` with an `unsure_reason` marks an answer not to be relied on; a photo can be confident of its
    garment family alone (`family`, with `class_confident: false`). `run` names the model's run.
    With `return_input=true` the answer also carries `model_input`, the 28x28 image the model saw."""
    return_input = _return_input(request)
    model, settings = serving.predictor, serving.settings
    prepared = await _prepare(file, serving)
    if serving.batcher is not None:
        scored = await serving.batcher.score(prepared.pixels, prepared.empty, model, photo=prepared.photo)
    else:
        scored = model.score(prepared.pixels[None], [prepared.empty], [prepared.photo])[0]
    prediction = model.describe(scored, top_k or settings.default_top_k, prepared.inverted, file.filename, model.run)
    record_predictions(serving, prepared.pixels[None], [prediction])
    if return_input:  # one small PNG (~50 us): encoded here, cheaper than a hop to the thread pool
        return _json(_with_input(prediction, prepared.pixels, SinglePredictionWithInput, prepared.box))
    return _json(prediction)


@router.post(
    "/batch",
    response_model=BatchPrediction | BatchPredictionWithInput,
    responses=ANSWERS,
    openapi_extra=_upload_extra("files"),
)
async def predict_batch(
    request: Request,
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
    """Classify several uploaded images in one forward pass; results in upload order. With `return_input=true`
    each prediction also carries `model_input`, the 28x28 image the model saw."""
    return_input = _return_input(request)
    model, settings = serving.predictor, serving.settings
    check_batch_size(len(files), settings)
    prepared = await prepare_all([await _open(f, settings, i) for i, f in enumerate(files)], serving)
    pixels = np.stack([p.pixels for p in prepared])  # (B, 28, 28)
    scored = await run_in_threadpool(model.score, pixels, [p.empty for p in prepared], [p.photo for p in prepared])
    k = top_k or settings.default_top_k
    predictions = [
        model.describe(s, k, p.inverted, f.filename) for s, p, f in zip(scored, prepared, files, strict=True)
    ]
    record_predictions(serving, pixels, predictions)
    if return_input:
        boxes = [p.box for p in prepared]
        return _json(await run_in_threadpool(_batch_with_inputs, model.run, predictions, pixels, boxes))
    return _json(BatchPrediction(run=model.run, predictions=predictions))


@router.post("/pixels", response_model=BatchPrediction | BatchPredictionWithInput, responses=ANSWERS)
async def predict_pixels(serving: JsonServingDep, batch: PixelBatch) -> Response:
    """Classify raw 28x28 images sent as JSON numbers (0-255, light garment on dark, as in Fashion-MNIST); with
    `normalize: true` they first go through the same normalisation as uploads. With `return_input: true` each
    prediction also carries `model_input`, the 28x28 image the model saw."""
    model = serving.predictor
    check_batch_size(len(batch.images), serving.settings)
    try:
        if len(batch.images) <= INLINE_PIXEL_IMAGES:
            pixels = _pixel_arrays(batch.images)
        else:
            pixels = await run_in_threadpool(_pixel_arrays, batch.images)
    except ImageError as err:
        raise HTTPException(422, str(err)) from None
    inverted: list[bool | None] = [None] * len(pixels)
    empty, photo = [False] * len(pixels), [False] * len(pixels)  # raw pixels are taken as Fashion-MNIST scans
    if batch.normalize:
        normalized = [normalize_photo(p) for p in pixels]
        pixels = np.stack([n.pixels for n in normalized])
        inverted, empty = [n.inverted for n in normalized], [n.empty for n in normalized]
        photo = [n.photo for n in normalized]
    scored = await run_in_threadpool(model.score, pixels, empty, photo)
    predictions = [model.describe(s, batch.top_k, inv) for s, inv in zip(scored, inverted, strict=True)]
    record_predictions(serving, pixels, predictions)
    if batch.return_input:
        return _json(await run_in_threadpool(_batch_with_inputs, model.run, predictions, pixels))
    return _json(BatchPrediction(run=model.run, predictions=predictions))


def _pixel_arrays(images: Sequence[Sequence[Any]]) -> np.ndarray:
    """The JSON images as (B, 28, 28) uint8; ImageError naming the first bad one."""
    return np.stack([pixels_from_values(list(values), i) for i, values in enumerate(images)])


def _return_input(request: Request) -> bool:
    """The `return_input` query parameter, read as the schema types it: `true`, or `false` (also when absent).
    Anything else (`1`, `True`, `yes`) is a 422 in FastAPI's own form, naming the parameter and what it accepts."""
    value = request.query_params.get(RETURN_INPUT)
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    message = f"{RETURN_INPUT} must be true or false, got {value!r}"
    raise RequestValidationError([{"type": "bool_parsing", "loc": ("query", RETURN_INPUT), "msg": message}])


def _with_input(prediction: Prediction, pixels: np.ndarray, kind: type[WithInput], box: Box | None = None) -> WithInput:
    """`prediction` as its `kind` with `model_input`: the same fields, and `pixels`, the (28, 28) uint8 image the
    network received, as a PNG data URL; `box`, where in the upload it was cut from (`Normalized.box`), as `crop`."""
    crop = None if box is None else CropBox(left=box[0], top=box[1], right=box[2], bottom=box[3])
    return kind(**dict(prediction), model_input=png_data_url(pixels), crop=crop)


def _batch_with_inputs(
    run: str, predictions: Sequence[Prediction], pixels: np.ndarray, boxes: Sequence[Box | None] | None = None
) -> BatchPredictionWithInput:
    """The batch answer with each image's model input (and crop, where `boxes` tell); `pixels`: the (B, 28, 28) model
    inputs. About 50 us of PNG encoding per image: the routes run it in the thread pool, so a large batch does not
    stall the event loop."""
    crops = list(boxes) if boxes is not None else [None] * len(predictions)
    items = [_with_input(p, x, PredictionWithInput, b) for p, x, b in zip(predictions, pixels, crops, strict=True)]
    return BatchPredictionWithInput(run=run, predictions=items)


async def _prepare(upload: UploadFile, serving: Serving, index: int | None = None) -> Prepared:
    """Read, check and normalise one upload; 413, 422 or 503 naming the file and the problem."""
    opened, where = await _open(upload, serving.settings, index)
    return await decode_opened(opened, serving, where)


async def _open(upload: UploadFile, settings: Settings, index: int | None = None) -> tuple[Upload, str]:
    """Read one upload and its image header (no pixel decoded): the checked header, and how errors name the file."""
    named = f" ({upload.filename!r})" if upload.filename is not None else " (no filename)"
    where = f"the file{named}" if index is None else f"files[{index}]{named}"
    return open_bytes(await upload.read(), settings, where), where


def open_bytes(data: bytes, settings: Settings, where: str) -> Upload:
    """Check one upload's format and image header (no pixel decoded); 413 or 422 naming `where` and the problem."""
    try:
        return open_upload(data, settings.max_image_pixels, WORK_SIZE)
    except ImageError as err:
        raise _problem(where, err) from None


async def prepare_all(opened: Sequence[tuple[Upload, str]], serving: Serving) -> list[Prepared]:
    """Several uploads whose headers are all checked (no pixel decoded yet), each with how errors name it: the
    request's pixel budget first, so a batch of small files claiming huge images is refused before any work, then
    each decoded and normalised."""
    check_request_pixels([o for o, _ in opened], serving.settings)
    return [await decode_opened(o, serving, where) for o, where in opened]


async def decode_opened(opened: Upload, serving: Serving, where: str) -> Prepared:
    """Decode and normalise a checked upload: a thumbnail on the event loop, anything bigger on the decode pool."""
    try:
        if opened.decode_pixels <= INLINE_DECODE_PIXELS:
            return prepare_opened(opened)
        return await serving.decoder.run(prepare_opened, opened, pixels=opened.decode_pixels)
    except ImageError as err:  # a file whose pixels turn out truncated or corrupt
        raise _problem(where, err) from None


def _problem(where: str, err: ImageError) -> HTTPException:
    """An `ImageError` as the client's 4xx, naming the file: 413 for an image over the pixel limit, 422 otherwise."""
    return HTTPException(413 if isinstance(err, ImageTooLarge) else 422, f"{where}: {err}")


def check_request_pixels(opened: Sequence[Upload], settings: Settings) -> None:
    """413 when a batch's images together decode to more than `max_request_pixels`: refused from their headers."""
    total = sum(o.decode_pixels for o in opened)
    if total > settings.max_request_pixels:
        raise HTTPException(
            413,
            f"the images of this request decode to {total} pixels together, over the limit of"
            f" {settings.max_request_pixels}; send fewer or smaller images per request",
        )


def check_batch_size(n: int, settings: Settings) -> None:
    if n > settings.max_batch:
        raise HTTPException(413, f"too many images in one request: {n}, the limit is {settings.max_batch}")


def _json(body: BaseModel) -> Response:
    return Response(body.model_dump_json(), media_type="application/json")


def record_predictions(serving: Serving, pixels: np.ndarray, predictions: list[Prediction]) -> None:
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
