"""Fault benchmark of the prediction service: what hostile uploads, slow clients, a killed worker and a stalled
datastore do to everyone else's traffic, against the same service unloaded by faults in the same run.

    python benchmarks/serve_faults.py                              # newest successful default-profile run
    python benchmarks/serve_faults.py --run FashionFlow/123        # that run's model
    python benchmarks/serve_faults.py --service-root /tmp/before   # also another checkout's service: two tables
    python benchmarks/serve_faults.py --quick                      # 3 s per scenario (the test suite's run)
    python benchmarks/serve_faults.py --only hostile               # the baseline and hostile uploads only

Needs `wrk` on PATH (Debian: `apt-get install wrk`). Starts the real service the way `fmnist-serve` does
(`serving.cli.run_uvicorn`, settings from FASHIONFLOW_* variables, no access log) and, in every scenario, drives
normal traffic with wrk (POST /predict, one real 28x28 Fashion-MNIST test image as PNG) while a probe thread asks
GET /health every 20 ms on a keep-alive connection and a sampler reads the workers' resident memory. Scenarios:
  baseline          no faults: the same run's reference for every other row
  hostile uploads   4 clients post, back to back, small files that decode to huge images: a 6000x6000 grey PNG, a
                    16-bit 6320x6320 PNG, a 200-frame GIF and TIFF, and batches of two 6000x6000 PNGs
  hostile formats   the same with what other formats cost (benchmarks/hostile_files.py): an ICO claiming 16x16 with
                    a 6000x6000 PNG inside, alone and 32 to a batch; a 6000x6000 progressive JPEG; a 4000x4000 JPEG
                    repeating a scan 400 times; a 6000x6000 WebP and TIFF; 6 MB of JSON pixel values. Each kind's
                    statuses and slowest answer are in the notes
  slow clients      500 keep-alive connections that each sent one request and then sit idle (reconnecting when the
                    server closes them) and 50 that post a body a byte every 100 ms (reconnecting when refused)
  slow, no traffic  the same without wrk: the target, /health p99 <= 50 ms
  worker killed     --workers 2; one worker SIGKILLed a third into the scenario: seconds until a new worker answers,
                    and wrk's errors against the connections the killed worker held
  datastore stalls  the service follows a tag (checking every second) in a copy of the datastore, where a metadata
                    file that every lookup of the tag reads becomes a FIFO nobody writes (a read that never returns):
                    /predict keeps its model; what /ready, /model and the metrics then say
Prints one table per service checkout (and notes per scenario); exits 1 when /health failed to answer in any scenario
of this checkout's service.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hostile_files
from serve_load import REPO, free_port, load_traffic_images, stop_servers, wait_ready
from serve_wrk import BOUNDARY, MULTIPART_HEADERS, WrkResult, lua_script, multipart, run_wrk

TAG = "serve-faults-benchmark"
HEALTH_EVERY_S = 0.02
IDLE_CONNECTIONS, TRICKLING_CONNECTIONS = 500, 50
TRICKLE_EVERY_S = 0.1  # one body byte per connection this often
HOSTILE_CLIENTS = 4
SLOW_P99_TARGET_MS = 50.0  # /health beside the slow clients alone, one worker
# What `--only` chooses from: hostile uploads, hostile formats, slow clients (with and without traffic), worker
# killed, datastore stalls.
SCENARIOS = ("hostile", "formats", "slow", "killed", "stalls")


@dataclass
class ScenarioResult:
    """What one scenario measured; the `hostile_*` figures are those of the faulty clients' own requests."""

    name: str
    health_p50_ms: float = float("nan")
    health_p99_ms: float = float("nan")
    health_max_ms: float = float("nan")
    health_probes: int = 0
    health_failures: int = 0  # probes not answered 200 within 5 s
    predict_p99_ms: float = float("nan")
    predict_rps: float = 0.0
    predict_errors: int = 0  # wrk's non-2xx answers and socket errors
    hostile_answered: int = 0  # 2xx
    hostile_refused: int = 0  # an HTTP error status (408, 413, 422, 503, ...)
    hostile_unanswered: int = 0  # connection dropped, or still waiting when the scenario ended
    hostile_max_ms: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    rss_max_mb: float = 0.0
    notes: list[str] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)  # what a scenario measures besides the table's columns


