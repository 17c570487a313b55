"""The demo page in a real headless Chromium: upload a real Fashion-MNIST test image, see its class in the top 3, and
the answer with the image the model saw beside the drawing canvas on a laptop-sized screen."""

from __future__ import annotations

import shutil

import httpx
import numpy as np
import pytest
import torch

from fmnist.core.data import CLASS_NAMES
from fmnist.core.model import normalize
from fmnist.release.model_record import ModelRecord
from tests.support.images import encode, real_test_images

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def confidently_right(smoke_run) -> tuple[np.ndarray, int]:
    """A real test image the smoke model classifies correctly with a clear margin, and its label."""
    record = ModelRecord.from_bytes(smoke_run.data.calibrated_model)
    images, labels = real_test_images()
    with torch.no_grad():
        logits = record.build("cpu")(normalize(torch.from_numpy(images), record.mean, record.std))
    probs = torch.softmax(logits / record.temperature, dim=1).numpy()
    for i in np.argsort(-probs.max(axis=1)):
        if probs[i].argmax() == labels[i]:
            return images[i], int(labels[i])
    raise AssertionError("the smoke model gets none of the test images right")


def test_demo_page_uploads_a_real_test_image_and_shows_its_class(service_url, browser, smoke_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    pixels, label = confidently_right(smoke_run)
    path = tmp_path / "test-image.png"
    path.write_bytes(encode(pixels))

    browser.get(service_url + "/")
    assert "FashionFlow" in browser.title
    browser.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#result li")) == 3)
    items = browser.find_elements(By.CSS_SELECTOR, "#result li")
    assert items[0].text.startswith(CLASS_NAMES[label] + ":"), [i.text for i in items]
    assert items[0].get_attribute("data-class-index") == str(label)
    percentages = [float(i.text.rsplit(":", 1)[1].strip(" %")) for i in items]
    assert percentages == sorted(percentages, reverse=True) and 0 < sum(percentages) <= 100.1
    assert browser.find_element(By.ID, "error").text == ""
    WebDriverWait(browser, 10).until(lambda d: smoke_run.pathspec in d.find_element(By.ID, "model").text)


def test_demo_page_shows_the_problem_with_a_bad_upload(service_url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    path = tmp_path / "notes.png"
    path.write_bytes(b"these are not pixels")
    browser.get(service_url + "/")
    browser.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "error").text)
    assert "422" in browser.find_element(By.ID, "error").text
    assert "not an image" in browser.find_element(By.ID, "error").text


def test_demo_page_says_plainly_when_the_model_is_unsure(service_url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    path = tmp_path / "checkerboard.png"
    board = (np.indices((120, 120)).sum(axis=0) // 15 % 2 * 255).astype(np.uint8)
    path.write_bytes(encode(board))
    browser.get(service_url + "/")
    browser.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "verdict").text)
    assert browser.find_element(By.ID, "verdict").text.startswith("Unsure")
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-confident") == "false"


# A common laptop screen: the answer must be in sight there without scrolling.
LAPTOP_VIEWPORT = (1366, 768)


