"""Soak benchmark of the prediction service: mixed traffic, hostile uploads and slow clients for many minutes against
one worker, minute by minute: does memory creep, does latency drift, does anything answer 5xx but 503?

    python benchmarks/serve_soak.py                              # 20 minutes, newest successful default-profile run
    python benchmarks/serve_soak.py --run FashionFlow/123        # that run's model
    python benchmarks/serve_soak.py --minutes 5 --json soak.json
    python benchmarks/serve_soak.py --quick                      # 3 slices of 5 s (the test suite's run)

Needs `wrk` on PATH (Debian: `apt-get install wrk`). Starts the real service the way `fmnist-serve` does (one
worker, `serve_faults.start_service`) and drives it for the whole soak with:
  wrk               16 connections, one thread, in consecutive slices of one minute (`-d 60s`), so that each minute
                    has its own latency percentiles and status counts. Its Lua script rotates, per 10 requests:
                    4 Fashion-MNIST test images as 28x28 PNG scans to POST /predict, 3 real phone photographs
                    (JPEG, data/real_photos, validation split) to /predict, 1 batch of 8 scans to /predict/batch and
                    2 bad files (a PNG cut in half, a CSV named .png) that must be answered 4xx; it counts every
                    answer by status
  hostile clients   2 Python clients posting, back to back, every hostile upload of benchmarks/serve_faults.py
                    (huge-claiming PNG, GIF, TIFF, ICO, progressive and many-scan JPEG, WebP, batches, 6 MB of pixel
                    JSON), each starting at a different place in the list
  slow clients      20 keep-alive connections that send one request and sit idle (reconnecting when the server
                    closes them) and 5 that trickle a request body a byte every 100 ms (reconnecting when refused)
  /health probe     GET /health every 20 ms from a process of its own
The Python clients run on an event loop in a thread of their own; wrk and the probe are processes of their own.

Prints one row per minute: wrk's requests/s, p50 and p99 (ms), its answers by status (2xx, 4xx, 503, other 5xx)
and socket errors, /health p99 and failed probes, the worker's resident memory at the minute's end, the largest and
the smallest within the minute, and the statuses the hostile and the slow clients got that minute. Then each hostile
kind's statuses, how many of wrk's phone photos the full decode pool refused (503), and the targets, each [met] or
[MISSED] (minute 1 is the warm-up):
  memory     RSS at the end of the last minute at most 5% above that at the end of minute 1 (with, beside it, the
             last minute's low-water mark against minute 2's: the end-of-minute reading moves with the hostile
             decodes in flight)
  latency    the last minute's p99 at most 20% above that of minute 2 (the first after the warm-up)
  errors     no 5xx but 503 from wrk's traffic and the Python clients' together; /health answered every probe
Exits 1 when any answer was a 5xx other than 503 or a /health probe failed; a missed memory or latency target is a
figure to state, not a failure. `--quick`: 3 slices of 5 s, 5 idle and 2 trickling connections, the service's body
and header deadlines at 2 s (so that trickled bodies are refused within the run): checks the machinery only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from string import Template

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_faults import (
    HealthProbe,
    Hostile,
    MemorySampler,
    benchmark_setup,
    format_requests,
    hostile_client,
    hostile_requests,
    idle_client,
    percentile,
    process_tree,
    rss_mb,
    start_service,
    trickling_client,
)
from serve_load import REPO, free_port, load_traffic_images, stop_servers, wait_ready
from serve_wrk import MULTIPART_HEADERS, WrkResult, lua_script, multipart, run_wrk

from fmnist.core.real_photos import load_real_photos, sample_per_folder

CONNECTIONS = 16  # wrk's, as in serve_faults.py and serve_wrk.py
HOSTILE_CLIENTS = 2
IDLE_CONNECTIONS, TRICKLING_CONNECTIONS = 20, 5
QUICK_IDLE, QUICK_TRICKLING = 5, 2
BATCH_SIZE = 8
# wrk's rotation, one request body each: 4 scans, 3 phone photos, 1 batch, 2 bad files in every 10 requests.
ROTATION = ("scan", "photo", "scan", "batch", "photo", "truncated", "scan", "photo", "text", "scan")
ROTATIONS = 4  # distinct bodies: 4 x 10, each scan and photo a different image
BAD_KINDS = ("truncated", "text")
RSS_GROWTH_TARGET = 0.05  # after the warm-up minute
P99_DRIFT_TARGET = 0.20  # the last minute against the first after the warm-up

# Appended to serve_wrk.lua_script's (which prints the WRK_JSON line run_wrk reads): each request the next body of the
# rotation, each answer counted by status in its thread, and in done() every thread's counts (wrk's documented
# setup()/thread:get pattern) written as JSON to $counts. wrk calls init() once a thread's wrk.headers hold the Host.
ROTATING = Template("""
local rotation, prepared, sent = {$bodies}, {}, 0
counts = {}