# --- the service --------------------------------------------------------------------------------------------------


def datastore_root() -> Path:
    """The directory holding the `.metaflow` the service reads: METAFLOW_DATASTORE_SYSROOT_LOCAL, else the repo."""
    return Path(os.environ.get("METAFLOW_DATASTORE_SYSROOT_LOCAL") or REPO)


def newest_default_run() -> str:
    """The newest successful FashionFlow run of the default profile in the local datastore."""
    from metaflow import Flow, metadata, namespace

    metadata(f"local@{datastore_root()}")
    namespace(None)
    for run in Flow("FashionFlow").runs():  # newest first
        config = getattr(run.data, "config", None) if run.successful else None  # the profile, as a mapping
        if config is not None and config.get("name") == "default":
            return run.pathspec
    raise SystemExit(f"no successful default-profile FashionFlow run in {datastore_root()}/.metaflow: `make run`")


def benchmark_setup(run: str | None) -> str:
    """What a wrk benchmark of the service needs before it starts: wrk on PATH, a Metaflow user name, the datastore
    the service reads; the run's pathspec (`run`, a bare id, or the newest default-profile run)."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on PATH (Debian: apt-get install wrk)")
    os.environ.setdefault("USERNAME", os.environ.get("USER", "benchmark"))
    run = run or newest_default_run()
    if "/" not in run:
        run = f"FashionFlow/{run}"
    os.environ.setdefault("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(datastore_root()))
    return run


def start_service(root: Path, port: int, workers: int, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """The service of checkout `root` as `fmnist-serve` starts it (`serving.cli.run_uvicorn`), its code imported from
    `root` (the same interpreter and packages)."""
    code = (
        f"import sys; sys.path.insert(0, {str(root)!r}); from serving.cli import run_uvicorn; "
        f"run_uvicorn('serving.app:app', '127.0.0.1', {port}, {workers}, 'warning', access_log=False)"
    )
    env = {**os.environ, "PYTHONPATH": str(root), "FASHIONFLOW_DEVICE": "cpu", **env}
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=root, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, env=env
    )


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                parents.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(current := todo.pop())
        todo += parents.get(current, [])
    return tree


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def worker_pids(pid: int) -> list[int]:
    """The uvicorn worker processes under the supervisor `pid` (multiprocessing children started by `spawn_main`,
    not its resource tracker)."""
    workers = []
    for child in process_tree(pid)[1:]:
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
    return workers


def held_connections(pid: int, port: int) -> int:
    """Established TCP connections on `port` whose socket process `pid` holds: at most one request in flight each."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01" and fields[9] in inodes:
                    count += 1
    return count


# --- measuring ----------------------------------------------------------------------------------------------------


# GET /health every `every` seconds on one keep-alive connection (a new one after any failure) until stdin closes;
# then one JSON line: latencies in ms and failures. A process of its own, started without this module's imports, so
# that the faulty clients of this process never hold its interpreter lock while it measures.
PROBE = """
import http.client, json, select, sys, time
port, every = int(sys.argv[1]), float(sys.argv[2])
connection, latencies, failures = None, [], 0
while not select.select([sys.stdin], [], [], every)[0]:
    start = time.perf_counter()
    try:
        connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/health")
        response = connection.getresponse()
        response.read()
        ok = response.status == 200
    except (OSError, http.client.HTTPException):
        ok, connection = False, None
    if ok:
        latencies.append((time.perf_counter() - start) * 1000)
    else:
        failures += 1
print(json.dumps([latencies, failures]))
"""


