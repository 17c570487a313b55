"""Drift signals: the sliding window's arithmetic, and the service's /drift and gauges on two streams of real images,
one like the training data and one shifted (a single class, brightened), and a stream of product photos."""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fmnist.release.model_record import ModelRecord
from fmnist.trust.drift import (
    DriftReference,
    DriftThresholds,
    DriftWindow,
    image_statistics,
    js_divergence,
    reference_from_images,
    unsure_threshold,
)
from serving.app import create_app
from serving.settings import Settings
from tests.support.images import encode, real_test_images

WINDOW = 300
REFERENCE = DriftReference((0.1,) * 10, 0.1, (0.3, 0.1), (0.45, 0.15), 1000)

# --- the window -------------------------------------------------------------------------------------------------------


def test_js_divergence_is_zero_for_the_prior_and_large_for_one_class():
    uniform = np.full(10, 0.1)
    assert js_divergence(uniform * 7, uniform) == pytest.approx(0.0, abs=1e-12)  # counts or shares alike
    one_class = np.eye(10)[3]
    assert js_divergence(one_class, uniform) == pytest.approx(0.758, abs=1e-3)
    assert js_divergence(np.eye(10)[0], np.eye(10)[1]) == pytest.approx(1.0)


def test_window_keeps_only_the_last_predictions_and_sums_them_in_constant_time():
    window = DriftWindow(5, 10)
    rng = np.random.default_rng(0)
    items = [
        (int(rng.integers(10)), bool(rng.random() < 0.3), [None, True, False][i % 3], rng.random(), rng.random())
        for i in range(12)
    ]
    for item in items:
        window.add(*item)
    assert len(window) == 5
    last = items[-5:]
    summary = {s.name: s for s in window.summary(REFERENCE, DriftThresholds(min_samples=1)).signals}
    classes = np.bincount([i[0] for i in last], minlength=10).astype(float)
    assert summary["class_divergence"].value == pytest.approx(js_divergence(classes, np.full(10, 0.1)))
    assert summary["unsure_share"].value == pytest.approx(np.mean([i[1] for i in last]))
    known = [i[2] for i in last if i[2] is not None]
    assert summary["inverted_share"].value == pytest.approx(np.mean(known))
    assert summary["mean_pixel_shift"].value == pytest.approx(abs(np.mean([i[3] for i in last]) - 0.3) / 0.1)
    assert summary["foreground_shift"].value == pytest.approx(abs(np.mean([i[4] for i in last]) - 0.45) / 0.15)


def test_nothing_is_judged_on_fewer_predictions_than_min_samples():
    window = DriftWindow(100, 10)
    for _ in range(10):
        window.add(0, True, True, 0.9, 1.0)  # everything about these is off
    early = window.summary(REFERENCE, DriftThresholds(min_samples=20))
    assert early.count == 10 and not early.drifting
    assert all(s.value is not None and s.value > s.threshold for s in early.signals)
    for _ in range(10):
        window.add(0, True, True, 0.9, 1.0)
    assert window.summary(REFERENCE, DriftThresholds(min_samples=20)).drifting


def test_a_record_without_a_reference_has_a_uniform_prior_and_no_input_signals():
    window = DriftWindow(10, 10)
    window.add(1, False, None, 0.3, 0.4)
    signals = {s.name: s for s in window.summary(DriftReference.uniform(10), DriftThresholds(min_samples=1)).signals}
    assert signals["mean_pixel_shift"].value is None and signals["foreground_shift"].value is None
    assert signals["class_divergence"].value is not None


def test_reference_from_training_images():
    images, labels = real_test_images(1000)
    reference = reference_from_images(images, labels, 10, unsure_share=0.14)
    assert sum(reference.class_prior) == pytest.approx(1.0)
    assert max(reference.class_prior) < 0.13  # Fashion-MNIST is balanced
    assert 0.2 < reference.mean_pixel[0] < 0.4 and 0.05 < reference.mean_pixel[1] < 0.2
    assert 0.3 < reference.foreground[0] < 0.6
    assert DriftReference.from_dict(reference.to_dict()) == reference


def test_recording_a_prediction_costs_microseconds():
    """The per-request cost: input statistics of the image and one window update."""
    images, _ = real_test_images(200)
    window = DriftWindow(1000, 10)
    start = time.perf_counter()
    for i in range(5000):
        means, foreground = image_statistics(images[i % 200][None])
        window.add(i % 10, False, None, float(means[0]), float(foreground[0]))
    per_prediction = (time.perf_counter() - start) / 5000
    start = time.perf_counter()
    window.summary(REFERENCE, DriftThresholds())
    read = time.perf_counter() - start
    print(f"drift: {per_prediction * 1e6:.1f} us per prediction recorded, {read * 1e6:.0f} us per summary")
    assert per_prediction < 200e-6  # measured ~10 us on a 2-core CPU; the bound leaves room for a busy machine


# --- the service ------------------------------------------------------------------------------------------------------


def test_the_unsure_threshold_stays_below_one_so_the_signal_can_fire():
    assert unsure_threshold(0.1, 0.15) == pytest.approx(0.235)
    assert unsure_threshold(0.9, 0.15) == pytest.approx(0.915) and unsure_threshold(0.999, 1.0) <= 1.0
    window = DriftWindow(100, 10)
    for i in range(100):
        window.add(i % 10, True, False, 0.3, 0.45)  # every answer unsure
    reference = DriftReference((0.1,) * 10, 0.9, (0.3, 0.1), (0.45, 0.15), 1000)  # a model unsure of 90% already
    signal = {s.name: s for s in window.summary(reference, DriftThresholds()).signals}["unsure_share"]
    assert signal.threshold < 1.0 and signal.value == 1.0 and signal.past_threshold


