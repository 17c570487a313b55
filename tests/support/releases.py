"""Helpers of the release tests (promotion gate, live model switch): a second smoke run shared by the session, the
stand-in FashionFlow, the service as a real process on loopback, and a small bounded load from concurrent clients."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import httpx

from tests.support.flows import ROOT, run_flow

STAND_IN_FLOW = Path(__file__).resolve().parent / "fashion_flow_stand_in.py"
PROMOTE_FLOW = ROOT / "flows" / "promote_flow.py"


@cache
def second_smoke_run() -> Any:
    """Another successful smoke run of the real flow, trained once per session for the tests that need two runs."""
    result = run_flow()
    assert result.status == "successful", result.stderr[-3000:]
    return result.run


def stand_in_run(datastore: Path, record: bytes | None) -> str:
    """A run of the stand-in FashionFlow in `datastore` whose `calibrated_model` is `record` (None: no artifact);
    returns its pathspec."""
    args = [sys.executable, str(STAND_IN_FLOW), "--quiet", "run"]
    if record is not None:
        path = datastore / f"record-{time.monotonic_ns()}.bin"
        path.write_bytes(record)
        args += ["--record", str(path)]
    run_id_file = datastore / f"run-id-{time.monotonic_ns()}"
    env = {**os.environ, "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(datastore), "USERNAME": "test"}
    result = subprocess.run(
        [*args, "--run-id-file", str(run_id_file)], cwd=datastore, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return f"FashionFlow/{run_id_file.read_text().strip()}"


def private_datastore(path: Path) -> Path:
    """A datastore directory of its own (with the `.metaflow` folder tasks write their cards under)."""
    (path / ".metaflow").mkdir(parents=True, exist_ok=True)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """`fmnist-serve` (python -m serving.cli) as a real process on loopback; its log goes to a file."""

    def __init__(self, log_path: Path, *options: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "--port", str(self.port), "--device", "cpu", *options],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"service exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                response = httpx.get(f"{self.url}/ready", timeout=2)
                if response.status_code == 200:
                    return dict(response.json())
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"service not ready after {timeout}s:\n{self.log()[-3000:]}")

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=10)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Answer:
    """One request of the load: which client sent it, when it ended, its status and the run it named."""

    client: int
    ended: float  # time.monotonic()
    status: int | str  # HTTP status, or the transport error's name
    run: str | None
    probabilities: list[float] | None = None
    image: int = 0


@dataclass
class Load:
    """A few clients on loopback, each sending requests one after another until stopped (a bounded load)."""

    url: str
    uploads: list[bytes]
    clients: int = 4
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.clients)]

    def _client(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            sent = 0
            while not self._stop.is_set():
                image = (index + sent * self.clients) % len(self.uploads)
                sent += 1
                try:
                    response = client.post("/predict", files={"file": ("x.png", self.uploads[image], "image/png")})
                    body = response.json() if response.status_code == 200 else {}
                    answer = Answer(
                        index, time.monotonic(), response.status_code, body.get("run"), body.get("probabilities"), image
                    )
                except httpx.HTTPError as err:
                    answer = Answer(index, time.monotonic(), type(err).__name__, None, None, image)
                with self._lock:
                    self.answers.append(answer)

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Answer]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        return list(self.answers)

    def failures(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 200 or not a.run]

    @staticmethod
    def runs_in_order(answers: list[Answer], client: int) -> list[str]:
        """The runs one client's answers named, in the order it got them, repeats collapsed."""
        runs: list[str] = []
        for answer in answers:
            if answer.client == client and answer.run and (not runs or runs[-1] != answer.run):
                runs.append(answer.run)
        return runs
