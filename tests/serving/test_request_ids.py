"""Request ids, against the real service under uvicorn: the client's `X-Request-ID` is echoed and written in the
access log line of its request; without one (or with one no gateway would send) the service makes one."""

from __future__ import annotations

import io
import logging
import re
import time

import httpx
import pytest

from serving.request_ids import RequestIdFilter, _current, log_config
from tests.support.images import real_test_images
from tests.support.service import running_service


@pytest.fixture(scope="module")
def service(smoke_run, tmp_path_factory):
    log = tmp_path_factory.mktemp("request-ids") / "uvicorn.log"
    with running_service(smoke_run.pathspec, log) as url:
        yield url, log


def access_line(log, marker: str) -> str:
    """The access log line that names `marker`, waiting briefly for uvicorn to write it."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [line for line in log.read_text().splitlines() if marker in line]
        if lines:
            return lines[-1]
        time.sleep(0.1)
    raise AssertionError(f"no log line with {marker}:\n{log.read_text()[-2000:]}")


def test_the_clients_id_is_echoed_and_in_the_access_line(service):
    url, log = service
    images, _ = real_test_images(1)
    answer = httpx.post(
        url + "/predict/pixels", json={"images": images.tolist()}, headers={"X-Request-ID": "shop-7f3a"}
    )
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "shop-7f3a"
    line = access_line(log, "request_id=shop-7f3a")
    assert "POST /predict/pixels" in line and " 200" in line


def test_an_error_answer_carries_its_id_too(service):
    url, log = service
    answer = httpx.post(url + "/predict", files={"file": ("x.png", b"not an image")}, headers={"X-Request-ID": "e-1"})
    assert answer.status_code == 422 and answer.headers["x-request-id"] == "e-1"
    assert " 422" in access_line(log, "request_id=e-1")


@pytest.mark.parametrize("sent", [None, "", "has space", "x" * 129])
def test_without_a_usable_id_the_service_makes_one(service, sent):
    url, log = service
    headers = {"X-Request-ID": sent} if sent is not None else {}
    answer = httpx.get(url + "/health", headers=headers)
    made = answer.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert "GET /health" in access_line(log, f"request_id={made}")


def test_a_service_log_line_written_during_a_request_names_it():
    """fmnist-serve's logging on the service's own lines, inside a request and outside one."""
    config = log_config("info")
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter(config["formatters"]["service"]["format"]))
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("serving.test")
    logger.addHandler(handler)
    token = _current.set("abc%s")
    try:
        logger.warning("decode of %s refused", "files[0]")
    finally:
        _current.reset(token)
    logger.warning("outside")
    logger.removeHandler(handler)
    lines = handler.stream.getvalue().splitlines()
    assert lines[0].endswith("decode of files[0] refused request_id=abc%s") and lines[1].endswith("request_id=-")