class HealthProbe:
    """The /health probe (PROBE) in a process of its own."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.latencies_ms: list[float] = []
        self.failures = 0

    def start(self) -> None:
        command = [sys.executable, "-c", PROBE, str(self.port), str(HEALTH_EVERY_S)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def finish(self) -> None:
        output, _ = self.process.communicate(b"", timeout=30)  # stdin closed: the probe stops and reports
        self.latencies_ms, self.failures = json.loads(output)


class MemorySampler(threading.Thread):
    """The largest resident memory of any process of the server's tree (its workers), every 200 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.stop, self.max_mb = pid, threading.Event(), 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            self.max_mb = max([self.max_mb] + [rss_mb(p) for p in process_tree(self.pid)])
            self.stop.wait(0.2)


@dataclass
class Hostile:
    """The faulty clients' requests: how each ended and how long it took."""

    statuses: Counter = field(default_factory=Counter)
    answered: int = 0
    refused: int = 0
    unanswered: int = 0
    max_ms: float = 0.0
    kinds: dict[str, Hostile] = field(default_factory=dict)  # the same, for each kind of request

    def record(self, status: int | None, seconds: float, kind: str | None = None) -> None:
        if kind is not None:
            self.kinds.setdefault(kind, Hostile()).record(status, seconds)
        self.statuses["none" if status is None else str(status)] += 1
        if status is None:
            self.unanswered += 1
        elif status < 400:
            self.answered += 1
        else:
            self.refused += 1
        self.max_ms = max(self.max_ms, seconds * 1000)


def hostile_requests() -> list[tuple[str, str, list[tuple[str, bytes, str]]]]:
    """(name, path, [(field, bytes, mime)]) of the hostile uploads, each a small file claiming a huge image."""
    grey = hostile_files.grey_png()
    return [
        ("grey PNG 6000^2", "/predict", [("file", grey, "image/png")]),
        ("16-bit PNG 6320^2", "/predict", [("file", hostile_files.deep_png(), "image/png")]),
        ("GIF 200 frames", "/predict", [("file", hostile_files.many_frames("GIF"), "image/gif")]),
        ("TIFF 200 frames", "/predict", [("file", hostile_files.many_frames("TIFF"), "image/tiff")]),
        ("batch of 2 x 6000^2", "/predict/batch", [("files", grey, "image/png")] * 2),
    ]


def format_requests() -> list[tuple[str, str, list[tuple[str, bytes, str]]]]:
    """(name, path, [(field, bytes, mime)]) of the hostile formats and bodies: what an opener decodes before any
    check (ICO), what costs far more than its reduced size (progressive JPEG, a JPEG of repeated scans), formats
    decoded in full (WebP, TIFF), a batch of small files each claiming little, and a large body of pixel values.
    A part named "json" is sent as the request's JSON body."""
    ico = hostile_files.ico_claiming_16x16()
    return [
        ("ICO claiming 16x16, 6000^2 inside", "/predict", [("file", ico, "image/x-icon")]),
        ("batch of 32 such ICOs", "/predict/batch", [("files", ico, "image/x-icon")] * 32),
        ("progressive JPEG 6000^2", "/predict", [("file", hostile_files.progressive_jpeg(), "image/jpeg")]),
        ("JPEG of 400 scans 4000^2", "/predict", [("file", hostile_files.repeated_scan_jpeg(4000, 400), "image/jpeg")]),
        ("WebP 6000^2", "/predict", [("file", hostile_files.flat_webp(), "image/webp")]),
        ("TIFF 6000^2", "/predict", [("file", hostile_files.flat_tiff(), "image/tiff")]),
        ("6 MB of pixel JSON", "/predict/pixels", [("json", hostile_files.pixel_json(), "application/json")]),
    ]


