"""The prediction service end to end: the model of a real smoke run, loaded through Metaflow, behind every endpoint.

`smoke_run` (tests/conftest.py) trains the smoke profile once with the real flow, through the Runner API, in the
session's temporary datastore; the service finds it through the same METAFLOW_DATASTORE_SYSROOT_LOCAL.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from fmnist.core.data import CLASS_NAMES, FAMILY_OF
from fmnist.core.model import normalize
from fmnist.images.normalise import normalize_photo, prepare_upload
from fmnist.release.model_record import ModelRecord
from serving.app import create_app, pixel_body_limit
from serving.model_loading import ModelLoadError
from serving.settings import Settings
from tests.support.images import encode, png_bomb, real_test_images

ROOT = Path(__file__).resolve().parents[2]
LIMITS = {"max_body_bytes": 300_000, "max_batch": 8, "max_image_pixels": 4_000_000}
TAG = "serving-test"


@pytest.fixture(scope="module")
def settings(smoke_run) -> Settings:
    return Settings(run=smoke_run.pathspec, device="cpu", **LIMITS)


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def record(smoke_run) -> ModelRecord:
    return ModelRecord.from_bytes(smoke_run.data.calibrated_model)


def reference_probabilities(record: ModelRecord, pixels: np.ndarray) -> np.ndarray:
    """What the model says, computed here independently of the service: softmax(logits / temperature)."""
    with torch.no_grad():
        logits = record.build("cpu")(normalize(torch.from_numpy(pixels), record.mean, record.std))
    return torch.softmax(logits / record.temperature, dim=1).numpy()


def upload(client, data: bytes, name: str = "image.png", **params):
    return client.post("/predict", files={"file": (name, data, "image/png")}, params=params)


def product_photo(index: int = 1) -> bytes:
    """A real test garment rendered as a 224x224 JPEG product photo (dark garment on grey paper), as the report's
    photo suite renders them."""
    from fmnist.evaluation.photos import PHOTO_CONDITIONS, photo_rng, render_photo

    images, _ = real_test_images()
    condition = next(c for c in PHOTO_CONDITIONS if c.name == "grey_backdrop")
    return render_photo(images[index], condition, condition.severities[condition.realistic], photo_rng(0, index))


# --- status and model endpoints -------------------------------------------------------------------------------------


def test_health_and_ready(client, smoke_run):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"ready": True, "run": smoke_run.pathspec, "pid": os.getpid()}


def test_model_describes_the_served_run(client, smoke_run, record):
    info = client.get("/model").json()
    data = smoke_run.data
    assert info["run"] == smoke_run.pathspec
    assert info["hparams"] == data.best_hparams
    assert info["data_fingerprint"] == data.data_fingerprint
    assert info["test_metrics"]["accuracy"] == pytest.approx(data.test_metrics["accuracy"])
    assert info["class_names"] == list(CLASS_NAMES)
    assert info["temperature"] == pytest.approx(record.temperature)
    assert info["normalization"] == {"mean": record.mean, "std": record.std}
    assert info["device"] == "cpu"


def test_not_ready_without_a_loaded_model_says_why(settings):
    client = TestClient(create_app(settings))  # not entered: the lifespan that loads the model has not run
    response = client.get("/ready")
    assert response.status_code == 503 and "lifespan" in response.json()["detail"]
    images, _ = real_test_images()
    assert upload(client, encode(images[0])).status_code == 503
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ({"run": "FashionFlow/123456"}, "does not exist"),
        ({"tag": "no-run-has-this-tag"}, "no successful FashionFlow run is tagged 'no-run-has-this-tag'"),
        ({"flow": "NoSuchFlow"}, "NoSuchFlow"),
    ],
)
def test_service_does_not_start_when_the_model_cannot_be_loaded(selector, message):
    app = create_app(Settings(device="cpu", **selector))
    with pytest.raises(ModelLoadError, match=message), TestClient(app):
        pass


def test_default_is_the_latest_successful_run_and_a_tag_selects_a_run(smoke_run):
    from registry.runs import latest_successful

    latest = latest_successful("FashionFlow").pathspec
    with TestClient(create_app(Settings(device="cpu"))) as client:
        assert client.get("/model").json()["run"] == latest
    smoke_run.add_tag(TAG)
    with TestClient(create_app(Settings(tag=TAG, device="cpu"))) as client:
        assert client.get("/model").json()["run"] == smoke_run.pathspec


def test_fmnist_serve_refuses_to_start_without_a_model_and_says_why():
    result = subprocess.run(
        [sys.executable, "-m", "serving.cli", "--run", "FashionFlow/123456", "--port", "8999"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "FashionFlow/123456" in result.stderr and "does not exist" in result.stderr


# --- predictions ----------------------------------------------------------------------------------------------------


def test_predict_matches_the_model_on_real_test_images(client, record):
    images, labels = real_test_images()
    expected = reference_probabilities(record, images[:40])
    correct = 0
    for pixels, label, probs in zip(images[:40], labels[:40], expected, strict=True):
        body = upload(client, encode(pixels)).json()
        assert body["probabilities"] == pytest.approx(probs.tolist(), abs=1e-5)
        assert sum(body["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        assert body["class_index"] == int(probs.argmax())
        assert body["class_name"] == CLASS_NAMES[body["class_index"]]
        assert [t["class_index"] for t in body["top_k"]] == np.argsort(-probs)[:3].tolist()
        assert body["inverted"] is False and body["filename"] == "image.png"
        correct += body["class_index"] == label
    assert correct / 40 > 0.5  # the smoke model is weak but far above chance


def test_every_prediction_says_whether_it_is_confident(client, record):
    images, _ = real_test_images()
    policy = record.abstention
    assert policy is not None  # fitted by the flow's evaluate step, on validation
    bodies = [upload(client, encode(p)).json() for p in images[:40]]
    for body in bodies:
        assert isinstance(body["confident"], bool)
        assert (body["unsure_reason"] is None) == body["confident"]
        # A scan is confident of its class or of nothing: family-only answers are for photos.
        assert body["class_confident"] == body["confident"]
        assert body["family"] == (FAMILY_OF[body["class_index"]] if body["confident"] else None)
        if body["confident"]:
            assert body["probability"] >= policy.confidence_threshold
    info = client.get("/model").json()["abstention"]
    assert info["confidence_threshold"] == pytest.approx(policy.confidence_threshold)
    assert info["target_risk"] == policy.target_risk and info["ood_threshold"] == pytest.approx(policy.ood_threshold)


@pytest.mark.parametrize(
    "picture",
    [
        np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8),  # uniform noise
        np.full((50, 50), 255, dtype=np.uint8),  # a blank white frame
        (np.indices((96, 96)).sum(axis=0) // 12 % 2 * 255).astype(np.uint8),  # a checkerboard
    ],
    ids=["noise", "blank", "checkerboard"],
)
def test_non_garments_are_marked_unsure(client, picture):
    body = upload(client, encode(picture)).json()
    assert body["confident"] is False
    assert body["unsure_reason"] == "unlike_training_images"


def test_the_service_and_the_report_see_the_same_model_input(client, record):
    """The report's photo suite classifies through `Classifier.classify_uploads`; for the same bytes the service
    must answer bit for bit the same (one image at a time, as the service runs it, with the service's runtime)."""
    from fmnist.evaluation.photos import PHOTO_CONDITIONS, photo_rng, render_photo
    from fmnist.release.classifier import Classifier

    images, _ = real_test_images()
    classifier = Classifier(record, torch.device("cpu"), runtime=client.get("/model").json()["runtime"])
    for i, c in enumerate(PHOTO_CONDITIONS):
        photo = render_photo(images[i], c, c.severities[c.realistic], photo_rng(0, i))
        (scored,) = classifier.classify_uploads([photo])
        body = upload(client, photo, name="photo.jpg").json()
        assert body["probabilities"] == [float(p) for p in scored.probabilities]
        assert body["confident"] == scored.confident and body["unsure_reason"] == scored.unsure_reason
        assert body["class_confident"] == scored.class_confident and body["family"] == scored.family


def test_photos_are_held_to_the_photo_threshold_and_scans_to_their_own(client):
    """An upload the normaliser had to transform is a photo: its confidence must clear the policy's photo threshold.
    The same 28x28 input sent as raw pixels is a scan, held to the scans' threshold."""
    policy = client.app.state.predictor.classifier.record.abstention
    saved = policy.photo_threshold, policy.family_threshold
    photos = [product_photo(i) for i in range(8)]  # the fixture's batch limit
    seen = [prepare_upload(p, 40_000_000).pixels for p in photos]
    answer = client.post("/predict/pixels", json={"images": [s.tolist() for s in seen]})
    assert answer.status_code == 200, answer.text
    scans = answer.json()["predictions"]
    chosen = next(i for i, scan in enumerate(scans) if scan["confident"])  # a scan this model is sure of
    try:
        policy.photo_threshold = 1.01  # no photo can be this sure of its class
        body = upload(client, photos[chosen], name="photo.jpg").json()
        assert body["probabilities"] == pytest.approx(scans[chosen]["probabilities"], abs=1e-6)
        assert body["class_confident"] is False
        # Its family: summed over the family, the probability clears the family threshold or it does not.
        family_sure = body["confident"]
        assert family_sure == (body["family"] is not None) and family_sure == (body["unsure_reason"] is None)
        policy.family_threshold = 1.01  # nor of its family
        body = upload(client, photos[chosen], name="photo.jpg").json()
        assert body["confident"] is False and body["unsure_reason"] == "low_confidence" and body["family"] is None
        policy.photo_threshold = policy.confidence_threshold  # the same bar as scans: the same verdict
        body = upload(client, photos[chosen], name="photo.jpg").json()
        assert body["confident"] is True and body["class_confident"] is True
    finally:
        policy.photo_threshold, policy.family_threshold = saved


def test_pixels_can_opt_in_to_the_upload_normalisation(client):
    images, _ = real_test_images()
    veiled = np.clip(images[0].astype(int) + 60, 0, 255)  # a grey veil: raw values as a scanner might send them
    raw = client.post("/predict/pixels", json={"images": [veiled.tolist()]}).json()["predictions"][0]
    normalized = client.post("/predict/pixels", json={"images": [veiled.tolist()], "normalize": True}).json()
    photo = upload(client, encode(veiled.astype(np.uint8))).json()
    assert raw["inverted"] is None  # taken as it is
    assert normalized["predictions"][0]["probabilities"] == pytest.approx(photo["probabilities"], abs=1e-6)
    assert normalized["predictions"][0]["inverted"] is False


# --- what the model saw: return_input --------------------------------------------------------------------------------


def model_input_pixels(prediction: dict) -> np.ndarray:
    """An answer's `model_input`, decoded: it must be a PNG data URL of a 28x28 8-bit grayscale image."""
    prefix = "data:image/png;base64,"
    url = prediction["model_input"]
    assert url.startswith(prefix), url[:40]
    image = Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :], validate=True)))
    assert (image.format, image.mode, image.size) == ("PNG", "L", (28, 28))
    pixels = np.asarray(image)
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
    return pixels


