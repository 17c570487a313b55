"""The Open Inference Protocol (KServe v2) over REST, beside the service's own routes: what KServe, Triton's
clients (tritonclient), MLServer, Seldon and gateways that route by model name speak.

    GET  /v2                                   server metadata
    GET  /v2/health/live | /v2/health/ready    liveness, readiness
    GET  /v2/models/fashionflow[/versions/V]   model metadata: its inputs and outputs, the run as its version
    GET  /v2/models/fashionflow[/versions/V]/ready
    POST /v2/models/fashionflow[/versions/V]/infer

The model's version is the id of the run it comes from; a versioned path naming another version is a 404. Inputs
(one per request): `pixels`, UINT8 [B, 28, 28], taken as Fashion-MNIST scans (as `/predict/pixels`); `images`, BYTES
[B], encoded image files, through the same format allow-list, pixel budgets, decode pool and normalisation as
`/predict/batch`. Outputs: `class_index` INT64 [B], `class_name` BYTES [B], `probabilities` FP32 [B, 10] (calibrated),
`confident` BOOL [B] (the answer can be relied on, at least for its family), `class_confident` BOOL [B] (for its
class too), `unsure_reason` BYTES [B] ("" when confident), `family` BYTES [B] (the garment family the answer can be
relied on for, "" when none; see `/predict`), and with `parameters.return_input` `model_input` UINT8 [B, 28, 28].
Errors are `{"error": "..."}` with the same 4xx/503 meanings as the other routes. JSON bodies and the binary tensor
extension both work (`serving/open_inference.py`).
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from fmnist import __version__

from ..deps import Serving, current_serving
from ..inference import Predictor
from ..open_inference import (
    HEADER_LENGTH,
    InferenceRequest,
    OutputTensor,
    ProtocolError,
    decode_request,
    encode_response,
)
from .predict import open_bytes, prepare_all, record_predictions

MODEL_NAME = "fashionflow"
# Request bodies up to this size are parsed on the event loop: one image's pixels as JSON are about 3 kB, too little to
# pay for a hop to a thread; a batch's megabytes go to the thread pool. (A bound chosen by size, not measured.)
INLINE_PARSE_BYTES = 64 * 1024
router = APIRouter(prefix="/v2", tags=["open inference protocol"])


def _error(status: int, description: str) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


# The path's model name: the schema says which one exists; any other is the protocol's 404, not a validation error.
ModelName = Annotated[
    str, Path(description="The model's name: `fashionflow`.", json_schema_extra={"enum": [MODEL_NAME]})
]
ModelVersion = Annotated[str, Path(description="The id of the run whose model is served (`versions` in the metadata).")]

NOT_READY: dict[int | str, dict[str, Any]] = {
    503: _error(503, "No model loaded yet (or shutting down); `error` says why.")
}
NO_SUCH_MODEL: dict[int | str, dict[str, Any]] = {
    404: _error(404, "No such model or version: the model is `fashionflow`, its version the run's id.")
}


async def protocol_error(request: Request, exc: Exception) -> JSONResponse:
    """A `ProtocolError` in the protocol's form: `{"error": message}`."""
    assert isinstance(exc, ProtocolError)
    return JSONResponse({"error": exc.message}, exc.status)


def _serving(request: Request) -> Serving:
    """`deps.current_serving`, its 503 in the protocol's error form."""
    try:
        return current_serving(request)
    except HTTPException as err:
        raise ProtocolError(err.status_code, str(err.detail)) from None


def _model_version(predictor: Predictor) -> str:
    return predictor.run.rsplit("/", 1)[-1]


def _check_model(predictor: Predictor, model_name: str, model_version: str | None) -> str:
    """The served version; ProtocolError 404 for another model name or version."""
    served = _model_version(predictor)
    if model_name != MODEL_NAME:
        raise ProtocolError(404, f"no model {model_name!r}: this server serves {MODEL_NAME!r}")
    if model_version is not None and model_version != served:
        raise ProtocolError(404, f"model {MODEL_NAME!r} has no version {model_version!r}: it serves version {served}")
    return served


