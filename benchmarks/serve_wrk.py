"""Load benchmark of the prediction service with wrk, a native load generator, against the bare endpoint in the
same run.

    python benchmarks/serve_wrk.py --run FashionFlow/123            # 2 threads, 16 connections, 10 s per phase
    python benchmarks/serve_wrk.py --compare-tree /tmp/before       # also the service of another checkout
    python benchmarks/serve_wrk.py --workers 2                      # both servers with 2 uvicorn workers
    python benchmarks/serve_wrk.py --compare-batching               # also the service with FASHIONFLOW_BATCHING=true
    python benchmarks/serve_wrk.py --protocols                      # also /predict/pixels and the /v2 infer route
    python benchmarks/serve_wrk.py --real-photos 64                 # also real phone photos, one request at a time
    python benchmarks/serve_wrk.py --quick                          # 2 s per phase (the test suite's run)

Needs `wrk` on PATH (Debian: `apt-get install wrk`). Starts benchmarks/bare_app.py and the service (uvicorn
serving.app:app; --workers each, default 1; settings from FASHIONFLOW_* variables) and runs wrk against each in turn
with a Lua script posting a multipart upload of one real 28x28 Fashion-MNIST test image as PNG:
  bare     POST /predict on the bare endpoint (reads the upload, fixed answer)
  single   POST /predict on the service
  batch    POST /predict/batch on the service, --batch-size images per request
with --real-photos N, real phone photos (the real photographs' validation split, `data/real_photos/`), each request
the next of N in turn:
  photo    POST /predict on the service (and photo-before with --compare-tree)
and with --protocols, one image's pixels (or --batch-size PNGs) through the service's own JSON route and through the
Open Inference Protocol's infer route, in JSON and in binary tensors (tritonclient's default):
  pixels            POST /predict/pixels, JSON
  infer-pixels      POST /v2/models/fashionflow/infer, a UINT8 [1, 28, 28] tensor in JSON
  infer-pixels-bin  the same in the binary tensor extension
  infer-images      the same route, a BYTES tensor of --batch-size PNGs, binary (against `batch`)
Prints requests/s, p50/p99 latency, errors (non-2xx answers and socket errors), the share of one core that wrk itself
and the server used, the service/bare ratio and, with --compare-batching, what server-side batching changed. wrk's own
CPU share shows whether the load generator was the limit.
Exits 1 on any error.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fmnist.core.real_photos import LABELS, load_real_photos, sample_per_folder
from serving.open_inference import HEADER_LENGTH

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_load import (
    P99_TARGET_MS,
    REPO,
    THROUGHPUT_TARGET,
    free_port,
    load_traffic_images,
    start_server,
    stop_servers,
    wait_ready,
)

BOUNDARY = "fashionflowwrkboundary"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

LUA = """
local f = assert(io.open("{body}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
{headers}

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_JSON {{\\"requests\\": %d, \\"duration_us\\": %d, \\"connect\\": %d, \\"read\\": %d, \\"write\\": %d, "
    .. "\\"status\\": %d, \\"timeout\\": %d, \\"p50_us\\": %d, \\"p99_us\\": %d, \\"max_us\\": %d}}\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass
class WrkResult:
    """What one wrk phase measured."""

    name: str
    requests: int
    seconds: float
    images_per_request: int
    socket_errors: int
    non_2xx: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    wrk_cpu: float  # CPU seconds of wrk / wall seconds: 1.0 is one full core
    server_cpu: float  # the same for the server process during the phase

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return self.socket_errors + self.non_2xx


MULTIPART_HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


LUA_ROTATE = """
local bodies = {{}}
for _, name in ipairs({{{names}}}) do
  local f = assert(io.open(name, "rb"))
  bodies[#bodies + 1] = f:read("*a")
  f:close()
end
local i = 0
wrk.method = "POST"
{headers}

request = function()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
""" + LUA[LUA.index("done = function") :]


def rotating_lua_script(bodies: list[Path], headers: dict[str, str]) -> str:
    """wrk's Lua script posting the files `bodies` in turn, one per request, printing its figures as WRK_JSON."""
    lines = "\n".join(f'wrk.headers["{key}"] = "{value}"' for key, value in headers.items())
    return LUA_ROTATE.format(names=", ".join(f'"{b}"' for b in bodies), headers=lines)


def lua_script(body: Path, headers: dict[str, str]) -> str:
    """wrk's Lua script posting the bytes of the file `body` with `headers`, printing its figures as WRK_JSON."""
    lines = "\n".join(f'wrk.headers["{key}"] = "{value}"' for key, value in headers.items())
    return LUA.format(body=body, headers=lines)


def multipart(field: str, images: list[bytes], kind: str = "png") -> bytes:
    """A multipart/form-data body with one part per image, all under `field`."""
    parts = []
    for i, png in enumerate(images):
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="{i}.{kind}"\r\n'
            f"Content-Type: image/{kind}\r\n\r\n"
        )
        parts.append(head.encode() + png + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def protocol_bodies(images: list[bytes], pixels: np.ndarray) -> dict[str, tuple[bytes, dict[str, str]]]:
    """The --protocols phases' bodies and headers: one image's `pixels` (28, 28) uint8 as the service's JSON and as
    the infer route's JSON and binary tensors; the PNGs `images` as a binary BYTES tensor."""
    as_json = {"Content-Type": "application/json"}
    tensor = {"name": "pixels", "shape": [1, 28, 28], "datatype": "UINT8"}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": pixels.size}}]}).encode()
    files = b"".join(struct.pack("<I", len(png)) + png for png in images)
    files_header = {"name": "images", "shape": [len(images)], "datatype": "BYTES"}
    files_json = json.dumps({"inputs": [{**files_header, "parameters": {"binary_data_size": len(files)}}]}).encode()
    binary = {"Content-Type": "application/octet-stream"}
    return {
        "pixels": (json.dumps({"images": [pixels.tolist()]}).encode(), as_json),
        "infer-pixels": (json.dumps({"inputs": [{**tensor, "data": pixels.reshape(-1).tolist()}]}).encode(), as_json),
        "infer-pixels-bin": (header + pixels.tobytes(), {**binary, HEADER_LENGTH: str(len(header))}),
        "infer-images": (files_json + files, {**binary, HEADER_LENGTH: str(len(files_json))}),
    }


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process and of its live descendants (the workers of a multi-worker
    server), from /proc/<pid>/stat."""
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent pid, CPU seconds)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # exited meanwhile
                continue
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    children: dict[int, list[int]] = {}
    for child, (parent, _) in stats.items():
        children.setdefault(parent, []).append(child)
    tree, todo = set(), [pid]
    while todo:
        tree.add(current := todo.pop())
        todo += children.get(current, [])
    return sum(stats[p][1] for p in tree if p in stats)


def run_wrk(
    name: str, url: str, script: Path, server_pid: int, threads: int, connections: int, seconds: float, images: int
) -> WrkResult:
    """One wrk run; its CPU from the kernel's rusage of the child, the server's from /proc around the run."""
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "-s", str(script), url]
    server_before = process_cpu_seconds(server_pid)
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    output = process.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    server_cpu = (process_cpu_seconds(server_pid) - server_before) / wall
    line = next((x for x in output.splitlines() if x.startswith("WRK_JSON ")), None)
    if process.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({process.returncode}) for {name}:\n{output[-3000:]}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    return WrkResult(
        name=name,
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        images_per_request=images,
        socket_errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
        non_2xx=data["status"],
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        wrk_cpu=(usage.ru_utime + usage.ru_stime) / wall,
        server_cpu=server_cpu,
    )


def print_report(results: list[WrkResult], threads: int, connections: int, workers: int) -> int:
    """The table and the targets; returns the number of errors."""
    print(f"\nwrk: {threads} threads, {connections} connections, loopback, {os.cpu_count()} CPU core(s)")
    print(f"servers: {workers} uvicorn worker(s) each")
    print("CPU columns: share of one core used during the phase by wrk and by the server (all its workers)")
    print(
        f"{'phase':<17} {'requests':>8} {'errors':>6} {'req/s':>8} {'images/s':>9} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'wrk CPU':>7} {'srv CPU':>7}"
    )
    for r in results:
        print(
            f"{r.name:<17} {r.requests:>8} {r.errors:>6} {r.requests_per_s:>8.1f}"
            f" {r.requests_per_s * r.images_per_request:>9.1f} {r.p50_ms:>7.1f} {r.p99_ms:>7.1f}"
            f" {r.wrk_cpu:>7.0%} {r.server_cpu:>7.0%}"
        )
    by_name = {r.name: r for r in results}
    bare = by_name["bare"]
    errors = sum(r.errors for r in results)
    for r in results:
        if r.name.startswith("single") and bare.requests_per_s:
            ratio = r.requests_per_s / bare.requests_per_s
            print(f"{r.name}/bare: {ratio:.1%} of the bare endpoint's req/s")
            met = ratio >= THROUGHPUT_TARGET and r.p99_ms <= P99_TARGET_MS
            print(
                f"[{'met' if met else 'MISSED'}] {r.name}: >= {THROUGHPUT_TARGET:.0%} of bare and p99 <= "
                f"{P99_TARGET_MS:.0f} ms"
            )
    batching, single = by_name.get("single-batching"), by_name.get("single")
    if batching and single and single.requests_per_s:
        print(
            f"server-side batching: {batching.requests_per_s / single.requests_per_s - 1:+.0%} single-image req/s"
            f" against the service without it, p99 {batching.p99_ms:.0f} vs {single.p99_ms:.0f} ms"
        )
    for protocol, own in (("infer-pixels", "pixels"), ("infer-pixels-bin", "pixels"), ("infer-images", "batch")):
        if protocol in by_name and own in by_name and by_name[own].requests_per_s:
            a, b = by_name[protocol], by_name[own]
            rate = a.requests_per_s * a.images_per_request / (b.requests_per_s * b.images_per_request)
            print(f"{protocol}/{own}: {rate:.1%} of the images/s, p99 {a.p99_ms:.1f} vs {b.p99_ms:.1f} ms")
    for r in results:
        if r.errors:
            print(f"  {r.name}: {r.non_2xx} non-2xx answers, {r.socket_errors} socket errors")
    print(f"[{'met' if errors == 0 else 'MISSED'}] errors: {errors} (target 0)")
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2).")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16).")
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds per phase (default 10).")
    parser.add_argument("--batch-size", type=int, default=32, help="Images per batch request (default 32; 0: skip).")
    parser.add_argument("--rounds", type=int, default=1, help="Interleaved rounds; each phase reports its best.")
    parser.add_argument(
        "--workers", type=int, default=1, help="uvicorn workers of the bare endpoint and the service alike (default 1)."
    )
    parser.add_argument("--run", help="Model run pathspec (sets FASHIONFLOW_RUN for the service).")
    parser.add_argument(
        "--compare-tree",
        type=Path,
        help="Another checkout (e.g. `git archive HEAD | tar -x -C DIR`) whose service is measured too, as 'before'.",
    )
    parser.add_argument(
        "--compare-batching",
        action="store_true",
        help="Also measure the service with server-side micro-batching on (FASHIONFLOW_BATCHING=true).",
    )
    parser.add_argument(
        "--protocols",
        action="store_true",
        help="Also measure /predict/pixels and the Open Inference Protocol's infer route (JSON and binary tensors).",
    )
    parser.add_argument(
        "--real-photos",
        type=int,
        default=0,
        help="Also post N real phone photos of the validation split through /predict, one per request in turn.",
    )
    parser.add_argument(
        "--photo-connections",
        type=int,
        default=1,
        help="wrk connections of the photo phases (default 1: each photo's latency; more measure the decode pool's"
        " load shedding, whose 503 answers count as errors).",
    )
    parser.add_argument("--json", type=Path, help="Also write the figures to this JSON file.")
    parser.add_argument(
        "--quick", action="store_true", help="2 s per phase, 8 images per batch: checks the machinery (the test suite)."
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.batch_size, args.rounds = 2.0, min(args.batch_size, 8) or 0, 1
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on PATH (Debian: apt-get install wrk)")
    if args.run:
        os.environ["FASHIONFLOW_RUN"] = args.run
    os.environ.setdefault("USERNAME", os.environ.get("USER", "benchmark"))

    images, _ = load_traffic_images(args.batch_size or 1)
    work = Path(tempfile.mkdtemp(prefix="serve_wrk_"))
    bodies = {
        "single": (multipart("file", images[:1]), MULTIPART_HEADERS),
        "batch": (multipart("files", images[: args.batch_size or 1]), MULTIPART_HEADERS),
    }
    if args.protocols:
        pixels = np.asarray(Image.open(io.BytesIO(images[0])))  # (28, 28) uint8: the same image as `single`
        bodies |= protocol_bodies(images[: args.batch_size or 1], pixels)
    scripts = {}
    for name, (body, headers) in bodies.items():
        (work / f"{name}.body").write_bytes(body)
        scripts[name] = work / f"{name}.lua"
        scripts[name].write_text(lua_script(work / f"{name}.body", headers))
    if args.real_photos:
        photos = sample_per_folder(load_real_photos("validation"), -(-args.real_photos // len(LABELS)))
        paths = []
        for i, photo in enumerate(photos[: args.real_photos]):
            paths.append(work / f"photo-{i}.body")
            paths[-1].write_bytes(multipart("file", [photo.data], kind="jpeg"))
        scripts["photo"] = work / "photo.lua"
        scripts["photo"].write_text(rotating_lua_script(paths, MULTIPART_HEADERS))

    servers: dict[str, tuple[str, Path, dict[str, str]]] = {
        "bare": ("bare_app:app", REPO / "benchmarks", {}),
        "service": ("serving.app:app", REPO, {}),
    }
    phases = [("bare", "bare", "/predict", "single", 1), ("single", "service", "/predict", "single", 1)]
    if args.compare_batching:
        servers["batching"] = ("serving.app:app", REPO, {"FASHIONFLOW_BATCHING": "true"})
        phases.append(("single-batching", "batching", "/predict", "single", 1))
    if args.compare_tree:
        tree = args.compare_tree.resolve()
        servers["before"] = ("serving.app:app", tree, {})
        phases.append(("single-before", "before", "/predict", "single", 1))
    if args.real_photos:
        phases.append(("photo", "service", "/predict", "photo", 1))
        if args.compare_tree:
            phases.append(("photo-before", "before", "/predict", "photo", 1))
    if args.batch_size:
        phases.append(("batch", "service", "/predict/batch", "batch", args.batch_size))
        if args.compare_tree:
            phases.append(("batch-before", "before", "/predict/batch", "batch", args.batch_size))
    if args.protocols:
        infer = "/v2/models/fashionflow/infer"
        phases += [
            ("pixels", "service", "/predict/pixels", "pixels", 1),
            ("infer-pixels", "service", infer, "infer-pixels", 1),
            ("infer-pixels-bin", "service", infer, "infer-pixels-bin", 1),
        ]
        if args.batch_size:
            phases.append(("infer-images", "service", infer, "infer-images", args.batch_size))
    ports = {name: free_port() for name in servers}
    logs = {name: work / f"{name}.log" for name in servers}
    processes = {}
    for name, (app, app_dir, env) in servers.items():
        # The server runs from its own tree, so `serving` and `fmnist` are imported from there.
        cwd = app_dir if name == "before" else REPO
        workers = 1 if name == "before" else args.workers  # another checkout: uvicorn's command line, one worker
        processes[name] = start_server(app, ports[name], app_dir, logs[name], env, cwd=cwd, workers=workers)
    best: dict[str, WrkResult] = {}
    try:
        for name, process in processes.items():
            wait_ready(
                process, f"http://127.0.0.1:{ports[name]}", logs[name], workers=1 if name == "before" else args.workers
            )
        for _ in range(args.rounds):
            for name, server, path, kind, count in phases:
                url = f"http://127.0.0.1:{ports[server]}{path}"
                # Photos one request at a time by default: their latency, not the decode pool's load shedding (more
                # concurrent photo uploads than its queue holds are answered 503 by design).
                connections = args.photo_connections if kind == "photo" else args.connections
                r = run_wrk(
                    name,
                    url,
                    scripts[kind],
                    processes[server].pid,
                    min(args.threads, connections),
                    connections,
                    args.duration,
                    count,
                )
                if name not in best or r.requests_per_s > best[name].requests_per_s or r.errors:
                    best[name] = r
    finally:
        stop_servers(processes.values())
    results = [best[name] for name, *_ in phases]
    errors = print_report(results, args.threads, args.connections, args.workers)
    if args.json:
        args.json.write_text(
            json.dumps([{**asdict(r), "requests_per_s": r.requests_per_s} for r in results], indent=2) + "\n"
        )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