def conforms(client, body: dict, schema_name: str) -> None:
    """`body` is valid against the OpenAPI schema `schema_name` (its references resolved in the same document)."""
    spec = client.get("/openapi.json").json()
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)


@pytest.mark.parametrize("kind", ["test image", "product photo"])
def test_return_input_is_exactly_the_image_the_model_classified(client, settings, kind):
    """The PNG decodes to the classifier's normalisation of the same bytes (`prepare_upload`, which the evaluate step
    runs too), the rest of the answer is the default answer, and those pixels, sent as they are, get the same
    probabilities: they are what the network received."""
    images, _ = real_test_images()
    data, name = (encode(images[0]), "image.png") if kind == "test image" else (product_photo(), "photo.jpg")
    default = upload(client, data, name).json()
    body = upload(client, data, name, return_input="true").json()
    seen = model_input_pixels(body)
    np.testing.assert_array_equal(seen, prepare_upload(data, settings.max_image_pixels).pixels)
    box = prepare_upload(data, settings.max_image_pixels).box
    if kind == "test image":  # already in Fashion-MNIST's form: it passes the normalisation unchanged, uncropped
        np.testing.assert_array_equal(seen, images[0])
        assert body["crop"] is None
    else:  # a dark garment on grey paper: the model saw it negated, light on black, cut from part of the photo
        assert body["inverted"] is True and seen[0, 0] == 0 and seen.max() >= 200
        crop = body["crop"]
        assert box is not None and [crop[k] for k in ("left", "top", "right", "bottom")] == pytest.approx(box)
        assert 0 <= crop["left"] < crop["right"] <= 1 and 0 <= crop["top"] < crop["bottom"] <= 1
    assert {k: v for k, v in body.items() if k not in ("model_input", "crop")} == default
    again = client.post("/predict/pixels", json={"images": [seen.tolist()]}).json()["predictions"][0]
    assert again["probabilities"] == body["probabilities"]
    conforms(client, body, "SinglePredictionWithInput")