init = function(args)
  for i, entry in ipairs(rotation) do
    local f = assert(io.open(entry[2], "rb"))
    prepared[i] = wrk.format("POST", entry[1], nil, f:read("*a"))
    f:close()
  end
end

request = function()
  sent = sent % #prepared + 1
  return prepared[sent]
end

response = function(status, headers, body)
  local key = tostring(status)
  counts[key] = (counts[key] or 0) + 1
end

local threads = {}
setup = function(thread)
  table.insert(threads, thread)
end

local print_figures = done
done = function(summary, latency, requests)
  local merged, parts = {}, {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("counts")) do
      merged[status] = (merged[status] or 0) + n
    end
  end
  for status, n in pairs(merged) do
    table.insert(parts, string.format('"%s": %d', status, n))
  end
  local out = assert(io.open("$counts", "w"))
  out:write("{" .. table.concat(parts, ", ") .. "}\\n")
  out:close()
  print_figures(summary, latency, requests)
end
""")


@dataclass
class Minute:
    """One slice of the soak: wrk's figures, the probe's, the worker's memory and the Python clients' statuses."""

    minute: int
    seconds: float
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]  # wrk's answers by status
    ok: int  # 2xx
    client_errors: int  # 4xx
    refused: int  # 503
    other_5xx: int  # wrk's 5xx but 503
    socket_errors: int
    health_p99_ms: float
    health_probes: int
    health_failures: int
    rss_end_mb: float
    rss_max_mb: float
    rss_min_mb: float  # the worker's low-water mark within the minute
    hostile: dict[str, int]  # the hostile clients' requests ended this minute, by status ("none": no answer)
    slow: dict[str, int]  # the same for the idle and trickling connections
    wrk_cpu: float
    server_cpu: float


@dataclass
class Soak:
    """What the whole soak measured, and the verdicts."""

    run: str
    minutes: int
    slice_seconds: float
    connections: int
    idle_connections: int
    trickling_connections: int
    bad_share: float  # of wrk's requests, the bad files
    rows: list[Minute] = field(default_factory=list)
    hostile_kinds: dict[str, dict[str, int]] = field(default_factory=dict)
    slow_counts: dict[str, int] = field(default_factory=dict)
    other_5xx: dict[str, int] = field(default_factory=dict)  # by source: wrk, hostile clients, slow clients
    health_failures: int = 0
    rss_growth: float = float("nan")  # the verdict's: RSS at the end of the last minute against minute 1's
    rss_floor_growth: float = float("nan")  # the low-water mark of the last minute against minute 2's
    p99_drift: float = float("nan")
    verdicts: dict[str, bool | None] = field(default_factory=dict)  # None: not measurable in this many minutes


def other_5xx(statuses: dict[str, int]) -> int:
    """Answers with a 5xx status other than 503 ("none", an unanswered request, is not one)."""
    return sum(n for s, n in statuses.items() if s.isdigit() and 500 <= int(s) < 600 and s != "503")


def statuses_text(statuses: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(statuses.items())) or "-"


# --- traffic ------------------------------------------------------------------------------------------------------


def wrk_script(work: Path) -> tuple[Path, Path]:
    """Write the rotation's request bodies and the Lua script under `work`; returns (script, the counts file)."""
    scans, _ = load_traffic_images(ROTATIONS * (ROTATION.count("scan") + BATCH_SIZE + ROTATION.count("truncated")))
    # The validation split's photos, 2 per upstream folder (hats and shorts too: traffic is whatever people send).
    photos = [p.data for p in sample_per_folder(load_real_photos("validation"), 2)]
    text = b"garment,size,price\nshirt,M,19.99\ntrousers,L,34.50\n"  # a spreadsheet export picked by mistake
    used = Counter[str]()
    rotation: list[tuple[str, Path]] = []
    for _ in range(ROTATIONS):
        for kind in ROTATION:
            n = used[kind]
            used[kind] += 1
            if kind == "batch":
                path, body = "/predict/batch", multipart("files", scans[-BATCH_SIZE * (n + 1) :][:BATCH_SIZE])
            elif kind == "photo":
                path, body = "/predict", multipart("file", [photos[n % len(photos)]])
            elif kind == "truncated":
                png = scans[ROTATIONS * ROTATION.count("scan") + n]
                path, body = "/predict", multipart("file", [png[: len(png) // 2]])
            elif kind == "text":
                path, body = "/predict", multipart("file", [text])
            else:
                path, body = "/predict", multipart("file", [scans[n]])
            file = work / f"{len(rotation):02d}-{kind}.body"
            file.write_bytes(body)
            rotation.append((path, file))
    counts = work / "statuses.json"
    bodies = ", ".join(f'{{"{path}", "{file}"}}' for path, file in rotation)
    script = work / "soak.lua"
    # lua_script's own body and done() are kept: wrk.body is never sent (request() rotates), done() is wrapped.
    script.write_text(lua_script(rotation[0][1], MULTIPART_HEADERS) + ROTATING.substitute(bodies=bodies, counts=counts))
    return script, counts


class MemoryRange(MemorySampler):
    """MemorySampler's largest resident memory of the server's tree, and also the worker's smallest (`min_mb`): its
    low-water mark, what stays between hostile decodes. The reading at a minute's end depends on the decodes in
    flight at that instant (hundreds of MB either way); a leak shows as a low-water mark that climbs."""

    def __init__(self, pid: int) -> None:
        super().__init__(pid)
        self.min_mb = float("inf")

    def run(self) -> None:
        while not self.stop.is_set():
            worker = rss_mb(self.pid)
            self.min_mb = min(self.min_mb, worker)
            self.max_mb = max([self.max_mb, worker] + [rss_mb(p) for p in process_tree(self.pid)[1:]])
            self.stop.wait(0.2)


class Clients(threading.Thread):
    """The Python clients beside wrk for the whole soak, on an event loop in this thread: HOSTILE_CLIENTS hostile
    clients (their requests' ends in `hostile`, by kind in `hostile.kinds`), idle and trickling connections (in
    `slow`, what the server did to them in `counts`)."""

    def __init__(self, port: int, requests: list, idle: int, trickling: int) -> None:
        super().__init__(daemon=True)
        self.port, self.requests, self.idle, self.trickling = port, requests, idle, trickling
        self.hostile, self.slow, self.counts = Hostile(), Hostile(), Counter[str]()
        self.started = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self.drive())
        except BaseException as err:  # shown by snapshot() and finish(): a client's bug must not pass unseen
            self.error = err
            self.started.set()

    async def drive(self) -> None:
        self.loop, self.stop = asyncio.get_running_loop(), asyncio.Event()
        self.started.set()
        spread = len(self.requests) // HOSTILE_CLIENTS
        clients = [
            hostile_client(self.port, self.requests, i * spread, self.stop, self.hostile)
            for i in range(HOSTILE_CLIENTS)
        ]
        clients += [idle_client(self.port, self.stop, self.slow, self.counts) for _ in range(self.idle)]
        clients += [trickling_client(self.port, self.stop, self.slow, self.counts) for _ in range(self.trickling)]
        await asyncio.gather(*clients)

    def snapshot(self) -> tuple[Counter, Counter]:
        """The statuses so far (hostile, slow), copied on the clients' own loop, never while they change."""
        if self.error is not None or not self.is_alive():
            raise SystemExit(f"the Python clients stopped: {self.error!r}")

        async def copy() -> tuple[Counter, Counter]:
            return Counter(self.hostile.statuses), Counter(self.slow.statuses)

        return asyncio.run_coroutine_threadsafe(copy(), self.loop).result(timeout=30)

    def finish(self) -> None:
        """Stop every client (a hostile one ends its request in flight first) and wait for them."""
        if self.is_alive():
            self.loop.call_soon_threadsafe(self.stop.set)
            self.join(timeout=60)
        if self.error is not None:
            raise SystemExit(f"the Python clients failed: {self.error!r}")


def measure_minute(
    minute: int,
    process: subprocess.Popen,
    port: int,
    script: Path,
    counts: Path,
    seconds: float,
    clients: Clients,
    before: tuple,
) -> tuple[Minute, tuple]:
    """One slice: wrk for `seconds` with the probe and the memory sampler beside it. `before` is the clients'
    snapshot at the slice's start; returns the row and the snapshot at its end."""
    probe, memory = HealthProbe(port), MemoryRange(process.pid)
    probe.start()
    memory.start()
    try:
        wrk: WrkResult = run_wrk(
            f"minute {minute}", f"http://127.0.0.1:{port}/predict", script, process.pid, 1, CONNECTIONS, seconds, 1
        )
    finally:
        probe.finish()
        memory.stop.set()
        memory.join()
    statuses = {k: int(v) for k, v in json.loads(counts.read_text()).items()}
    counts.unlink()
    after = clients.snapshot()
    hostile, slow = (dict(sorted((now - then).items())) for now, then in zip(after, before, strict=True))
    by_class = Counter[str]()
    for status, n in statuses.items():
        by_class[status[0] + "xx" if status != "503" else "503"] += n
    row = Minute(
        minute=minute,
        seconds=wrk.seconds,
        requests=wrk.requests,
        requests_per_s=wrk.requests_per_s,
        p50_ms=wrk.p50_ms,
        p99_ms=wrk.p99_ms,
        max_ms=wrk.max_ms,
        statuses=dict(sorted(statuses.items())),
        ok=by_class["2xx"],
        client_errors=by_class["4xx"],
        refused=by_class["503"],
        other_5xx=other_5xx(statuses),
        socket_errors=wrk.socket_errors,
        health_p99_ms=percentile(probe.latencies_ms, 99),
        health_probes=len(probe.latencies_ms) + probe.failures,
        health_failures=probe.failures,
        rss_end_mb=(end := rss_mb(process.pid)),
        rss_max_mb=max(memory.max_mb, end),  # the sampler's last reading may be up to 200 ms older
        rss_min_mb=min(memory.min_mb, end),
        hostile=hostile,
        slow=slow,
        wrk_cpu=wrk.wrk_cpu,
        server_cpu=wrk.server_cpu,
    )
    return row, after


# --- report -------------------------------------------------------------------------------------------------------

HEADER = (
    f"{'min':>3} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'2xx':>7} {'4xx':>6} {'503':>5} {'5xx':>4} {'sock':>4}"
    f" {'health p99':>10} {'fail':>4} {'RSS MB':>7} {'max MB':>7} {'min MB':>7}"
    "  hostile statuses | slow clients' statuses"
)


def row_text(r: Minute) -> str:
    return (
        f"{r.minute:>3} {r.requests_per_s:>7.1f} {r.p50_ms:>7.1f} {r.p99_ms:>7.1f} {r.ok:>7} {r.client_errors:>6}"
        f" {r.refused:>5} {r.other_5xx:>4} {r.socket_errors:>4} {r.health_p99_ms:>10.1f} {r.health_failures:>4}"
        f" {r.rss_end_mb:>7.1f} {r.rss_max_mb:>7.1f} {r.rss_min_mb:>7.1f}"
        f"  {statuses_text(r.hostile)} | {statuses_text(r.slow)}"
    )


def judge(soak: Soak) -> None:
    """The verdicts, printed and recorded in `soak`."""
    rows = soak.rows
    warm, first, last = rows[0], rows[min(1, len(rows) - 1)], rows[-1]
    soak.rss_growth = last.rss_end_mb / warm.rss_end_mb - 1 if warm.rss_end_mb else float("nan")
    met = soak.rss_growth <= RSS_GROWTH_TARGET
    soak.verdicts["rss"] = met
    print(
        f"[{'met' if met else 'MISSED'}] worker RSS {warm.rss_end_mb:.1f} MB at the end of the warm-up minute 1,"
        f" {last.rss_end_mb:.1f} MB at the end of minute {last.minute}: {soak.rss_growth:+.1%}"
        f" (target <= +{RSS_GROWTH_TARGET:.0%}; largest within any minute {max(r.rss_max_mb for r in rows):.1f} MB)"
    )
    # Minute 1's low-water mark is the service before any warm-up: the first minute after it is the reference.
    soak.rss_floor_growth = last.rss_min_mb / first.rss_min_mb - 1 if first.rss_min_mb else float("nan")
    print(
        f"      its low-water mark (smallest within the minute): {first.rss_min_mb:.1f} MB in minute {first.minute},"
        f" {last.rss_min_mb:.1f} MB in minute {last.minute}: {soak.rss_floor_growth:+.1%} (the end-of-minute"
        " reading moves with the hostile decodes in flight at that instant; a leak lifts the low-water mark)"
    )
    if len(rows) >= 3:
        soak.p99_drift = last.p99_ms / first.p99_ms - 1 if first.p99_ms else float("nan")
        met = soak.p99_drift <= P99_DRIFT_TARGET
        soak.verdicts["p99"] = met
        print(
            f"[{'met' if met else 'MISSED'}] wrk p99 {last.p99_ms:.1f} ms in minute {last.minute} against"
            f" {first.p99_ms:.1f} ms in minute {first.minute}, the first after the warm-up: {soak.p99_drift:+.1%}"
            f" (target <= +{P99_DRIFT_TARGET:.0%})"
        )
    else:
        soak.verdicts["p99"] = None
        print(f"[n/a] wrk p99 drift: one minute after the warm-up ({last.p99_ms:.1f} ms), nothing to compare it with")
    others = sum(soak.other_5xx.values())
    soak.verdicts["no_other_5xx"] = others == 0
    sources = ", ".join(f"{k} {v}" for k, v in soak.other_5xx.items())
    refused = sum(r.refused for r in rows)
    print(f"[{'met' if others == 0 else 'MISSED'}] no 5xx but 503: {others} ({sources}); wrk's 503s: {refused}")
    probes = sum(r.health_probes for r in rows)
    soak.verdicts["health"] = soak.health_failures == 0
    print(
        f"[{'met' if soak.health_failures == 0 else 'MISSED'}] /health answered every probe:"
        f" {soak.health_failures} of {probes} failed"
    )


def soak_service(args: argparse.Namespace, work: Path, script: Path, counts: Path, requests: list) -> Soak:
    """Start the service, drive it for `args.minutes` slices, stop it; the rows and totals."""
    idle, trickling = (QUICK_IDLE, QUICK_TRICKLING) if args.quick else (IDLE_CONNECTIONS, TRICKLING_CONNECTIONS)
    soak = Soak(
        args.run, args.minutes, args.slice_seconds, CONNECTIONS, idle, trickling, len(BAD_KINDS) / len(ROTATION)
    )
    env = {"FASHIONFLOW_RUN": args.run}
    if args.quick:  # deadlines short enough for a trickled body to be refused within a 5 s slice
        env |= {"FASHIONFLOW_BODY_TIMEOUT_SECONDS": "2", "FASHIONFLOW_HEADER_TIMEOUT_SECONDS": "2"}
    port, log = free_port(), work / "service.log"
    process = start_service(REPO, port, 1, env, log)
    clients = Clients(port, requests, idle, trickling)
    try:
        begun = time.perf_counter()
        wait_ready(process, f"http://127.0.0.1:{port}", log, 300.0)
        print(f"service ready after {time.perf_counter() - begun:.0f}s (pid {process.pid})\n", flush=True)
        clients.start()
        clients.started.wait(30)
        snapshot = clients.snapshot()
        print(HEADER, flush=True)
        for minute in range(1, args.minutes + 1):
            row, snapshot = measure_minute(minute, process, port, script, counts, args.slice_seconds, clients, snapshot)
            soak.rows.append(row)
            print(row_text(row), flush=True)
            if process.poll() is not None:
                raise SystemExit(f"the service exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        clients.finish()
    finally:
        if clients.is_alive():
            clients.loop.call_soon_threadsafe(clients.stop.set)
            clients.join(timeout=60)
        stop_servers([process])
    soak.hostile_kinds = {kind: dict(sorted(h.statuses.items())) for kind, h in clients.hostile.kinds.items()}
    soak.slow_counts = dict(sorted(clients.counts.items()))
    soak.other_5xx = {
        "wrk": sum(r.other_5xx for r in soak.rows),
        "hostile clients": other_5xx(clients.hostile.statuses),
        "slow clients": other_5xx(clients.slow.statuses),
    }
    soak.health_failures = sum(r.health_failures for r in soak.rows)
    return soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="Model run pathspec (default: the newest successful default-profile run).")
    parser.add_argument(
        "--minutes", type=int, default=20, help="Slices of one minute (default 20; at least 2: minute 1 warms up)."
    )
    parser.add_argument("--json", type=Path, help="Also write the rows and verdicts to this JSON file.")
    parser.add_argument(
        "--quick", action="store_true", help="3 slices of 5 s, fewer slow clients: checks the machinery (the tests)."
    )
    args = parser.parse_args(argv)
    if args.minutes < 2:
        parser.error("--minutes: at least 2 (the first is the warm-up)")
    args.minutes, args.slice_seconds = (3, 5.0) if args.quick else (args.minutes, 60.0)
    args.run = benchmark_setup(args.run)

    work = Path(tempfile.mkdtemp(prefix="serve_soak_"))
    script, counts = wrk_script(work)
    requests = hostile_requests() + format_requests()  # made before the service starts: seconds of encoding
    load = os.getloadavg()
    print(
        f"model {args.run}; {args.minutes} slices of {args.slice_seconds:g} s; wrk 1 thread, {CONNECTIONS} connections"
        f" rotating {len(ROTATION)} kinds of request ({', '.join(ROTATION)})"
    )
    print(f"{os.cpu_count()} CPU core(s); load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    soak = soak_service(args, work, script, counts, requests)
    print(f"\n{soak.idle_connections} idle and {soak.trickling_connections} trickling connections: ", end="")
    print(", ".join(f"{v} {k}" for k, v in soak.slow_counts.items()) or "nothing closed")
    print(f"{HOSTILE_CLIENTS} hostile clients, each kind's statuses over the soak:")
    for kind, statuses in soak.hostile_kinds.items():
        print(f"  {kind}: {statuses_text(statuses)}")
    sent = sum(r.requests for r in soak.rows)
    photos, refused = sent * ROTATION.count("photo") / len(ROTATION), sum(r.refused for r in soak.rows)
    # Of wrk's bodies only the photos (256 px) pass the thumbnail size and queue for the decode pool.
    print(f"wrk's phone photos (~{photos:.0f} of {sent} answers) refused 503 by the full decode pool: {refused}")
    print(
        "sock: wrk's socket errors (connect, read, write, timeout); 5xx: wrk's 5xx but 503; health: GET /health every"
        " 20 ms, fail: not 200 within 5 s; RSS MB: the worker's at the minute's end; max MB: the largest of the"
        " server's processes within the minute; min MB: the worker's smallest within it\n"
    )
    judge(soak)
    if args.json:
        args.json.write_text(json.dumps(asdict(soak), indent=2) + "\n")
    return 1 if sum(soak.other_5xx.values()) or soak.health_failures else 0


if __name__ == "__main__":
    sys.exit(main())