async def hostile_client(port: int, requests: list, offset: int, stop: asyncio.Event, out: Hostile) -> None:
    """Post the hostile uploads back to back, starting at `offset` in the list, until `stop`; each request's end is
    recorded in `out` and under its name in `out.kinds`."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        i = offset
        while not stop.is_set():
            kind, path, parts = requests[i % len(requests)]
            start = time.perf_counter()
            try:
                if parts[0][0] == "json":
                    headers = {"content-type": parts[0][2]}
                    response = await client.post(path, content=parts[0][1], headers=headers)
                else:
                    files = [(name, (f"h{j}", data, mime)) for j, (name, data, mime) in enumerate(parts)]
                    response = await client.post(path, files=files)
                status: int | None = response.status_code
            except httpx.HTTPError:
                status = None
            out.record(status, time.perf_counter() - start, kind)
            i += 1


async def read_status(reader: asyncio.StreamReader) -> int | None:
    """The status of the response on `reader`, its body skipped; None if the connection ended first."""
    try:
        line = await reader.readline()
        head = await reader.readuntil(b"\r\n\r\n")
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0)
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        await reader.readexactly(length)
    parts = line.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


async def idle_client(port: int, stop: asyncio.Event, out: Hostile, counts: Counter) -> None:
    """One request, then idle on the kept-alive connection until the server closes it; again until `stop`."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            counts["connect failed"] += 1
            await asyncio.sleep(0.5)
            continue
        start = time.perf_counter()
        writer.write(b"GET /health HTTP/1.1\r\nHost: faults\r\n\r\n")
        try:
            status = await asyncio.wait_for(read_status(reader), 10)
        except TimeoutError:
            status = None
        out.record(status, time.perf_counter() - start)
        eof = asyncio.ensure_future(reader.read())  # the server closing the idle connection
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([eof, stopped], return_when=asyncio.FIRST_COMPLETED)
        if eof.done():
            counts["idle connections closed by the server"] += 1
        for task in (eof, stopped):
            task.cancel()
        writer.close()


async def trickling_client(port: int, stop: asyncio.Event, out: Hostile, counts: Counter) -> None:
    """POST /predict announcing a 100 kB body, then send it a byte every TRICKLE_EVERY_S; again when answered."""
    head = (
        "POST /predict HTTP/1.1\r\nHost: faults\r\nContent-Length: 100000\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
    ).encode()
    body = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="slow.png"\r\n\r\n'.encode()
    body += b"\x89PNG" * 25_000
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head)
        except OSError:
            counts["connect failed"] += 1
            await asyncio.sleep(0.5)
            continue
        start = time.perf_counter()
        answer = asyncio.ensure_future(read_status(reader))
        sent = 0
        while not stop.is_set() and not answer.done() and sent < len(body):
            try:
                writer.write(body[sent : sent + 1])
                await writer.drain()
            except OSError:
                break
            sent += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(answer), TRICKLE_EVERY_S)
        if not answer.done() and not stop.is_set():  # the body sent in full, or the connection broken
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(answer), 5)
        if answer.done():
            out.record(answer.result(), time.perf_counter() - start)
            if answer.result() is not None:
                counts[f"trickled bodies answered {answer.result()}"] += 1
        else:
            answer.cancel()
            out.record(None, time.perf_counter() - start)
            counts["trickled bodies still unanswered at the end"] += 1
        writer.close()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# --- scenarios ----------------------------------------------------------------------------------------------------


@dataclass
class Service:
    """One running service and what the scenarios need to know of it."""

    process: subprocess.Popen
    port: int
    log: Path
    workers: int