def test_answers_carry_no_model_input_unless_asked(client):
    images, _ = real_test_images()
    png = encode(images[0])
    default = upload(client, png)
    assert "model_input" not in default.json()
    assert upload(client, png, return_input="false").content == default.content  # byte for byte the default
    batch = client.post("/predict/batch", files=[("files", ("a.png", png, "image/png"))]).json()
    pixels = client.post("/predict/pixels", json={"images": [images[0].tolist()], "normalize": True}).json()
    assert all("model_input" not in p for p in batch["predictions"] + pixels["predictions"])
    conforms(client, default.json(), "SinglePrediction")


def test_batch_and_pixels_return_each_model_input_when_asked(client, settings):
    images, _ = real_test_images()
    uploads = [encode(images[2]), product_photo(3)]
    files = [("files", ("image.png", uploads[0], "image/png")), ("files", ("photo.jpg", uploads[1], "image/jpeg"))]
    batch = client.post("/predict/batch", files=files, params={"return_input": "true"}).json()
    plain = client.post("/predict/batch", files=files).json()
    for data, answer, default in zip(uploads, batch["predictions"], plain["predictions"], strict=True):
        np.testing.assert_array_equal(
            model_input_pixels(answer), prepare_upload(data, settings.max_image_pixels).pixels
        )
        assert {k: v for k, v in answer.items() if k not in ("model_input", "crop")} == default
    assert batch["predictions"][0]["crop"] is None and batch["predictions"][1]["crop"] is not None
    conforms(client, batch, "BatchPredictionWithInput")

    veiled = np.clip(images[0].astype(int) + 60, 0, 255)  # raw values with a grey veil
    for normalized, expected in ((False, veiled), (True, normalize_photo(veiled).pixels)):
        body = {"images": [veiled.tolist()], "normalize": normalized, "return_input": True}
        answer = client.post("/predict/pixels", json=body).json()["predictions"][0]
        np.testing.assert_array_equal(model_input_pixels(answer), expected)
        assert answer["crop"] is None  # raw pixels: no picture to outline