@router.get("")
async def server_metadata() -> dict[str, Any]:
    """The server's name, version and protocol extensions."""
    return {"name": MODEL_NAME, "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get("/health/live")
async def server_live() -> dict[str, bool]:
    """The process is alive."""
    return {"live": True}


@router.get("/health/ready", responses=NOT_READY)
async def server_ready(request: Request) -> dict[str, bool]:
    """200 once the model is loaded and warm; 503 with the reason otherwise."""
    _serving(request)
    return {"ready": True}


def _metadata(predictor: Predictor, served: str) -> dict[str, Any]:
    classes = len(predictor.class_names)
    return {
        "name": MODEL_NAME,
        "versions": [served],
        "platform": "pytorch",
        "inputs": [
            {"name": "pixels", "datatype": "UINT8", "shape": [-1, 28, 28]},
            {"name": "images", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [
            {"name": "class_index", "datatype": "INT64", "shape": [-1]},
            {"name": "class_name", "datatype": "BYTES", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
            {"name": "confident", "datatype": "BOOL", "shape": [-1]},
            {"name": "class_confident", "datatype": "BOOL", "shape": [-1]},
            {"name": "unsure_reason", "datatype": "BYTES", "shape": [-1]},
            {"name": "family", "datatype": "BYTES", "shape": [-1]},
            {"name": "model_input", "datatype": "UINT8", "shape": [-1, 28, 28]},
        ],
        "parameters": {"run": predictor.run, "class_names": list(predictor.class_names)},
    }


@router.get("/models/{model_name}", responses={**NOT_READY, **NO_SUCH_MODEL})
async def model_metadata(request: Request, model_name: ModelName) -> dict[str, Any]:
    """The model's inputs and outputs (name, datatype, shape) and its version: the id of its run."""
    predictor = _serving(request).predictor
    return _metadata(predictor, _check_model(predictor, model_name, None))


@router.get("/models/{model_name}/versions/{model_version}", responses={**NOT_READY, **NO_SUCH_MODEL})
async def model_version_metadata(
    request: Request, model_name: ModelName, model_version: ModelVersion
) -> dict[str, Any]:
    """The model's metadata, for the version served; 404 for any other."""
    predictor = _serving(request).predictor
    return _metadata(predictor, _check_model(predictor, model_name, model_version))


@router.get("/models/{model_name}/ready", responses={**NOT_READY, **NO_SUCH_MODEL})
async def model_ready(request: Request, model_name: ModelName) -> dict[str, Any]:
    """200 while the model is served."""
    predictor = _serving(request).predictor
    _check_model(predictor, model_name, None)
    return {"name": MODEL_NAME, "ready": True}


@router.get("/models/{model_name}/versions/{model_version}/ready", responses={**NOT_READY, **NO_SUCH_MODEL})
async def model_version_ready(request: Request, model_name: ModelName, model_version: ModelVersion) -> dict[str, Any]:
    """200 while this version is the one served; 404 for any other."""
    predictor = _serving(request).predictor
    _check_model(predictor, model_name, model_version)
    return {"name": MODEL_NAME, "ready": True}


# The request body as the OpenAPI document states it: the route reads the raw body itself (JSON, or a JSON header
# and binary tensors), so the schema is added here and its parts to the document's components (`schema_components`).
_REQUEST_SCHEMA = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}},
    }
}


def schema_components() -> dict[str, Any]:
    """The schemas the infer routes' request body refers to, for the OpenAPI document's components."""
    request = dict(_REQUEST_SCHEMA)
    parts = request.pop("$defs", {})
    return {**parts, "InferenceRequest": request}


INFER_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"description": "The outputs; with the binary tensor extension, a JSON header then the binary outputs."},
    400: _error(400, "Not an inference request this model takes; `error` names the problem."),
    **NO_SUCH_MODEL,
    413: _error(413, "Body, image or batch over the configured limit."),
    422: _error(422, "An image that is not one the service reads; `error` names the element and the problem."),
    **NOT_READY,
}