async def scenario(
    name: str,
    service: Service,
    script: Path,
    args: argparse.Namespace,
    faults,
    seconds: float | None = None,
    traffic: bool = True,
) -> ScenarioResult:
    """wrk's traffic (unless not `traffic`) and the /health probe for `seconds` while `faults(stop, result)` (a
    coroutine function, or None) runs beside them."""
    result = ScenarioResult(name)
    probe, memory = HealthProbe(service.port), MemorySampler(service.process.pid)
    probe.start()
    memory.start()
    stop = asyncio.Event()
    duration = seconds or args.duration
    url = f"http://127.0.0.1:{service.port}/predict"
    load = asyncio.create_task(
        asyncio.to_thread(run_wrk, name, url, script, service.process.pid, args.threads, args.connections, duration, 1)
        if traffic
        else asyncio.sleep(duration)
    )
    fault = asyncio.create_task(faults(stop, result)) if faults else None
    wrk: WrkResult | None = await load
    stop.set()
    if fault is not None:
        await fault
    probe.finish()
    memory.stop.set()
    memory.join()
    result.health_p50_ms, result.health_p99_ms = percentile(probe.latencies_ms, 50), percentile(probe.latencies_ms, 99)
    result.health_max_ms = max(probe.latencies_ms, default=float("nan"))
    result.health_probes, result.health_failures = len(probe.latencies_ms) + probe.failures, probe.failures
    if wrk is not None:
        result.predict_p99_ms, result.predict_rps, result.predict_errors = wrk.p99_ms, wrk.requests_per_s, wrk.errors
    result.rss_max_mb = memory.max_mb
    return result


def collect(result: ScenarioResult, hostile: Hostile) -> None:
    result.hostile_answered, result.hostile_refused = hostile.answered, hostile.refused
    result.hostile_unanswered, result.hostile_max_ms = hostile.unanswered, hostile.max_ms
    result.statuses = dict(sorted(hostile.statuses.items()))
    for kind, each in hostile.kinds.items():
        statuses = " ".join(f"{k}:{v}" for k, v in sorted(each.statuses.items()))
        result.notes.append(f"{kind}: {statuses}, slowest {each.max_ms:.0f} ms")
        result.figures[f"{kind} slowest ms"] = round(each.max_ms, 1)


async def hostile_uploads(
    service: Service, script: Path, args: argparse.Namespace, requests: list, name: str = "hostile uploads"
) -> ScenarioResult:
    hostile = Hostile()

    async def faults(stop: asyncio.Event, result: ScenarioResult) -> None:
        clients = [hostile_client(service.port, requests, i, stop, hostile) for i in range(HOSTILE_CLIENTS)]
        await asyncio.gather(*clients)

    result = await scenario(name, service, script, args, faults)
    collect(result, hostile)
    return result


async def slow_clients(
    service: Service, script: Path, args: argparse.Namespace, body_timeout: float, traffic: bool = True
) -> ScenarioResult:
    hostile, counts = Hostile(), Counter[str]()

    async def faults(stop: asyncio.Event, result: ScenarioResult) -> None:
        clients = [
            asyncio.create_task(trickling_client(service.port, stop, hostile, counts))
            for _ in range(TRICKLING_CONNECTIONS)
        ]
        for i in range(IDLE_CONNECTIONS):
            clients.append(asyncio.create_task(idle_client(service.port, stop, hostile, counts)))
            if i % 50 == 49:
                await asyncio.sleep(0.05)  # opened over half a second, not in one burst the backlog must absorb
        await asyncio.gather(*clients)
        result.notes.append(", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no connection was closed")
        result.figures |= counts

    # Long enough for a trickled body to reach its deadline (the service's setting) within the scenario.
    name, seconds = "slow clients" if traffic else "slow, no traffic", max(args.duration, body_timeout + 3)
    result = await scenario(name, service, script, args, faults, seconds, traffic)
    collect(result, hostile)
    return result