def test_openapi_documents_return_input_and_model_input(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for path, plain in (("/predict", "SinglePrediction"), ("/predict/batch", "BatchPrediction")):
        operation = spec["paths"][path]["post"]
        (parameter,) = [p for p in operation["parameters"] if p["name"] == "return_input"]
        assert parameter["in"] == "query" and parameter["required"] is False
        assert parameter["schema"]["type"] == "boolean" and parameter["schema"]["default"] is False
        assert "model_input" in parameter["description"]
        answer = operation["responses"]["200"]["content"]["application/json"]["schema"]["anyOf"]
        assert [a["$ref"].rsplit("/", 1)[1] for a in answer] == [plain, plain + "WithInput"]
    assert schemas["PixelBatch"]["properties"]["return_input"]["type"] == "boolean"
    assert "model_input" not in schemas["SinglePrediction"]["properties"]
    for name in ("SinglePredictionWithInput", "PredictionWithInput"):
        assert "model_input" in schemas[name]["required"]
        assert schemas[name]["properties"]["model_input"]["pattern"].startswith("^data:image/png;base64,")


def test_top_k_parameter(client):
    images, _ = real_test_images()
    body = upload(client, encode(images[0]), top_k=5).json()
    probabilities = [t["probability"] for t in body["top_k"]]
    assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)


