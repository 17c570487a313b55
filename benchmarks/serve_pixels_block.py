"""How long `/health` waits while another client posts huge `/predict/pixels` bodies: the cost to everyone else of
a body of millions of JSON numbers, which the service parses and validates holding the interpreter.

    python benchmarks/serve_pixels_block.py --run FashionFlow/<id>          # 3 million numbers (6 MB)
    python benchmarks/serve_pixels_block.py --numbers 830000 --compare-tree DIR  # at the size limit, and before

Starts the service (one uvicorn worker, settings from FASHIONFLOW_* variables; with --compare-tree also that
checkout's, one after the other), posts one image of `--numbers` zeros in a loop on one connection, and meanwhile
times `GET /health` on another every 10 ms for `--seconds`. Prints /health's p50, p99 and max and the status codes
the posts got (413: refused by its size before parsing; 422: parsed, then refused by the item limit).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_load import REPO, free_port, start_server, stop_servers, wait_ready


def measure(url: str, body: bytes, seconds: float) -> tuple[np.ndarray, set[int]]:
    """/health latencies (ms) while a second thread posts `body` to /predict/pixels, and the posts' status codes."""
    stop = threading.Event()
    codes: set[int] = set()

    def post() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                answer = client.post(
                    url + "/predict/pixels", content=body, headers={"content-type": "application/json"}
                )
                codes.add(answer.status_code)

    poster = threading.Thread(target=post)
    poster.start()
    time.sleep(1.0)  # the first posts under way
    latencies = []
    with httpx.Client(timeout=60) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.perf_counter()
            client.get(url + "/health")
            latencies.append((time.perf_counter() - start) * 1000)
            time.sleep(0.01)
    stop.set()
    poster.join()
    return np.array(latencies), codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numbers", type=int, default=3_000_000, help="Zeros in the posted image (default 3000000).")
    parser.add_argument("--seconds", type=float, default=15.0, help="Seconds of /health timing per service.")
    parser.add_argument("--run", help="Model run pathspec (sets FASHIONFLOW_RUN).")
    parser.add_argument("--compare-tree", type=Path, help="Another checkout whose service is measured first.")
    args = parser.parse_args()
    if args.run:
        os.environ["FASHIONFLOW_RUN"] = args.run
    os.environ.setdefault("USERNAME", os.environ.get("USER", "benchmark"))
    body = json.dumps({"images": [[0] * args.numbers]}, separators=(",", ":")).encode()
    print(f"posting {len(body)} bytes ({args.numbers} numbers) to /predict/pixels, timing /health")
    trees = ([("before", args.compare_tree.resolve())] if args.compare_tree else []) + [("this tree", REPO)]
    work = Path(tempfile.mkdtemp(prefix="pixels_block_"))
    for name, tree in trees:
        port, log = free_port(), work / f"{name.replace(' ', '-')}.log"
        process = start_server("serving.app:app", port, tree, log, {}, cwd=tree)
        try:
            wait_ready(process, f"http://127.0.0.1:{port}", log)
            latencies, codes = measure(f"http://127.0.0.1:{port}", body, args.seconds)
        finally:
            stop_servers([process])
        p50, p99 = np.percentile(latencies, [50, 99])
        print(
            f"{name:>10}: /health p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {latencies.max():.1f} ms"
            f" over {len(latencies)} requests; posts answered {sorted(codes)}"
        )


if __name__ == "__main__":
    main()
