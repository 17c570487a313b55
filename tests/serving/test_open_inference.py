"""The Open Inference Protocol routes, spoken to by a real client from PyPI (tritonclient's HTTP client, which sends
and asks for binary tensors by default) and in plain JSON, against the real service under uvicorn: the same answers
as the service's own routes for the same images, byte for byte."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from fmnist.core.data import CLASS_NAMES
from fmnist.evaluation.photos import PHOTO_CONDITIONS, photo_rng, render_photo
from tests.support.images import encode, real_test_images

OUTPUTS = ("class_index", "class_name", "probabilities", "confident", "class_confident", "unsure_reason", "family")


@pytest.fixture(scope="module")
def client(service_url):
    client = triton.InferenceServerClient(service_url.removeprefix("http://"))
    yield client
    client.close()


def files() -> list[bytes]:
    """Four real test images as PNGs, one as a JPEG, and two rendered product photos (the normaliser's photo path)."""
    images, _ = real_test_images(8)
    condition = next(c for c in PHOTO_CONDITIONS if c.name == "grey_backdrop")
    severity = condition.severities[condition.realistic]
    photos = [render_photo(images[i], condition, severity, photo_rng(0, i)) for i in (5, 6)]
    return [encode(images[i]) for i in range(4)] + [encode(images[4], "JPEG", quality=90), *photos]


def expected(answers: list[dict]) -> dict[str, np.ndarray]:
    """The service's own answers in the protocol's outputs' form."""
    return {
        "class_index": np.array([a["class_index"] for a in answers], dtype=np.int64),
        "class_name": np.array([a["class_name"] for a in answers], dtype=object),
        "probabilities": np.array([a["probabilities"] for a in answers], dtype=np.float32),
        "confident": np.array([a["confident"] for a in answers], dtype=bool),
        "class_confident": np.array([a["class_confident"] for a in answers], dtype=bool),
        "unsure_reason": np.array([a["unsure_reason"] or "" for a in answers], dtype=object),
        "family": np.array([a["family"] or "" for a in answers], dtype=object),
    }


def as_text(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else v for v in values.reshape(-1)], dtype=object)


def test_tritonclient_sees_a_live_ready_server_and_the_model_with_its_run_as_version(client, smoke_run):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("fashionflow") and client.is_model_ready("fashionflow", smoke_run.id)
    assert not client.is_model_ready("fashionflow", "1") and not client.is_model_ready("resnet")
    metadata = client.get_model_metadata("fashionflow")
    assert metadata["versions"] == [smoke_run.id]
    assert {(i["name"], i["datatype"], tuple(i["shape"])) for i in metadata["inputs"]} == {
        ("pixels", "UINT8", (-1, 28, 28)),
        ("images", "BYTES", (-1,)),
    }
    assert ("probabilities", "FP32", [-1, len(CLASS_NAMES)]) in [
        (o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]
    ]
    assert client.get_model_metadata("fashionflow", smoke_run.id) == metadata
    with pytest.raises(InferenceServerException, match="has no version '1'"):
        client.get_model_metadata("fashionflow", "1")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


def test_pixels_through_tritonclient_get_the_answers_of_predict_pixels(client, service_url):
    images, _ = real_test_images(16)
    tensor = triton.InferInput("pixels", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)  # binary, tritonclient's default
    result = client.infer("fashionflow", [tensor], request_id="scan-batch-1")
    own = httpx.post(service_url + "/predict/pixels", json={"images": images.tolist()}).json()["predictions"]
    want = expected(own)
    assert result.get_response()["id"] == "scan-batch-1"
    for name in OUTPUTS:
        got = result.as_numpy(name)
        if want[name].dtype == object:
            assert as_text(got).tolist() == want[name].tolist(), name
        else:
            assert got.dtype == want[name].dtype and np.array_equal(got, want[name]), name  # bit for bit