def test_a_product_photo_is_inverted_and_classified_like_the_original(client):
    from PIL import Image

    images, _ = real_test_images()
    agree = 0
    for pixels in images[:10]:
        original = upload(client, encode(pixels)).json()
        photo = Image.fromarray(255 - pixels).resize((224, 224), Image.Resampling.BICUBIC).convert("RGB")
        body = upload(client, encode(photo, "JPEG", quality=90), name="photo.jpg").json()
        assert body["inverted"] is True
        agree += body["class_index"] == original["class_index"]
    assert agree >= 8


def test_batch_of_files_and_pixel_arrays_agree_with_single_predictions(client, smoke_run):
    images, _ = real_test_images()
    singles = [upload(client, encode(p)).json()["class_index"] for p in images[:6]]
    files = [("files", (f"{i}.png", encode(p), "image/png")) for i, p in enumerate(images[:6])]
    batch = client.post("/predict/batch", files=files).json()
    assert batch["run"] == smoke_run.pathspec
    assert [p["class_index"] for p in batch["predictions"]] == singles
    assert [p["filename"] for p in batch["predictions"]] == [f"{i}.png" for i in range(6)]
    square = client.post("/predict/pixels", json={"images": [p.tolist() for p in images[:3]]}).json()
    flat = client.post("/predict/pixels", json={"images": [p.ravel().tolist() for p in images[3:6]], "top_k": 1})
    assert [p["class_index"] for p in square["predictions"] + flat.json()["predictions"]] == singles
    assert all(len(p["top_k"]) == 1 for p in flat.json()["predictions"])


def test_metrics_count_requests_latencies_and_classes(client):
    images, _ = real_test_images()
    predicted = upload(client, encode(images[0])).json()["class_name"]
    text = client.get("/metrics").text
    assert 'fashionflow_http_requests_total{method="POST",route="/predict",status="200"}' in text
    assert "fashionflow_unsure_answers" in text
    assert 'fashionflow_http_request_duration_seconds_bucket{le="0.005",route="/predict"}' in text
    assert f'fashionflow_predictions_total{{class_name="{predicted}"}}' in text
    assert "fashionflow_model_loaded 1.0" in text


