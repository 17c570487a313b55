"""Load benchmark of the prediction service on loopback, against a bare FastAPI endpoint in the same run.

    python benchmarks/serve_load.py            # 16 clients; bounded by --requests and --duration per phase
    python benchmarks/serve_load.py --quick    # a few seconds per phase, as the test suite runs it

Starts the service (uvicorn serving.app:app, settings from FASHIONFLOW_* variables, model found as the service
finds it) and the baseline (benchmarks/bare_app.py) as subprocesses, then drives each with concurrent httpx
clients sending real Fashion-MNIST test images as PNG uploads. Phases, one at a time so they do not share CPU:
  bare     POST /predict on the bare endpoint (reads the upload, fixed answer)
  single   POST /predict on the service, one image per request
  batch    POST /predict/batch on the service, --batch-size images per request
Prints requests/s, p50/p99 latency and errors per phase, images/s for batches, and the targets: single-image
throughput at least 40% of the bare endpoint's, p99 at most 50 ms, zero errors. Exits 1 on any error (and, with
--strict, on a missed target).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fmnist.core.data import load_dataset  # noqa: E402

THROUGHPUT_TARGET = 0.40  # service single-image requests/s relative to the bare endpoint
P99_TARGET_MS = 50.0


@dataclass
class PhaseResult:
    """What one load phase measured."""

    name: str
    requests: int = 0
    errors: int = 0
    images: int = 0
    correct: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    error_samples: list[str] = field(default_factory=list)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def merge(self, other: PhaseResult) -> None:
        """Add another round of the same phase."""
        for name in ("requests", "errors", "images", "correct", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latencies_ms += other.latencies_ms
        self.error_samples = (self.error_samples + other.error_samples)[:5]

    def summary(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        return {
            **data,
            "requests_per_s": self.requests_per_s,
            "images_per_s": self.images_per_s,
            "p50_ms": self.percentile(50),
            "p99_ms": self.percentile(99),
        }


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_servers(processes: Iterable[subprocess.Popen]) -> None:
    """Terminate every server, then wait for each (killing one that does not stop within 10 s)."""
    processes = list(processes)
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def start_server(
    app: str, port: int, app_dir: Path, log_path: Path, env: dict[str, str], cwd: Path = REPO, workers: int = 1
) -> subprocess.Popen:
    """uvicorn `app` on loopback, no access log (logging every request would be measured too).

    One worker: uvicorn's own command line, so any checkout's service can be started. Several: through
    `serving.cli.run_uvicorn`, as `fmnist-serve --workers N` starts them (with TCP_NODELAY on every connection)."""
    if workers == 1:
        command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
        command += ["--app-dir", str(app_dir), "--log-level", "warning", "--no-access-log"]
    else:
        code = (
            f"import sys; sys.path[:0] = [{str(app_dir)!r}, {str(REPO)!r}]; from serving.cli import run_uvicorn; "
            f"run_uvicorn({app!r}, '127.0.0.1', {port}, {workers}, 'warning', access_log=False)"
        )
        command = [sys.executable, "-c", code]
    log = log_path.open("wb")
    return subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})


def wait_ready(process: subprocess.Popen, url: str, log_path: Path, timeout: float = 180.0, workers: int = 1) -> None:
    """Poll /ready until 200 from `workers` distinct worker processes (each answer names its `pid`; every poll is a
    new connection, which any worker may accept); fail with the server's log if it exits or takes too long. Measuring
    while one worker still loads would hand it no connections for the whole phase."""
    deadline = time.monotonic() + timeout
    ready: set[int] = set()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server for {url} exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            response = httpx.get(url + "/ready", timeout=2)
            if response.status_code == 200:
                ready.add(response.json().get("pid", 0))
                if len(ready) >= workers:
                    return
                continue
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"server for {url} not ready after {timeout:.0f}s:\n{log_path.read_text()[-3000:]}")


def load_traffic_images(count: int) -> tuple[list[bytes], np.ndarray]:
    """The first `count` real Fashion-MNIST test images as PNG bytes, with their labels: traffic, nothing chosen."""
    test_images, test_labels = load_dataset(download=False).test_split()
    encoded = []
    for pixels in test_images[:count]:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded, test_labels[:count].astype(int)


async def run_phase(
    name: str,
    url: str,
    path: str,
    images: list[bytes],
    labels: np.ndarray,
    batch_size: int,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    warmup: int,
) -> PhaseResult:
    """`concurrency` clients post uploads back to back until `max_requests` are sent or `max_seconds` pass."""
    result = PhaseResult(name)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0) as client:
        issued = 0

        def next_request() -> tuple[dict, list[int]]:
            nonlocal issued
            picks = [(issued * batch_size + j) % len(images) for j in range(batch_size)]
            issued += 1
            field_name = "files" if batch_size > 1 else "file"
            return {"files": [(field_name, (f"{i}.png", images[i], "image/png")) for i in picks]}, picks

        async def one(record: bool) -> None:
            request, picks = next_request()
            start = time.perf_counter()
            response: httpx.Response | Exception
            body: dict = {}
            try:
                response = await client.post(path, **request)
                elapsed = (time.perf_counter() - start) * 1000
                ok = response.status_code == 200
                body = response.json() if ok else {}
            except (httpx.HTTPError, ValueError) as err:
                elapsed, ok, response = (time.perf_counter() - start) * 1000, False, err
            if not record:
                return
            result.requests += 1
            result.latencies_ms.append(elapsed)
            if not ok:
                result.errors += 1
                if len(result.error_samples) < 5:
                    sample = response if isinstance(response, Exception) else f"{response.status_code} {response.text}"
                    result.error_samples.append(str(sample)[:300])
                return
            result.images += len(picks)
            predictions = body.get("predictions", [body])
            result.correct += sum(p.get("class_index") == labels[i] for p, i in zip(predictions, picks, strict=False))

        # Warm-up: connections opened, caches filled; not recorded.
        await asyncio.gather(*(one(False) for _ in range(warmup)))

        deadline = time.perf_counter() + max_seconds
        start = time.perf_counter()

        async def client_loop() -> None:
            while result.requests < max_requests and time.perf_counter() < deadline:
                await one(True)

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - start
    return result


def print_report(results: dict[str, PhaseResult], concurrency: int, batch_size: int) -> list[str]:
    """The table of figures and the target checks; returns the targets missed."""
    print(f"\nconcurrency {concurrency}, loopback, {os.cpu_count()} CPU core(s)")
    print(f"{'phase':<8} {'requests':>8} {'errors':>6} {'req/s':>8} {'images/s':>9} {'p50 ms':>7} {'p99 ms':>7}")
    for r in results.values():
        print(
            f"{r.name:<8} {r.requests:>8} {r.errors:>6} {r.requests_per_s:>8.1f} {r.images_per_s:>9.1f} "
            f"{r.percentile(50):>7.1f} {r.percentile(99):>7.1f}"
        )
    bare, single, batch = results["bare"], results["single"], results["batch"]
    ratio = single.requests_per_s / bare.requests_per_s if bare.requests_per_s else 0.0
    errors = sum(r.errors for r in results.values())
    print(
        f"batch of {batch_size}: {batch.images_per_s:.0f} images/s "
        f"({batch.images_per_s / single.requests_per_s if single.requests_per_s else 0:.1f}x single-image)"
    )
    if "batched" in results and single.requests_per_s:
        batched = results["batched"]
        print(
            f"server-side batching: {batched.requests_per_s / single.requests_per_s:.2f}x the single-image "
            f"throughput without it (p99 {batched.percentile(99):.1f} vs {single.percentile(99):.1f} ms)"
        )
    for r in (single, batch):
        if r.images:
            print(f"{r.name}: {r.correct / r.images:.1%} of predictions match the test labels")
    checks = {
        f"single-image throughput {ratio:.0%} of the bare endpoint's (target >= {THROUGHPUT_TARGET:.0%})": ratio
        >= THROUGHPUT_TARGET,
        f"single-image p99 {single.percentile(99):.1f} ms (target <= {P99_TARGET_MS:.0f} ms)": single.percentile(99)
        <= P99_TARGET_MS,
        f"errors: {errors} (target 0)": errors == 0,
    }
    for text, ok in checks.items():
        print(f"[{'met' if ok else 'MISSED'}] {text}")
    for r in results.values():
        for sample in r.error_samples:
            print(f"  {r.name} error: {sample}")
    return [text for text, ok in checks.items() if not ok]


def _plain(value: object) -> object:
    """JSON for NumPy scalars in the figures."""
    return value.item() if hasattr(value, "item") else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=16, help="Concurrent clients (default 16).")
    parser.add_argument("--requests", type=int, default=3000, help="Most requests per phase (default 3000).")
    parser.add_argument("--duration", type=float, default=20.0, help="Most seconds per phase (default 20).")
    parser.add_argument("--batch-size", type=int, default=32, help="Images per batch request (default 32).")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds the phases are split into.")
    parser.add_argument(
        "--compare-batching",
        action="store_true",
        help="Also measure the service with server-side batching on (FASHIONFLOW_BATCHING=true).",
    )
    parser.add_argument("--quick", action="store_true", help="300 requests / 5 s per phase, one round.")
    parser.add_argument("--run", help="Model run pathspec (sets FASHIONFLOW_RUN for the service).")
    parser.add_argument("--json", type=Path, help="Also write the figures to this JSON file.")
    parser.add_argument("--strict", action="store_true", help="Exit 1 when a target is missed, not only on errors.")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.duration, args.rounds = min(args.requests, 300), min(args.duration, 5.0), 1
    if args.run:
        os.environ["FASHIONFLOW_RUN"] = args.run
    os.environ.setdefault("USERNAME", os.environ.get("USER", "benchmark"))

    images, labels = load_traffic_images(512)
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    servers: dict[str, tuple[str, Path, dict[str, str]]] = {
        "service": ("serving.app:app", REPO, {}),
        "bare": ("bare_app:app", REPO / "benchmarks", {}),
    }
    phases = [
        ("bare", "bare", "/predict", 1),
        ("single", "service", "/predict", 1),
        ("batch", "service", "/predict/batch", args.batch_size),
    ]
    if args.compare_batching:
        # The same service with server-side batching switched on, measured in the same rounds.
        servers["batched"] = ("serving.app:app", REPO, {"FASHIONFLOW_BATCHING": "true"})
        phases.insert(2, ("batched", "batched", "/predict", 1))
    ports = {name: free_port() for name in servers}
    log_paths = {name: logs / f"serve_load_{name}_{os.getpid()}.log" for name in servers}
    processes = {
        name: start_server(app, ports[name], app_dir, log_paths[name], env)
        for name, (app, app_dir, env) in servers.items()
    }
    results: dict[str, PhaseResult] = {name: PhaseResult(name) for name, *_ in phases}
    try:
        for name, process in processes.items():
            wait_ready(process, f"http://127.0.0.1:{ports[name]}", log_paths[name])
        # Phases run one at a time and, over several rounds, interleaved: on a shared machine the background load
        # drifts, and interleaving spreads that drift evenly over the phases being compared.
        for _ in range(args.rounds):
            for name, server, path, batch in phases:
                requests = max(1, args.requests // batch) if batch > 1 else args.requests
                measured = asyncio.run(
                    run_phase(
                        name,
                        f"http://127.0.0.1:{ports[server]}",
                        path,
                        images,
                        labels,
                        batch,
                        concurrency=args.concurrency,
                        max_requests=max(1, requests // args.rounds),
                        max_seconds=args.duration / args.rounds,
                        warmup=2 * args.concurrency,
                    )
                )
                results[name].merge(measured)
    finally:
        stop_servers(processes.values())
    missed = print_report(results, args.concurrency, args.batch_size)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({n: r.summary() for n, r in results.items()}, indent=2, default=_plain))
    errors = sum(r.errors for r in results.values())
    return 1 if errors or (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