def test_the_answer_and_what_the_model_saw_sit_beside_the_canvas_on_a_laptop_screen(
    service_url, browser, smoke_run, tmp_path
):
    """In a 1366x768 viewport, after an upload, the answer (class, bars, verdict) and the 28x28 image the model saw
    are in sight without scrolling, to the right of the drawing canvas and at its height; the image is the service's
    own model input for the uploaded bytes, scaled up with hard pixel edges."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    pixels, _ = confidently_right(smoke_run)
    data = encode(pixels)
    path = tmp_path / "test-image.png"
    path.write_bytes(data)
    width, height = LAPTOP_VIEWPORT
    # The viewport itself, exactly (a window size would include the browser's own frame).
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        browser.get(service_url + "/")
        browser.find_element(By.ID, "file").send_keys(str(path))
        WebDriverWait(browser, 30).until(
            lambda d: d.execute_script(
                "const image = document.getElementById('model-input');"
                "return document.querySelectorAll('#result li').length === 3 && image.complete"
                " && image.naturalWidth > 0;"
            )
        )
        assert browser.execute_script("return [innerWidth, innerHeight, scrollX, scrollY];") == [width, height, 0, 0]
        canvas = _box(browser, "canvas")
        for element in ("answer", "verdict", "result", "model-input"):
            box = _box(browser, element)
            assert browser.find_element(By.ID, element).is_displayed(), element
            assert box["left"] >= 0 and box["right"] <= width, (element, box)  # in sight, no scrolling
            assert box["top"] >= 0 and box["bottom"] <= height, (element, box)
            assert box["left"] >= canvas["right"], (element, box, canvas)  # beside the canvas, not below it
            assert box["top"] < canvas["bottom"] and box["bottom"] > canvas["top"], (element, box, canvas)
        assert browser.find_element(By.ID, "verdict").text.startswith(("Confident", "Unsure"))

        image = browser.find_element(By.ID, "model-input")
        natural = browser.execute_script("const i = arguments[0]; return [i.naturalWidth, i.naturalHeight];", image)
        assert natural == [28, 28]
        shown = _box(browser, "model-input")
        assert shown["right"] - shown["left"] >= 4 * 28  # scaled up to be seen
        assert image.value_of_css_property("image-rendering") == "pixelated"
        assert "what the model saw" in browser.find_element(By.ID, "seen").text
        answer = httpx.post(
            service_url + "/predict",
            params={"return_input": "true"},
            files={"file": ("test-image.png", data, "image/png")},
            timeout=30,
        ).json()
        assert image.get_attribute("src") == answer["model_input"]
        assert browser.find_element(By.ID, "error").text == ""
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def _box(browser, element_id: str) -> dict[str, float]:
    """The element's box in viewport coordinates (CSS pixels): left, top, right, bottom."""
    return browser.execute_script(
        "const r = document.getElementById(arguments[0]).getBoundingClientRect();"
        "return {left: r.left, top: r.top, right: r.right, bottom: r.bottom};",
        element_id,
    )


def test_the_upload_shows_where_the_garment_was_found(service_url, browser, tmp_path):
    """A garment photographed on a floor, off-centre: the answer's `crop` is drawn as an outline on the uploaded
    picture, at the same fractions of its width and height as the service found the garment."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.images.test_normalise import garment_on_a_floor

    picture, expected = garment_on_a_floor(1, 260, 160)
    data = encode(picture)
    path = tmp_path / "floor.png"
    path.write_bytes(data)
    browser.get(service_url + "/")
    browser.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "crop").is_displayed())
    crop = httpx.post(
        service_url + "/predict",
        params={"return_input": "true"},
        files={"file": ("floor.png", data, "image/png")},
        timeout=30,
    ).json()["crop"]
    assert np.abs(np.array([crop[k] for k in ("left", "top", "right", "bottom")]) - np.array(expected)).max() <= 0.02
    shown, outline = _box(browser, "preview"), _box(browser, "crop")
    width, height = shown["right"] - shown["left"], shown["bottom"] - shown["top"]
    assert width > 100 and abs(width / height - 400 / 300) < 0.02  # the picture at its own aspect ratio
    drawn = [
        (outline["left"] - shown["left"]) / width,
        (outline["top"] - shown["top"]) / height,
        (outline["right"] - shown["left"]) / width,
        (outline["bottom"] - shown["top"]) / height,
    ]
    assert np.abs(np.array(drawn) - np.array([crop[k] for k in ("left", "top", "right", "bottom")])).max() <= 0.02
    # A drawing has no picture on show: no outline.
    browser.find_element(By.ID, "predict-drawing").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "status").text.startswith("drawing.png"))
    assert not browser.find_element(By.ID, "crop").is_displayed()