@router.post("/models/{model_name}/infer", responses=INFER_ANSWERS, openapi_extra=INFER_BODY)
async def infer(request: Request, model_name: ModelName) -> Response:
    """Classify a `pixels` or an `images` tensor; the answers are the same as `/predict/pixels` and
    `/predict/batch` give for the same images."""
    return await _infer(request, model_name, None)


@router.post("/models/{model_name}/versions/{model_version}/infer", responses=INFER_ANSWERS, openapi_extra=INFER_BODY)
async def infer_version(request: Request, model_name: ModelName, model_version: ModelVersion) -> Response:
    """`infer`, for the version served; 404 for any other."""
    return await _infer(request, model_name, model_version)


async def _infer(request: Request, model_name: str, model_version: str | None) -> Response:
    serving = _serving(request)
    model = serving.predictor
    served = _check_model(model, model_name, model_version)
    body, header_length, limit = await request.body(), request.headers.get(HEADER_LENGTH), serving.settings.max_batch
    if len(body) <= INLINE_PARSE_BYTES:
        decoded = decode_request(body, header_length, limit)
    else:  # up to the body limit of JSON numbers: parsed off the event loop, which keeps serving meanwhile
        decoded = await run_in_threadpool(decode_request, body, header_length, limit)
    try:
        if decoded.pixels is not None:
            pixels = decoded.pixels  # (B, 28, 28) uint8, taken as scans
            inverted: list[bool | None] = [None] * len(pixels)
            empty, photo = [False] * len(pixels), [False] * len(pixels)
        else:
            pixels, inverted, empty, photo = await _prepare_files(decoded.files or [], serving)
    except HTTPException as err:  # the upload checks' 413/422, naming the element
        raise ProtocolError(err.status_code, str(err.detail)) from None
    scored = await run_in_threadpool(model.score, pixels, empty, photo)
    predictions = [model.describe(s, 1, inv) for s, inv in zip(scored, inverted, strict=True)]
    record_predictions(serving, pixels, predictions)
    outputs = [
        OutputTensor("class_index", "INT64", np.array([p.class_index for p in predictions], dtype=np.int64)),
        OutputTensor("class_name", "BYTES", np.array([p.class_name for p in predictions], dtype=object)),
        OutputTensor("probabilities", "FP32", np.stack([s.probabilities for s in scored]).astype(np.float32)),
        OutputTensor("confident", "BOOL", np.array([p.confident for p in predictions], dtype=np.bool_)),
        OutputTensor("class_confident", "BOOL", np.array([p.class_confident for p in predictions], dtype=np.bool_)),
        OutputTensor("unsure_reason", "BYTES", np.array([p.unsure_reason or "" for p in predictions], dtype=object)),
        OutputTensor("family", "BYTES", np.array([p.family or "" for p in predictions], dtype=object)),
    ]
    if (decoded.request.parameters or {}).get("return_input") is True:
        outputs.append(OutputTensor("model_input", "UINT8", pixels))
    body, headers = encode_response(MODEL_NAME, served, decoded.request, outputs)
    kind = "application/octet-stream" if headers else "application/json"
    return Response(body, media_type=kind, headers=headers)


async def _prepare_files(
    files: list[bytes], serving: Serving
) -> tuple[np.ndarray, list[bool | None], list[bool], list[bool]]:
    """The `images` elements as model inputs: every header checked first, then the batch's pixel budget, then each
    decoded and normalised (small ones inline, the rest on the decode pool), as `/predict/batch` does."""
    where = [f"images[{i}]" for i in range(len(files))]
    opened = [(open_bytes(data, serving.settings, w), w) for data, w in zip(files, where, strict=True)]
    prepared = await prepare_all(opened, serving)
    pixels = np.stack([p.pixels for p in prepared])  # (B, 28, 28) uint8
    return pixels, [p.inverted for p in prepared], [p.empty for p in prepared], [p.photo for p in prepared]