def test_encoded_images_through_tritonclient_get_the_answers_of_predict_batch(client, service_url, smoke_run):
    uploads = files()
    tensor = triton.InferInput("images", [len(uploads)], "BYTES")
    tensor.set_data_from_numpy(np.array(uploads, dtype=object))
    asked = [triton.InferRequestedOutput(n, binary_data=n == "probabilities") for n in OUTPUTS]  # mixed forms
    result = client.infer("fashionflow", [tensor], outputs=asked, model_version=smoke_run.id)
    multipart = [("files", (f"{i}.img", data, "application/octet-stream")) for i, data in enumerate(uploads)]
    own = httpx.post(service_url + "/predict/batch", files=multipart).json()["predictions"]
    want = expected(own)
    assert np.array_equal(result.as_numpy("probabilities"), want["probabilities"])
    assert result.as_numpy("class_index").tolist() == want["class_index"].tolist()
    assert as_text(result.as_numpy("class_name")).tolist() == want["class_name"].tolist()
    assert result.as_numpy("confident").tolist() == want["confident"].tolist()
    assert result.as_numpy("class_confident").tolist() == want["class_confident"].tolist()
    assert as_text(result.as_numpy("unsure_reason")).tolist() == want["unsure_reason"].tolist()
    assert as_text(result.as_numpy("family")).tolist() == want["family"].tolist()
    assert sum(a["inverted"] is True for a in own) == 2  # the two product photos went the normaliser's photo way


def test_plain_json_with_base64_images_and_return_input(service_url):
    uploads = files()[:3]
    body = {
        "id": "json-1",
        "parameters": {"return_input": True},
        "inputs": [
            {
                "name": "images",
                "shape": [3],
                "datatype": "BYTES",
                "data": [base64.b64encode(u).decode() for u in uploads],
            }
        ],
    }
    answer = httpx.post(service_url + "/v2/models/fashionflow/infer", json=body)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    assert answer.json()["id"] == "json-1" and set(outputs) == {*OUTPUTS, "model_input"}
    images, _ = real_test_images(3)
    # The 28x28 scans reach the network unchanged.
    assert np.array_equal(np.array(outputs["model_input"]["data"], dtype=np.uint8).reshape(3, 28, 28), images)
    assert outputs["probabilities"]["shape"] == [3, len(CLASS_NAMES)]
    pixels = {"inputs": [{"name": "pixels", "shape": [3, 28, 28], "datatype": "UINT8", "data": images.tolist()}]}
    by_pixels = httpx.post(service_url + "/v2/models/fashionflow/infer", json=pixels).json()
    again = {o["name"]: o["data"] for o in by_pixels["outputs"]}
    assert again["probabilities"] == outputs["probabilities"]["data"]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/models/resnet/infer", {}, 404, "no model 'resnet'"),
        ("/v2/models/fashionflow/versions/1/infer", {}, 404, "has no version '1'"),
        ("/v2/models/fashionflow/infer", {"inputs": []}, 400, "inputs"),
        (
            "/v2/models/fashionflow/infer",
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]},
            400,
            "unknown input 'x'",
        ),
        (
            "/v2/models/fashionflow/infer",
            {"inputs": [{"name": "pixels", "shape": [1, 28, 28], "datatype": "UINT8", "data": [300] * 784}]},
            400,
            "0-255",
        ),
        (
            "/v2/models/fashionflow/infer",
            {"inputs": [{"name": "pixels", "shape": [2, 28, 28], "datatype": "UINT8", "data": [0] * 784}]},
            400,
            "needs 1568 values, got 784",
        ),
        (
            "/v2/models/fashionflow/infer",
            {"inputs": [{"name": "images", "shape": [65], "datatype": "BYTES", "data": ["AA=="] * 65}]},
            413,
            "limit is 64",
        ),
        (
            "/v2/models/fashionflow/infer",
            {
                "inputs": [
                    {
                        "name": "images",
                        "shape": [2],
                        "datatype": "BYTES",
                        "data": [base64.b64encode(encode(real_test_images(1)[0][0])).decode(), "bm90IGFuIGltYWdl"],
                    }
                ]
            },
            422,
            "images[1]",
        ),
        (
            "/v2/models/fashionflow/infer",
            {
                "inputs": [{"name": "pixels", "shape": [1, 28, 28], "datatype": "UINT8", "data": [0] * 784}],
                "outputs": [{"name": "logits"}],
            },
            400,
            "unknown output(s) 'logits'",
        ),
    ],
)
def test_bad_requests_get_the_protocols_error_form_naming_the_problem(service_url, path, body, status, message):
    answer = httpx.post(service_url + path, json=body)
    assert answer.status_code == status and message in answer.json()["error"], answer.text


def test_a_binary_body_whose_sizes_disagree_is_refused(service_url):
    header = (
        b'{"inputs":[{"name":"pixels","shape":[1,28,28],"datatype":"UINT8","parameters":{"binary_data_size":784}}]}'
    )
    answer = httpx.post(
        service_url + "/v2/models/fashionflow/infer",
        content=header + bytes(100),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert answer.status_code == 400 and "binary_data_size 784; 100 bytes follow" in answer.json()["error"]
