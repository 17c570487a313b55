"""Images scored per second per core: one ScoreFlow shard against the service's /predict/batch, in one run.

Both score the same files (28x28 PNG scans of training garments and the same garments rendered as 224x224 JPEG
product photos by `fmnist.photos`) with the same model. "Per core" is images per CPU-second of the process doing the
work: the shard's own process (`fmnist.catalogue.score_shard`, one decoding thread, ONNX Runtime with one thread)
and the service's uvicorn worker (one worker, posted batches by a client in this process, whose CPU is not counted),
so a shared machine's background load changes neither figure much.

.venv/bin/python benchmarks/score_throughput.py [--run FashionFlow/<id>] [--images 2000] [--json PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import REPO, free_port, start_server, stop_servers, wait_ready

from fmnist.catalogue import build_classifier, read_local_files, score_shard
from fmnist.model_record import ModelRecord


def catalogue(count: int, photo_share: float, seed: int = 0) -> list[tuple[str, bytes]]:
    """(name, bytes): training garments as PNG scans, and a share of them rendered as product photos."""
    from fmnist.data import load_dataset
    from fmnist.photos import PHOTO_CONDITIONS, photo_rng, render_photo

    pixels = load_dataset(download=False).train_images[:count]
    photos = round(count * photo_share)
    condition = next(c for c in PHOTO_CONDITIONS if c.name == "grey_backdrop")
    severity = condition.severities[condition.realistic]
    files = [
        (f"photo-{i:06d}.jpg", render_photo(pixels[i], condition, severity, photo_rng(seed, i))) for i in range(photos)
    ]
    files += [(f"scan-{i:06d}.png", encode(pixels[i])) for i in range(photos, count)]
    return files


def encode(pixels: np.ndarray) -> bytes:
    """A (28, 28) uint8 image as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def model_run(requested: str | None) -> str:
    from metaflow import Flow, namespace

    namespace(None)
    if requested:
        return requested
    latest = Flow("FashionFlow").latest_successful_run
    if latest is None:
        raise SystemExit("no successful FashionFlow run: train one, or pass --run")
    return latest.pathspec


def measure_shard(run: str, folder: Path, names: list[str], batch_size: int) -> dict[str, float]:
    """A shard's images per CPU-second and per wall second, on this process's single decoding thread."""
    from metaflow import Run

    record = ModelRecord.from_bytes(Run(run)["end"].task.data.calibrated_model)
    classifier = build_classifier(record, "cpu")
    paths = [str(folder / n) for n in names]
    read = read_local_files(10 * 1024 * 1024)
    score_shard(classifier, paths[:batch_size], read, batch_size=batch_size, threads=1)  # warm-up
    cpu, wall = time.process_time(), time.perf_counter()
    outcome = score_shard(classifier, paths, read, batch_size=batch_size, threads=1)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"images": len(outcome.rows), "cpu_seconds": cpu, "wall_seconds": wall, "per_core": len(paths) / cpu}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_service(run: str, files: list[tuple[str, bytes]], batch_size: int) -> dict[str, float]:
    """The service's images per CPU-second of its worker, posting batches one after another."""
    port, log_path = free_port(), Path(tempfile.gettempdir()) / f"score_throughput_{os.getpid()}.log"
    server = start_server(
        "serving.app:app", port, REPO, log_path, {"FASHIONFLOW_RUN": run, "FASHIONFLOW_DEVICE": "cpu"}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(server, url, log_path)
        batches = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
        with httpx.Client(timeout=60) as client:
            post = [("files", (n, data, "application/octet-stream")) for n, data in batches[0]]
            client.post(url + "/predict/batch", files=post).raise_for_status()  # warm-up
            cpu, wall = _cpu_seconds(server.pid), time.perf_counter()
            for batch in batches:
                post = [("files", (n, data, "application/octet-stream")) for n, data in batch]
                client.post(url + "/predict/batch", files=post).raise_for_status()
            cpu, wall = _cpu_seconds(server.pid) - cpu, time.perf_counter() - wall
    finally:
        stop_servers([server])
    return {"images": len(files), "cpu_seconds": cpu, "wall_seconds": wall, "per_core": len(files) / cpu}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="FashionFlow/<id> whose model scores; default: the latest successful run.")
    parser.add_argument("--images", type=int, default=2000, help="Files to score (default 2000).")
    parser.add_argument("--photo-share", type=float, default=0.5, help="Share rendered as product photos (0.5).")
    parser.add_argument("--shard-batch", type=int, default=256, help="A shard's batch size (default 256).")
    parser.add_argument("--service-batch", type=int, default=32, help="Images per /predict/batch request (32).")
    parser.add_argument("--json", type=Path, help="Also write the figures to this JSON file.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("USERNAME", os.environ.get("USER", "benchmark"))
    run = model_run(args.run)
    files = catalogue(args.images, args.photo_share)
    with tempfile.TemporaryDirectory(prefix="score-throughput-") as tmp:
        for name, data in files:
            (Path(tmp) / name).write_bytes(data)
        shard = measure_shard(run, Path(tmp), [n for n, _ in files], args.shard_batch)
    service = measure_service(run, files, args.service_batch)
    ratio = shard["per_core"] / service["per_core"]
    print(f"model {run}; {args.images} files, {args.photo_share:.0%} product photos")
    for name, figures in (("shard", shard), ("service /predict/batch", service)):
        print(
            f"{name:>24}: {figures['per_core']:8.0f} images per CPU-second "
            f"({figures['images']} images, {figures['cpu_seconds']:.1f} CPU-s, {figures['wall_seconds']:.1f} s wall)"
        )
    print(f"shard / service per core: {ratio:.2f}x (target: at least 2x)")
    if args.json:
        args.json.write_text(json.dumps({"run": run, "shard": shard, "service": service, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
