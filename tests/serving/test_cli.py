"""`fmnist-serve` itself: every setting a flag (with its default and variable), the version, and with several workers
one `/metrics` for the whole server."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx

from fmnist import __version__
from serving.settings import Settings
from tests.support.service import running_service


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_setting_with_its_default_and_variable():
    text = " ".join(serve("--help").stdout.split())  # argparse wraps its lines
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        assert f"{flag} " in text, flag
        assert f"[env FASHIONFLOW_{name.upper()}]" in text, name
        default = "null" if field.default is None else str(field.default)
        assert f"(default: {default})" in text, (name, default)


def test_version_and_a_bad_value_named():
    assert serve("--version").stdout.strip() == f"fmnist-serve (fashionflow {__version__})"
    refused = serve("--max-batch", "0", "--run", "FashionFlow/1")
    assert refused.returncode == 2 and "max_batch" in refused.stderr and "greater than or equal to 1" in refused.stderr


def test_with_two_workers_metrics_are_the_whole_servers(smoke_run, tmp_path):
    """Readiness answers name the worker (pid): once both have answered, /metrics, from either worker, counts every
    one of those answers, not only its own."""
    with running_service(smoke_run.pathspec, tmp_path / "serve.log", FASHIONFLOW_WORKERS="2") as url:
        pids, answered = set(), 0
        deadline = time.monotonic() + 120  # the second worker may still be loading its model
        while time.monotonic() < deadline and not (len(pids) == 2 and answered >= 10):
            with httpx.Client() as fresh:  # a new connection each time: the kernel hands it to either worker
                answer = fresh.get(url + "/ready")
            if answer.status_code == 200:
                pids.add(answer.json()["pid"])
                answered += 1
            else:
                time.sleep(0.05)
        assert len(pids) == 2, "only one worker answered"
        metrics = httpx.get(url + "/metrics").text
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("fashionflow_http_requests_total{") and 'route="/ready"' in line and 'status="200"' in line
    )
    # Every 200 this test saw, and the one that told running_service the server was ready.
    assert counted == answered + 1, metrics[:2000]