def test_demo_page_and_docs(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="file"' in page.text and "<canvas" in page.text and "predict" in page.text
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/health", "/ready", "/model", "/predict", "/predict/batch", "/predict/pixels", "/metrics"} <= set(paths)


# --- malformed requests: always a 4xx naming the problem --------------------------------------------------------------


def _bad_requests():
    images, _ = real_test_images()
    png = encode(images[0])
    big_png = encode(np.random.default_rng(0).integers(0, 256, (400, 400), dtype=np.uint8))  # ~160 kB of noise
    huge = encode(np.random.default_rng(1).integers(0, 256, (600, 600), dtype=np.uint8))  # ~360 kB > the limit
    pixels = images[0].tolist()
    json_headers = {"content-type": "application/json"}

    def file(data, name="x.png"):
        return {"files": {"file": (name, data, "image/png")}}

    return {
        "not an image": ("/predict", file(b"GIF89a? no, just text"), 422, "not an image"),
        "truncated image": ("/predict", file(big_png[: len(big_png) // 2]), 422, "truncated"),
        "decompression bomb": ("/predict", file(png_bomb()), 413, "decompression bomb"),
        "empty file": ("/predict", file(b""), 422, "empty file"),
        "empty body": ("/predict", {"content": b""}, 415, "multipart/form-data"),
        "multipart without the file field": ("/predict", {"files": {"image": ("x.png", png)}}, 422, "file"),
        "wrong content type": ("/predict", {"json": {"images": [pixels]}}, 415, "multipart/form-data"),
        "multipart to the JSON endpoint": ("/predict/pixels", file(png), 415, "application/json"),
        "invalid JSON": ("/predict/pixels", {"content": b"{images: [", "headers": json_headers}, 422, "JSON"),
        "wrong JSON shape": ("/predict/pixels", {"json": {"images": [[1, 2, 3]]}}, 422, "shape [3]"),
        "JSON without images": ("/predict/pixels", {"json": {"pixels": [pixels]}}, 422, "images"),
        "JSON not an object": ("/predict/pixels", {"json": [pixels]}, 422, "dict"),
        "empty image list": ("/predict/pixels", {"json": {"images": []}}, 422, "at least 1"),
        "NaN pixels": (
            "/predict/pixels",
            {"content": json.dumps({"images": [[float("nan")] * 784]}).encode(), "headers": json_headers},
            422,
            "NaN",
        ),
        "infinite pixels": (
            "/predict/pixels",
            {"content": json.dumps({"images": [[float("inf")] * 784]}).encode(), "headers": json_headers},
            422,
            "infinite",
        ),
        "out-of-range pixels": ("/predict/pixels", {"json": {"images": [[256] * 784]}}, 422, "0-255"),
        "too many files": (
            "/predict/batch",
            {"files": [("files", (f"{i}.png", png, "image/png")) for i in range(9)]},
            413,
            "too many images",
        ),
        "too many pixel images": ("/predict/pixels", {"json": {"images": [pixels] * 9}}, 413, "too many images"),
        "a bad file in a batch": (
            "/predict/batch",
            {"files": [("files", ("a.png", png)), ("files", ("b.png", b"junk"))]},
            422,
            "files[1]",
        ),
        "body over the size limit": ("/predict", file(huge), 413, "over the limit"),
        "chunked body over the size limit": (
            "/predict",
            {"content": iter([b"x" * 100_000] * 4), "headers": {"content-type": "multipart/form-data; boundary=b"}},
            413,
            "over the limit",
        ),
        "top_k out of range": ("/predict?top_k=0", file(png), 422, "top_k"),
        "return_input not a boolean": (
            "/predict?return_input=yes",
            file(png),
            422,
            "return_input must be true or false",
        ),
        "return_input as a number": (
            "/predict/batch?return_input=1",
            {"files": [("files", ("a.png", png, "image/png"))]},
            422,
            "return_input must be true or false, got '1'",
        ),
        "return_input not a JSON boolean": (
            "/predict/pixels",
            {"json": {"images": [pixels], "return_input": "true"}},
            422,
            "return_input",
        ),
    }


BAD_REQUESTS = _bad_requests()


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_malformed_requests_get_a_4xx_naming_the_problem(client, case):
    path, request, status, message = BAD_REQUESTS[case]
    response = client.post(path, **request)
    assert response.status_code == status, response.text
    assert message in response.text
    assert client.get("/health").status_code == 200  # and the service lives on


def test_a_file_part_without_a_filename_is_still_an_image(client):
    """RFC 7578 only recommends a filename on file parts; a client that leaves it out gets the same answer."""
    images, _ = real_test_images(3)
    pngs = [encode(image) for image in images]
    boundary = "fashionflowtest"

    def body(field: str, files: list[bytes]) -> bytes:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\nContent-Type: image/png\r\n\r\n'
        return b"".join(head.encode() + data + b"\r\n" for data in files) + f"--{boundary}--\r\n".encode()

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    unnamed = client.post("/predict/batch", content=body("files", pngs), headers=headers)
    named = client.post(
        "/predict/batch", files=[("files", (f"{i}.png", png, "image/png")) for i, png in enumerate(pngs)]
    )
    assert unnamed.status_code == named.status_code == 200, unnamed.text
    assert [p["probabilities"] for p in unnamed.json()["predictions"]] == [
        p["probabilities"] for p in named.json()["predictions"]
    ]
    assert [p["filename"] for p in unnamed.json()["predictions"]] == [None] * 3
    single = client.post("/predict", content=body("file", pngs[:1]), headers=headers)
    assert (
        single.status_code == 200 and single.json()["probabilities"] == named.json()["predictions"][0]["probabilities"]
    )
    broken = client.post("/predict", content=body("file", [b"\xff\xfe not an image"]), headers=headers)
    assert broken.status_code == 422 and "the file (no filename): file is not an image" in broken.json()["detail"]


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ({"normalize": 0}, 422),
        ({"normalize": "true"}, 422),
        ({"top_k": "3"}, 422),
        ({"top_k": True}, 422),
        ({"top_k": 3.0}, 200),
        ({"top_k": 2, "normalize": True}, 200),
        ({"return_input": 1}, 422),
        ({"return_input": True}, 200),
    ],
)
def test_pixel_options_are_taken_as_the_schema_types_them(client, extra, status):
    """`normalize` and `return_input` are JSON booleans and `top_k` a JSON integer (3.0 is one, "3" and true are
    not)."""
    response = client.post("/predict/pixels", json={"images": [[0] * 784], **extra})
    assert response.status_code == status, response.text


# --- generated requests from the OpenAPI schema -----------------------------------------------------------------------


def test_an_image_of_too_many_values_is_refused_before_conversion(client):
    """The item limit: at most 784 entries per image, checked as the body is validated, named in the 422."""
    answer = client.post("/predict/pixels", json={"images": [[0] * 784, [0] * 100_000]})
    assert answer.status_code == 422, answer.text
    (problem,) = answer.json()["detail"]
    assert problem["loc"] == ["body", "images", 1] and "at most 784" in problem["msg"]


def test_a_pixel_body_over_the_routes_own_limit_is_refused_by_its_size(client, settings):
    """/predict/pixels takes at most what `max_batch` images can take up (`pixel_body_limit`), less than the
    general body limit: a body of a million numbers is refused before it is parsed."""
    limit = pixel_body_limit(settings)
    assert limit < settings.max_body_bytes
    body = json.dumps({"images": [[0] * 93_000]}).encode()  # 279 kB: between the two limits
    assert limit < len(body) <= settings.max_body_bytes
    answer = client.post("/predict/pixels", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 413 and f"over the limit of {limit}" in answer.json()["detail"]


def test_a_large_pixel_body_parsed_off_the_event_loop_gets_the_same_answers(client):
    """A body over the inline-parsing size (here padded with JSON whitespace) is parsed on a worker thread, and 8
    images converted there: the answers are those of the same images in a small body."""
    images, _ = real_test_images(8)
    small = json.dumps({"images": images.tolist()})
    padded = small.replace(",", ", " + " " * 20)
    assert len(padded) > 64 * 1024 > len(small)
    headers = {"content-type": "application/json"}
    inline = client.post("/predict/pixels", content=small, headers=headers).json()
    offloaded = client.post("/predict/pixels", content=padded, headers=headers).json()
    assert offloaded == inline and len(offloaded["predictions"]) == 8


def test_schemathesis_finds_no_server_errors_and_no_valid_request_rejected(client, smoke_run):
    """Requests generated from /openapi.json, fitting the schema and deliberately not: none may get a 5xx, and none
    that fits the schema may be refused (file parts are real images: `tests.support.schemathesis_hooks`), but for
    two answers the Open Inference Protocol prescribes: 404 for a version that is not the one served (the schema
    cannot list it: it changes when the service follows a tag), and 400 for an infer body that fits the schema but
    disagrees with itself (a shape whose element count is not its data's: JSON Schema cannot say that)."""
    import schemathesis
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hypothesis_settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation.modes import GenerationMode

    import tests.support.schemathesis_hooks  # noqa: F401 - registers the image strategies

    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    calls, failures, rejected = [], [], []

    def prescribed(case, response) -> bool:
        version = (case.path_parameters or {}).get("model_version")
        if response.status_code == 404 and version is not None and version != smoke_run.id:
            return True
        return case.path.endswith("/infer") and response.status_code == 400 and "error" in response.json()

    def check(operation, mode):
        @given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis_settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def call(case):
            response = case.call(session=client)
            calls.append(response.status_code)
            where = f"{case.method} {case.path}: {response.status_code} {response.text[:200]}"
            if response.status_code >= 500:
                failures.append(where)
            elif response.status_code >= 400 and mode is GenerationMode.POSITIVE and not prescribed(case, response):
                rejected.append(where)

        try:
            call()
        except Unsatisfiable:  # no negative form exists for an operation without parameters or body
            assert mode is GenerationMode.NEGATIVE

    for result in schema.get_all_operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            check(result.ok(), mode)
    assert not failures, failures
    assert not rejected, rejected
    assert len(calls) > 100 and sum(code == 200 for code in calls) > 50


def test_openapi_says_which_uploads_and_pixels_are_valid(client):
    """What the service rejects with a 4xx is not schema-valid: no empty file, no empty batch, pixel images only as
    28 rows of 28 numbers or 784 numbers in 0-255 (schemathesis' positive phase found all three)."""
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    single = schemas["Body_predict_predict_post"]["properties"]["file"]
    assert single["minLength"] == 1
    batch = schemas["Body_predict_batch_predict_batch_post"]["properties"]["files"]
    assert batch["minItems"] == 1 and batch["items"]["minLength"] == 1
    shapes = schemas["PixelBatch"]["properties"]["images"]["items"]["oneOf"]
    pixel = {"type": "number", "minimum": 0, "maximum": 255}
    assert {"type": "array", "items": pixel, "minItems": 784, "maxItems": 784, "title": "784 values"} in shapes
    rows = next(s for s in shapes if s["minItems"] == 28)
    assert rows["maxItems"] == 28 and rows["items"]["items"] == pixel and rows["items"]["minItems"] == 28


# --- the load benchmark ---------------------------------------------------------------------------------------------


def test_load_benchmark_quick_mode_runs_without_errors(smoke_run):
    result = subprocess.run(
        [sys.executable, "benchmarks/serve_load.py", "--quick", "--concurrency", "8", "--run", smoke_run.pathspec],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for phase in ("bare", "single", "batch"):
        assert f"\n{phase} " in result.stdout
    assert "[met] errors: 0" in result.stdout


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (make wrk, or apt-get install wrk)")
def test_wrk_benchmark_quick_mode_measures_both_endpoints_with_two_workers(smoke_run, tmp_path):
    """benchmarks/serve_wrk.py --quick --protocols --real-photos 4: the bare endpoint and the service (its own
    routes, real phone photos, and the Open Inference Protocol's) measured with the same two workers, no errors, every
    figure of the table present (the figures themselves are the benchmark's business, not the test's)."""
    out = tmp_path / "wrk.json"
    command = [sys.executable, "benchmarks/serve_wrk.py", "--quick", "--workers", "2", "--run", smoke_run.pathspec]
    command.append("--protocols")  # also /predict/pixels and the /v2 infer route, JSON and binary
    command += ["--real-photos", "4"]  # also real phone photos through /predict, one of four per request in turn
    result = subprocess.run(
        [*command, "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300, env=os.environ.copy()
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "servers: 2 uvicorn worker(s) each" in result.stdout and "single/bare:" in result.stdout
    assert "[met] errors: 0" in result.stdout
    phases = {r["name"]: r for r in json.loads(out.read_text())}
    assert set(phases) == {
        "bare",
        "single",
        "photo",
        "batch",
        "pixels",
        "infer-pixels",
        "infer-pixels-bin",
        "infer-images",
    }
    assert "infer-pixels/pixels:" in result.stdout and "infer-images/batch:" in result.stdout
    for r in phases.values():
        assert r["requests"] > 0 and r["socket_errors"] == r["non_2xx"] == 0
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["wrk_cpu"] > 0 and r["server_cpu"] > 0
    assert phases["batch"]["images_per_request"] == phases["infer-images"]["images_per_request"] == 8


def test_several_workers_share_a_socket_whose_connections_send_at_once():
    """uvicorn's own shared socket for several workers leaves Nagle's algorithm on (every keep-alive answer then
    waits ~40 ms for a delayed ACK); the CLI's has TCP_NODELAY on each accepted connection."""
    import asyncio
    import socket

    import uvicorn

    from serving.cli import listening_socket

    config = uvicorn.Config("serving.app:app", host="127.0.0.1", port=0, workers=2, log_level="warning")

    async def nodelay_of_accepted(sock: socket.socket) -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):
                raw = transport.get_extra_info("socket")
                accepted.set_result(raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        try:
            return await asyncio.wait_for(accepted, 10)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(nodelay_of_accepted(listening_socket(config))) != 0
