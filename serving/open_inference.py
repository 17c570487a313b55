"""The Open Inference Protocol's REST form (KServe's "v2" protocol, as Triton, MLServer and Seldon speak it): the
request and response bodies of `POST /v2/models/{name}/infer`, in JSON and with the binary tensor extension.

Pure translation between bytes and arrays; the routes (`serving/routes/inference_protocol.py`) do the scoring.

- JSON: `{"id", "parameters", "inputs": [{"name", "shape", "datatype", "data"}], "outputs": [{"name"}]}`; `data`
  flat or nested, in row-major order. `BYTES` elements in JSON are strings: encoded images are sent as base64.
- Binary tensor extension: the JSON header comes first, its length in the `Inference-Header-Content-Length` header,
  then each input's raw bytes in order, each input's `parameters.binary_data_size` saying how many are its own.
  `BYTES` tensors are elements each prefixed with its 4-byte little-endian length; numbers are little-endian.
  Outputs come back binary where the request asks (`parameters.binary_data_output`, or an output's
  `parameters.binary_data`): tritonclient asks by default.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

HEADER_LENGTH = "Inference-Header-Content-Length"
# The protocol's datatypes this model uses, as numpy types (BYTES: Python bytes, one per element).
NUMPY_TYPES: dict[str, Any] = {"UINT8": np.uint8, "INT64": np.int64, "FP32": np.float32, "BOOL": np.bool_}


class ProtocolError(Exception):
    """A request the protocol's error form answers: `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class RequestInput(BaseModel):
    """One named input tensor of an inference request."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="`pixels` (UINT8 [-1, 28, 28]) or `images` (BYTES [-1], encoded image files).")
    shape: list[int] = Field(description="The tensor's shape; -1 is not allowed in a request.")
    datatype: str = Field(description="The element type: UINT8 for `pixels`, BYTES for `images`.")
    parameters: dict[str, Any] | None = Field(
        None, description="`binary_data_size`: the input's byte count in the binary part (binary tensor extension)."
    )
    data: list[Any] | None = Field(None, description="The elements, flat or nested, in row-major order.")


class RequestOutput(BaseModel):
    """One output the client asks for."""

    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: dict[str, Any] | None = Field(None, description="`binary_data`: return this output binary.")


class InferenceRequest(BaseModel):
    """The body (or, with the binary extension, the JSON header) of `POST .../infer`."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, description="Echoed in the answer.")
    parameters: dict[str, Any] | None = Field(
        None,
        description="`return_input`: also return `model_input`, the 28x28 images the network received;"
        " `binary_data_output`: every output binary.",
    )
    inputs: list[RequestInput] = Field(min_length=1, max_length=1, description="One input: `pixels` or `images`.")
    outputs: list[RequestOutput] | None = Field(None, description="The outputs wanted (default: all).")


@dataclass(frozen=True)
class Decoded:
    """The request, and its one input as an array: (B, 28, 28) uint8 for `pixels`, B encoded files for `images`."""

    request: InferenceRequest
    name: str
    pixels: np.ndarray | None  # (B, 28, 28) uint8
    files: list[bytes] | None


def decode_request(body: bytes, header_length: str | None, max_batch: int) -> Decoded:
    """Parse `body` (with `header_length`, the value of Inference-Header-Content-Length, when binary) into the
    request and its input; ProtocolError 400 naming what is wrong, 413 over `max_batch` images."""
    size = len(body)
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise ProtocolError(400, f"{HEADER_LENGTH} must be a byte count, got {header_length!r}") from None
        if not 0 < size <= len(body):
            raise ProtocolError(400, f"{HEADER_LENGTH} is {size}, the body has {len(body)} bytes")
    try:
        request = InferenceRequest.model_validate_json(body[:size])
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in err.errors()[:5])
        raise ProtocolError(400, f"not an inference request: {problems}") from None
    binary = memoryview(body)[size:]
    tensor = request.inputs[0]
    raw = _binary_part(tensor, binary)
    if tensor.name == "pixels":
        pixels = _pixels(tensor, raw, max_batch)
        return Decoded(request, tensor.name, pixels, None)
    if tensor.name == "images":
        files = _files(tensor, raw, max_batch)
        return Decoded(request, tensor.name, None, files)
    raise ProtocolError(400, f"unknown input {tensor.name!r}: the model takes `pixels` (UINT8) or `images` (BYTES)")


def _binary_part(tensor: RequestInput, binary: memoryview) -> memoryview | None:
    """The input's bytes from the binary part, when it declares `binary_data_size`; None when its data is JSON."""
    declared = (tensor.parameters or {}).get("binary_data_size")
    if declared is None:
        if len(binary):
            raise ProtocolError(400, f"{len(binary)} bytes after the JSON header, but no input has binary_data_size")
        if tensor.data is None:
            raise ProtocolError(400, f"input {tensor.name!r} has neither data nor parameters.binary_data_size")
        return None
    if tensor.data is not None:
        raise ProtocolError(400, f"input {tensor.name!r} has both data and parameters.binary_data_size")
    if not isinstance(declared, int) or isinstance(declared, bool) or declared != len(binary):
        raise ProtocolError(
            400, f"input {tensor.name!r} declares binary_data_size {declared!r}; {len(binary)} bytes follow the header"
        )
    return binary