async def worker_killed(service: Service, script: Path, args: argparse.Namespace) -> ScenarioResult:
    async def faults(stop: asyncio.Event, result: ScenarioResult) -> None:
        workers = worker_pids(service.process.pid)
        await asyncio.sleep(args.duration / 3)
        # The worker holding more of wrk's connections (the kernel hands them out unevenly): errors can show.
        victim = max(workers, key=lambda pid: held_connections(pid, service.port))
        in_flight = held_connections(victim, service.port)
        os.kill(victim, signal.SIGKILL)
        killed = time.perf_counter()
        replacement = None
        async with httpx.AsyncClient(timeout=2, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            while time.perf_counter() - killed < 120:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    answer = await client.get(f"http://127.0.0.1:{service.port}/ready")
                    pid = answer.json().get("pid") if answer.status_code == 200 else None
                    if pid is not None and pid not in workers:
                        replacement = time.perf_counter() - killed
                        break
                await asyncio.sleep(0.05)
        found = f"a new worker answered /ready {replacement:.1f}s later" if replacement else "NO new worker in 120 s"
        result.figures |= {"killed_worker_connections": in_flight, "replacement_seconds": replacement or float("nan")}
        held = f"{in_flight} connection(s) (wrk's and the probe's)"
        result.notes.append(f"worker {victim} SIGKILLed holding {held}: {found}")

    # wrk runs long enough to cover the replacement's start (model load and warm-up) and some traffic after it.
    result = await scenario("worker killed", service, script, args, faults, args.duration * 2)
    result.notes.append(
        f"errors: {result.predict_errors} of wrk's requests (non-2xx or socket errors) and {result.health_failures}"
        " /health probe(s), against the connections the killed worker held"
    )
    return result


def stall(path: Path) -> bytes:
    """Replace the file at `path` by a FIFO nobody writes: a read of it blocks until `unstall`. Returns the content."""
    content = path.read_bytes()
    fifo = path.with_name(path.name + ".fifo")
    os.mkfifo(fifo)
    os.replace(fifo, path)
    return content


def unstall(path: Path, content: bytes) -> None:
    """Answer every read blocked on the FIFO (the thread given up on ends), then put the file back."""
    with contextlib.suppress(OSError):
        descriptor = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # fails (ENXIO) when nobody is reading
        with contextlib.suppress(OSError):
            os.write(descriptor, content)
        os.close(descriptor)
    if stat.S_ISFIFO(path.stat().st_mode):
        temporary = path.with_name(path.name + ".restored")
        temporary.write_bytes(content)
        os.replace(temporary, path)


async def datastore_stalls(
    service: Service, script: Path, args: argparse.Namespace, metadata_file: Path, served: str
) -> ScenarioResult:
    async def faults(stop: asyncio.Event, result: ScenarioResult) -> None:
        await asyncio.sleep(0.5)
        content = stall(metadata_file)
        stalled = time.perf_counter()
        seen, predict_runs = None, set()
        base = f"http://127.0.0.1:{service.port}"
        try:
            async with httpx.AsyncClient(base_url=base, timeout=5) as client:
                while not stop.is_set():
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        ready = (await client.get("/ready")).json()
                        if seen is None and ready.get("following_problem"):
                            seen = time.perf_counter() - stalled
                            result.figures["problem_shown_seconds"] = seen
                            model = (await client.get("/model")).json()
                            metrics = (await client.get("/metrics")).text
                            stale = next(
                                (x for x in metrics.splitlines() if x.startswith("fashionflow_model_stale")), ""
                            )
                            result.notes.append(
                                f"datastore stalled; {seen:.1f}s later /ready: {ready['following_problem']!r};"
                                f" /model following_problem {'set' if model.get('following_problem') else 'MISSING'};"
                                f" metrics {stale!r}"
                            )
                        predict_runs.add(ready.get("run"))
                    await asyncio.sleep(0.2)
        finally:
            unstall(metadata_file, content)
        if seen is None:
            result.notes.append("datastore stalled: /ready never showed a following_problem")
        result.notes.append(f"/ready named run(s) {sorted(map(str, predict_runs))} (served: {served})")

    return await scenario(
        "datastore stalls", service, script, args, faults, max(args.duration, 3 * args.reload_timeout)
    )


def datastore_copy(work: Path, run: str) -> Path:
    """A datastore holding only `run` (metadata copied, artifacts hard-linked or copied), the run tagged TAG: the
    service follows the tag there, and the stall is made there, never in the real datastore. Returns the metadata
    file to stall."""
    from metaflow import Run, metadata, namespace

    source = datastore_root() / ".metaflow" / run.split("/")[0]
    target = work / "datastore" / ".metaflow" / source.name
    target.mkdir(parents=True)
    shutil.copytree(source / "_meta", target / "_meta")
    shutil.copytree(source / run.split("/")[1], target / run.split("/")[1])

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source / "data", target / "data", copy_function=link)
    metadata(f"local@{work / 'datastore'}")
    namespace(None)
    Run(run).add_tag(TAG)
    # Read by every lookup of the tag (is the run successful?), opened without a check that it is a regular file.
    return next((target / run.split("/")[1] / "end").glob("*/_meta/sysmeta_attempt-done_*.json"))


