"""The real service under uvicorn on loopback, for the tests that talk to it over real HTTP (a browser, protocol
clients)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def running_service(run_pathspec: str, log_path: Path, **env: str) -> Iterator[str]:
    """Serve the model of `run_pathspec` on a free loopback port (more FASHIONFLOW_* settings in `env`); yields the
    base URL once /ready answers 200, and stops the server afterwards. Its log is written to `log_path`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = log_path.open("wb")
    variables = {**os.environ, "FASHIONFLOW_RUN": run_pathspec, "FASHIONFLOW_DEVICE": "cpu", **env}
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "--host", "127.0.0.1", "--port", str(port)],  # as fmnist-serve
        cwd=ROOT,
        env=variables,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-2000:]
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()