@pytest.fixture(scope="module")
def client(smoke_run):
    settings = Settings(run=smoke_run.pathspec, device="cpu", drift_window=WINDOW, drift_min_samples=100)
    with TestClient(create_app(settings)) as client:
        yield client


def signals(client) -> dict[str, dict]:
    body = client.get("/drift").json()
    return {s["name"]: s for s in body["signals"]} | {"_": body}


def show(name: str, found: dict[str, dict]) -> str:
    parts = [
        f"{k} {v['value']:.3f}/{v['threshold']:.3f}" for k, v in found.items() if k != "_" and v["value"] is not None
    ]
    return f"{name}: " + ", ".join(parts)


def test_the_model_record_carries_the_drift_reference(smoke_run, client):
    record = ModelRecord.from_bytes(smoke_run.data.calibrated_model)
    reference = DriftReference.from_dict(record.reference)
    assert reference.class_prior == pytest.approx([0.1] * 10)  # the smoke profile's stratified split
    assert reference.images == smoke_run.data.data_summary["val_size"]
    # The reference comes from validation images only: the test set chooses nothing.
    assert reference.unsure_share == pytest.approx(smoke_run.data.report["validation_unsure_share"])
    assert client.get("/model").json()["drift_reference"] == record.reference


def test_in_distribution_images_stay_under_every_threshold_and_a_shifted_stream_moves_past_them(client):
    images, labels = real_test_images(4000)
    body = client.get("/drift").json()
    assert body["count"] == 0 and body["window_size"] == WINDOW and not body["drifting"]

    # Test images as uploads, in batches: the traffic the model was made for.
    for start in range(0, WINDOW, 50):
        files = [("files", (f"{i}.png", encode(images[i]), "image/png")) for i in range(start, start + 50)]
        assert client.post("/predict/batch", files=files).status_code == 200
    calm = signals(client)
    print(show("in-distribution", calm))
    assert calm["_"]["count"] == WINDOW and not calm["_"]["drifting"]
    for name in ("class_divergence", "unsure_share", "inverted_share", "mean_pixel_shift", "foreground_shift"):
        assert calm[name]["value"] is not None and calm[name]["value"] <= calm[name]["threshold"], name
        assert not calm[name]["past_threshold"], name

    # One class only, brightened (a grey veil over the black background), as raw pixels: the window fills with it.
    pick = np.flatnonzero(labels[WINDOW:] == 1)[:WINDOW] + WINDOW  # trousers
    shifted = np.clip(images[pick].astype(int) + 70, 0, 255)
    for start in range(0, WINDOW, 50):
        body = {"images": [p.tolist() for p in shifted[start : start + 50]]}
        assert client.post("/predict/pixels", json=body).status_code == 200
    moved = signals(client)
    print(show("one class, brightened", moved))
    assert moved["_"]["drifting"]
    for name in ("class_divergence", "mean_pixel_shift", "foreground_shift"):
        assert moved[name]["past_threshold"], (name, moved[name])
    assert moved["class_divergence"]["value"] > 3 * calm["class_divergence"]["value"]
    text = client.get("/metrics").text
    assert re.search(r'^fashionflow_drift_past_threshold\{signal="class_divergence"\} 1\.0$', text, re.MULTILINE)
    # The metric says what /drift says about the unsure share, whichever way it went.
    unsure_flag = "1.0" if moved["unsure_share"]["past_threshold"] else "0.0"
    assert re.search(
        rf'^fashionflow_drift_past_threshold\{{signal="unsure_share"\}} {unsure_flag}$', text, re.MULTILINE
    )
    assert f"fashionflow_drift_window_predictions {float(WINDOW)}" in text

    # Noise, which the model must decline: the unsure share can pass its threshold, and does.
    assert calm["unsure_share"]["threshold"] < 1.0
    noise = np.random.default_rng(3).integers(0, 256, size=(WINDOW, 28, 28))
    for start in range(0, WINDOW, 50):
        body = {"images": noise[start : start + 50].tolist()}
        assert client.post("/predict/pixels", json=body).status_code == 200
    unsure = signals(client)
    print(show("noise", unsure))
    assert unsure["unsure_share"]["value"] > 0.9 and unsure["unsure_share"]["past_threshold"]
    text = client.get("/metrics").text
    assert re.search(r'^fashionflow_drift_past_threshold\{signal="unsure_share"\} 1\.0$', text, re.MULTILINE)


def test_product_photos_raise_the_inverted_share(client):
    """Garments photographed dark on a light backdrop: the normalisation negates them, the window notices."""
    images, _ = real_test_images(WINDOW)
    for pixels in images[:WINDOW]:
        photo = Image.fromarray(255 - pixels).resize((112, 112), Image.Resampling.BICUBIC)
        response = client.post("/predict", files={"file": ("photo.png", encode(photo), "image/png")})
        assert response.status_code == 200 and response.json()["inverted"] is True
    photos = signals(client)
    print(show("product photos", photos))
    assert photos["inverted_share"]["value"] == pytest.approx(1.0)
    assert photos["inverted_share"]["past_threshold"]
    assert not math.isnan(photos["mean_pixel_shift"]["value"])