# --- one service checkout -----------------------------------------------------------------------------------------


async def measure(
    root: Path, args: argparse.Namespace, work: Path, script: Path, requests: dict[str, list]
) -> list[ScenarioResult]:
    """The scenarios chosen (`--only`; every one by default) and the baseline against the service of checkout
    `root`."""
    label = root.name
    chosen = set(args.only or SCENARIOS)
    env = {"FASHIONFLOW_RUN": args.run}
    if args.quick:  # the deadlines short enough to be reached in a 3 s scenario
        env |= {"FASHIONFLOW_BODY_TIMEOUT_SECONDS": "2", "FASHIONFLOW_HEADER_TIMEOUT_SECONDS": "2"}
    store = work / f"{label}-store"
    store.mkdir()
    metadata_file = datastore_copy(store, args.run) if "stalls" in chosen else Path()
    following = {
        **{k: v for k, v in env.items() if k != "FASHIONFLOW_RUN"},
        "FASHIONFLOW_TAG": TAG,
        "FASHIONFLOW_RELOAD_SECONDS": "1",
        "FASHIONFLOW_RELOAD_TIMEOUT_SECONDS": f"{args.reload_timeout:g}",
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(store / "datastore"),
        "FASHIONFLOW_METADATA": f"local@{store / 'datastore'}",
    }
    plans = {"one": (1, env), "two": (2, env), "following": (1, following)}
    needed = {"one"} | ({"two"} if "killed" in chosen else set()) | ({"following"} if "stalls" in chosen else set())
    services: dict[str, Service] = {}
    begun = time.perf_counter()
    try:
        for key, (workers, variables) in plans.items():
            if key not in needed:
                continue
            port, log = free_port(), work / f"{label}-{key}.log"
            services[key] = Service(start_service(root, port, workers, variables, log), port, log, workers)
        for s in services.values():
            await asyncio.to_thread(wait_ready, s.process, f"http://127.0.0.1:{s.port}", s.log, 300.0, s.workers)
        body_timeout = float(env.get("FASHIONFLOW_BODY_TIMEOUT_SECONDS", 30.0))
        print(f"{label}: services ready after {time.perf_counter() - begun:.0f}s", flush=True)
        results = [await scenario("baseline", services["one"], script, args, None)]
        if "hostile" in chosen:
            results.append(await hostile_uploads(services["one"], script, args, requests["hostile"]))
        if "formats" in chosen:
            formats = await hostile_uploads(services["one"], script, args, requests["formats"], "hostile formats")
            results.append(formats)
        if "slow" in chosen:
            results.append(await slow_clients(services["one"], script, args, body_timeout))
            results.append(await slow_clients(services["one"], script, args, body_timeout, traffic=False))
        if "killed" in chosen:
            results.append(await worker_killed(services["two"], script, args))
        if "stalls" in chosen:
            results.append(await datastore_stalls(services["following"], script, args, metadata_file, args.run))
    finally:
        stop_servers(s.process for s in services.values())
    return results