def _check_batch(count: int, max_batch: int) -> None:
    if count > max_batch:
        raise ProtocolError(413, f"too many images in one request: {count}, the limit is {max_batch}")


def _pixels(tensor: RequestInput, raw: memoryview | None, max_batch: int) -> np.ndarray:
    """The `pixels` input as (B, 28, 28) uint8."""
    if tensor.datatype != "UINT8" or len(tensor.shape) != 3 or tensor.shape[1:] != [28, 28] or tensor.shape[0] < 1:
        raise ProtocolError(
            400, f"input 'pixels' must be UINT8 of shape [B, 28, 28], B >= 1; got {tensor.datatype} {tensor.shape}"
        )
    _check_batch(tensor.shape[0], max_batch)
    count = prod(tensor.shape)
    if raw is not None:
        if len(raw) != count:
            raise ProtocolError(400, f"input 'pixels' of shape {tensor.shape} needs {count} bytes, got {len(raw)}")
        return np.frombuffer(raw, dtype=np.uint8).reshape(tensor.shape).copy()
    try:
        values = np.asarray(tensor.data, dtype=np.float64).reshape(-1)  # nested lists of numbers, row-major
    except (ValueError, TypeError):
        raise ProtocolError(400, "input 'pixels': data must be numbers (nested lists of equal length)") from None
    if values.size != count:
        raise ProtocolError(400, f"input 'pixels' of shape {tensor.shape} needs {count} values, got {values.size}")
    whole = np.isfinite(values).all() and (values == np.round(values)).all()
    if not whole or values.min() < 0 or values.max() > 255:
        raise ProtocolError(400, "input 'pixels': every value must be an integer in 0-255")
    return values.astype(np.uint8).reshape(tensor.shape)


def _files(tensor: RequestInput, raw: memoryview | None, max_batch: int) -> list[bytes]:
    """The `images` input as encoded files."""
    if tensor.datatype != "BYTES" or len(tensor.shape) != 1 or tensor.shape[0] < 1:
        raise ProtocolError(
            400, f"input 'images' must be BYTES of shape [B], B >= 1; got {tensor.datatype} {tensor.shape}"
        )
    _check_batch(tensor.shape[0], max_batch)
    files = _length_prefixed(raw) if raw is not None else _base64_strings(tensor.data or [])
    if len(files) != tensor.shape[0]:
        raise ProtocolError(400, f"input 'images' of shape {tensor.shape} holds {len(files)} elements")
    return files


def _length_prefixed(raw: memoryview) -> list[bytes]:
    """BYTES elements of the binary extension: each a 4-byte little-endian length, then that many bytes."""
    files: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError(400, "input 'images': binary data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + length > len(raw):
            raise ProtocolError(400, f"input 'images': element {len(files)} claims {length} bytes past the data's end")
        files.append(bytes(raw[offset + 4 : offset + 4 + length]))
        offset += 4 + length
    return files


def _base64_strings(data: list[Any]) -> list[bytes]:
    """BYTES elements in JSON: base64 strings of the files."""
    files: list[bytes] = []
    for i, item in enumerate(data):
        if not isinstance(item, str):
            raise ProtocolError(400, f"input 'images': element {i} must be a base64 string of an image file")
        try:
            files.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise ProtocolError(400, f"input 'images': element {i} is not valid base64") from None
    return files


@dataclass(frozen=True)
class OutputTensor:
    """One output: its protocol datatype and values, (B, ...) numbers or B strings."""

    name: str
    datatype: str
    array: np.ndarray  # BYTES: an object array of str


def encode_response(
    model_name: str, model_version: str, request: InferenceRequest, outputs: list[OutputTensor]
) -> tuple[bytes, dict[str, str]]:
    """The answer's body and extra headers: JSON, or the JSON header then binary outputs where the request asks."""
    wanted = {o.name: o for o in request.outputs} if request.outputs else None
    if wanted is not None:
        unknown = sorted(set(wanted) - {o.name for o in outputs})
        if unknown:
            names = ", ".join(o.name for o in outputs)
            raise ProtocolError(400, f"unknown output(s) {', '.join(map(repr, unknown))}: the model has {names}")
    binary_default = bool((request.parameters or {}).get("binary_data_output", False))
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        body["id"] = request.id
    tensors, chunks = [], []
    for output in outputs:
        if wanted is not None and output.name not in wanted:
            continue
        asked = (wanted[output.name].parameters or {}) if wanted is not None else {}
        tensor: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": list(output.array.shape)}
        if asked.get("binary_data", binary_default):
            chunk = _binary(output)
            tensor["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            tensor["data"] = output.array.reshape(-1).tolist()
        tensors.append(tensor)
    body["outputs"] = tensors
    header = json.dumps(body, separators=(",", ":")).encode()
    if not chunks:
        return header, {}
    return header + b"".join(chunks), {HEADER_LENGTH: str(len(header))}


def _binary(output: OutputTensor) -> bytes:
    if output.datatype == "BYTES":
        encoded = [str(item).encode() for item in output.array.reshape(-1)]
        return b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    return np.ascontiguousarray(output.array, dtype=np.dtype(NUMPY_TYPES[output.datatype]).newbyteorder("<")).tobytes()