def print_table(title: str, results: list[ScenarioResult]) -> None:
    base = results[0]
    print(f"\n{title}")
    print(
        f"{'scenario':<17} {'health p50':>10} {'p99 ms':>7} {'fail':>4} {'predict p99':>11} {'req/s':>6} {'vs base':>7}"
        f" {'hostile ok/refused/none':>23} {'max ms':>7} {'RSS MB':>6}  statuses"
    )
    for r in results:
        ratio = r.predict_rps / base.predict_rps if base.predict_rps and r.predict_rps else float("nan")
        hostile = f"{r.hostile_answered}/{r.hostile_refused}/{r.hostile_unanswered}"
        statuses = " ".join(f"{k}:{v}" for k, v in r.statuses.items()) or "-"
        predict = (
            f"{r.predict_p99_ms:>11.1f} {r.predict_rps:>6.0f} {ratio:>7.0%}"
            if r.predict_rps
            else f"{'-':>11} {'-':>6} {'-':>7}"
        )
        print(
            f"{r.name:<17} {r.health_p50_ms:>10.1f} {r.health_p99_ms:>7.1f} {r.health_failures:>4}"
            f" {predict} {hostile:>23} {r.hostile_max_ms:>7.0f} {r.rss_max_mb:>6.0f}  {statuses}"
        )
    for r in results:
        for note in r.notes:
            print(f"  {r.name}: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="Model run pathspec (default: the newest successful default-profile run).")
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds of wrk traffic per scenario (10).")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1).")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16).")
    parser.add_argument(
        "--reload-timeout", type=float, default=3.0, help="The following service's reload timeout, seconds (3)."
    )
    parser.add_argument(
        "--service-root",
        type=Path,
        action="append",
        default=[],
        help="Another checkout (e.g. `git worktree add /tmp/before 20faf65`) measured the same way: a table each.",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        help="Run only this scenario (repeatable), besides the baseline: " + ", ".join(SCENARIOS) + " (default: all).",
    )
    parser.add_argument("--json", type=Path, help="Also write the figures to this JSON file.")
    parser.add_argument("--quick", action="store_true", help="3 s per scenario: checks the machinery (the test suite).")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.reload_timeout = 3.0, 1.0
    args.run = benchmark_setup(args.run)

    work = Path(tempfile.mkdtemp(prefix="serve_faults_"))
    images, _ = load_traffic_images(1)
    (work / "single.body").write_bytes(multipart("file", images[:1]))
    script = work / "single.lua"
    script.write_text(lua_script(work / "single.body", MULTIPART_HEADERS))
    requests = {"hostile": hostile_requests(), "formats": format_requests()}
    load = os.getloadavg()
    print(f"model {args.run}; wrk {args.threads} thread(s), {args.connections} connections, {args.duration:g} s")
    print(f"{os.cpu_count()} CPU core(s); load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    failed = 0
    report = {}
    for root in [REPO, *[r.resolve() for r in args.service_root]]:
        results = asyncio.run(measure(root, args, work, script, requests))
        title = f"service of {root} ({'this checkout' if root == REPO else 'another checkout'})"
        print_table(title, results)
        report[str(root)] = [asdict(r) for r in results]
        if root == REPO:  # a killed worker's connections fail with it: that scenario's failures are in its notes
            failed = sum(r.health_failures for r in results if r.name != "worker killed")
            slow = next((r for r in results if r.name == "slow, no traffic"), None)
    print("\nhealth: GET /health every 20 ms on one keep-alive connection; fail: not 200 within 5 s")
    print("hostile ok/refused/none: the faulty clients' requests answered 2xx / with an error status / not at all")
    if slow is not None:
        met = slow.health_p99_ms <= SLOW_P99_TARGET_MS
        print(
            f"[{'met' if met else 'MISSED'}] /health p99 <= {SLOW_P99_TARGET_MS:g} ms with {IDLE_CONNECTIONS} idle and"
            f" {TRICKLING_CONNECTIONS} trickling connections, no other traffic: {slow.health_p99_ms:.1f} ms"
        )
    verdict = "met" if failed == 0 else "MISSED"
    print(f"[{verdict}] /health answered in every scenario of this checkout but worker killed ({failed} failed)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
