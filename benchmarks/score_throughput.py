"""Images scored per second per core: one ScoreFlow shard against the service's /predict/batch, in one run.

Both score the same files (28x28 PNG scans of training garments and the same garments rendered as 224x224 JPEG product
photos by `fmnist.evaluation.photos`) with the same model. "Per core" is images per CPU-second of the process doing the
work: the shard's own process (`fmnist.release.catalogue.score_shard`, one decoding thread, ONNX Runtime with one
thread) and the service's uvicorn worker (one worker, posted batches by a client in this process, whose CPU is not
counted), so a shared machine's background load changes neither figure much.

With --end-to-end N it instead renders a mixed catalogue of N files to --folder (half 28x28 PNG scans of training
garments, three tenths studio product photos in every condition of `fmnist.evaluation.photos`, a fifth in-the-wild
photos in every condition of `fmnist.evaluation.wild_photos`; in parallel processes, and cached: a file already there is
kept) and runs ScoreFlow on it end to end with the default score profile, printing the rendering time, the run's wall
time and images/s, and checking that every shard logged its progress and has a live card that reached its last image.

.venv/bin/python benchmarks/score_throughput.py [--run FashionFlow/<id>] [--images 2000] [--json PATH]
.venv/bin/python benchmarks/score_throughput.py --end-to-end 2000 --folder /tmp/catalogue-2k [--render-only]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import REPO, free_port, start_server, stop_servers, wait_ready

from fmnist.release.catalogue import build_classifier, read_local_files, score_shard
from fmnist.release.model_record import ModelRecord


def catalogue(count: int, photo_share: float, seed: int = 0) -> list[tuple[str, bytes]]:
    """(name, bytes): training garments as PNG scans, and a share of them rendered as product photos."""
    from fmnist.core.data import load_dataset
    from fmnist.evaluation.photos import PHOTO_CONDITIONS, photo_rng, render_photo

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
    from registry.runs import latest_successful

    if requested:
        return requested
    latest = latest_successful("FashionFlow")
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


# ------------------------------------------------------------------------------------------- end to end (--end-to-end)
# Of every 20 files: 10 scans, 6 studio product photos, 4 in-the-wild photos (`mixed_kind`).
MIX = (("scan", 10), ("photo", 6), ("wild", 4))
RENDER_CHUNK = 250  # files per task of the rendering pool: few round trips, and the workers still finish together
_garments: np.ndarray | None = None  # (N, 28, 28) uint8 training images, loaded once per rendering process


def mixed_kind(index: int) -> str:
    """What file `index` of the mixed catalogue is: "scan", "photo" or "wild"."""
    position = index % sum(n for _, n in MIX)
    for kind, n in MIX:
        if position < n:
            return kind
        position -= n
    raise AssertionError("unreachable")


def mixed_name(index: int) -> str:
    """File `index`'s path in the catalogue folder: a thousand files a folder, the kind in the name."""
    kind = mixed_kind(index)
    return f"{index // 1000:03d}/{index:06d}-{kind}.{'png' if kind == 'scan' else 'jpg'}"


def _render_mixed(index: int, seed: int) -> bytes:
    """The bytes of file `index`: a training garment as a PNG scan, a studio photo or an in-the-wild photo, each
    photo condition in turn at its realistic severity; the same bytes every time (seeded by the index)."""
    from fmnist.evaluation.photos import PHOTO_CONDITIONS, photo_rng, render_photo
    from fmnist.evaluation.wild_photos import WILD_CONDITIONS, render_wild, wild_rng

    assert _garments is not None
    pixels = _garments[index % len(_garments)]
    kind = mixed_kind(index)
    if kind == "scan":
        return encode(pixels)
    if kind == "photo":
        condition = PHOTO_CONDITIONS[index % len(PHOTO_CONDITIONS)]
        return render_photo(pixels, condition, condition.severities[condition.realistic], photo_rng(seed, index))
    wild = WILD_CONDITIONS[index % len(WILD_CONDITIONS)]
    other = _garments[(index + 1) % len(_garments)]  # the second garment `second_garment_edge` needs
    # Stream 0: neither the report's photos nor the development ones.
    return render_wild(pixels, wild, wild.severities[0], wild_rng(seed, 0, index), other=other)


def _load_garments() -> None:
    global _garments
    from fmnist.core.data import load_dataset

    _garments = load_dataset(download=False).train_images


def _render_chunk(folder: str, indices: list[int], seed: int) -> int:
    """Write the files of `indices` that are not in `folder` yet (each through a temporary name, so an interrupted
    rendering leaves no half file behind); how many were written."""
    written = 0
    for index in indices:
        path = Path(folder) / mixed_name(index)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")  # hidden: never listed as an input
        partial.write_bytes(_render_mixed(index, seed))
        partial.replace(path)
        written += 1
    return written


def render_catalogue(folder: Path, count: int, workers: int, seed: int = 0) -> dict[str, float]:
    """Render the mixed catalogue's `count` files into `folder` with `workers` processes, keeping files already
    there; the figures of the rendering."""
    folder.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(count) if not (folder / mixed_name(i)).exists()]
    started = time.perf_counter()
    written = 0
    if missing:
        chunks = [missing[i : i + RENDER_CHUNK] for i in range(0, len(missing), RENDER_CHUNK)]
        context = multiprocessing.get_context("spawn")  # no inherited threads or half-imported torch
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_load_garments) as pool:
            for done in pool.map(_render_chunk, [str(folder)] * len(chunks), chunks, [seed] * len(chunks)):
                written += done
    extra = len(_listed(folder)) - count
    if extra:
        raise SystemExit(f"{folder} holds {extra} files besides the catalogue's {count}: use an empty folder")
    return {"files": count, "rendered": written, "cached": count - written, "seconds": time.perf_counter() - started}


def _listed(folder: Path) -> list[str]:
    from fmnist.release.catalogue import list_inputs

    return list_inputs(folder)


# A shard's progress line, as Metaflow prefixes a task's log: "[<run>/score/<task> (pid ..)] ... scored 256 of ..".
PROGRESS = re.compile(r"\[\d+/score/(\d+) .*scored (\d+) of (\d+) images")
_CARD_DATA = re.compile(r'window\.__MF_DATA__\["[^"]+"\] = "([A-Za-z0-9+/=]+)"')


def run_end_to_end(folder: Path, run: str) -> dict[str, object]:
    """Run ScoreFlow (default score profile) on `folder` from the repository root, its log shown as it comes; the
    wall time, the run's own figures and what its shards showed."""
    command = [sys.executable, "-u", str(REPO / "flows" / "score_flow.py"), "run", "--input", str(folder)]
    command += ["--run", run]
    started = time.perf_counter()
    lines = []
    with subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"ScoreFlow failed (exit code {process.returncode})")
    match = re.search(r"\(run-id (\d+)\)", "".join(lines))
    if match is None:
        raise SystemExit("no run id in ScoreFlow's output")
    from metaflow import Run, namespace

    namespace(None)
    scoring = Run(f"ScoreFlow/{match.group(1)}")
    progress: Counter[str] = Counter(m.group(1) for m in map(PROGRESS.search, lines) if m)
    shards = {task.id: (task.data.shard_index, task.data.shard_stats["images"]) for task in scoring["score"]}
    return {
        "run": scoring.pathspec,
        "wall_seconds": wall,
        "throughput": scoring.data.throughput,
        "summary": {k: scoring.data.summary[k] for k in ("images", "scored", "unreadable", "unsure")},
        "progress_lines": {index: progress[task] for task, (index, _) in shards.items()},
        "live_cards": {
            index: _card_reached(scoring["score"][task], images) for task, (index, images) in shards.items()
        },
    }


def _card_reached(task, images: int) -> bool:
    """Whether the shard's live card holds its progress bar and says the shard reached its last image."""
    from metaflow.cards import get_cards

    for card in get_cards(task):
        match = _CARD_DATA.search(card.get())
        text = base64.b64decode(match.group(1)).decode() if match else ""
        if '"type": "progressBar"' in text and f"{images} of {images} images" in text:
            return True
    return False


def end_to_end(args: argparse.Namespace) -> int:
    """--end-to-end: render (or reuse) the catalogue, then score it with ScoreFlow; True when every check held."""
    if args.folder is None:
        raise SystemExit("--end-to-end needs --folder, where the catalogue is rendered and kept")
    print(f"rendering {args.end_to_end} files into {args.folder} with {args.workers} processes ...", flush=True)
    rendering = render_catalogue(args.folder, args.end_to_end, args.workers)
    kinds = Counter(mixed_kind(i) for i in range(args.end_to_end))
    print(
        f"rendering: {rendering['seconds']:.1f} s for {rendering['rendered']:.0f} new files "
        f"({rendering['cached']:.0f} already there); {dict(kinds)}"
    )
    if args.render_only:
        return 0
    run = model_run(args.run)
    result = run_end_to_end(args.folder, run)
    wall, throughput = float(result["wall_seconds"]), result["throughput"]  # type: ignore[arg-type]
    assert isinstance(throughput, dict)
    print(f"\nScoreFlow {result['run']} scored {args.end_to_end} files with the model of {run}: {result['summary']}")
    print(
        f"wall time {wall:.1f} s from launch to end: {args.end_to_end / wall:.0f} images/s; scoring alone "
        f"{throughput['wall_seconds']:.1f} s over {throughput['shards']} shards: "
        f"{throughput['images_per_second']:.0f} images/s ({throughput['images_per_shard_second']:.0f} per shard-second)"
    )
    progress, cards = result["progress_lines"], result["live_cards"]
    assert isinstance(progress, dict) and isinstance(cards, dict)
    print(f"progress lines per shard: {dict(sorted(progress.items()))}")
    print(f"live card reached the last image, per shard: {dict(sorted(cards.items()))}")
    ok = all(n > 0 for n in progress.values()) and all(cards.values())
    ok = ok and result["summary"]["images"] == args.end_to_end  # type: ignore[index]
    if args.json:
        args.json.write_text(json.dumps({"rendering": rendering, **result}, indent=2, default=str))
    print("checks: " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="FashionFlow/<id> whose model scores; default: the latest successful run.")
    parser.add_argument("--images", type=int, default=2000, help="Files to score (default 2000).")
    parser.add_argument("--photo-share", type=float, default=0.5, help="Share rendered as product photos (0.5).")
    parser.add_argument("--shard-batch", type=int, default=256, help="A shard's batch size (default 256).")
    parser.add_argument("--service-batch", type=int, default=32, help="Images per /predict/batch request (32).")
    parser.add_argument("--json", type=Path, help="Also write the figures to this JSON file.")
    parser.add_argument("--end-to-end", type=int, metavar="N", help="Render N files to --folder and run ScoreFlow.")
    parser.add_argument("--folder", type=Path, help="Where --end-to-end renders (and caches) its catalogue.")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Rendering processes (all cores).")
    parser.add_argument("--render-only", action="store_true", help="With --end-to-end: render, do not score.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("USERNAME", os.environ.get("USER", "benchmark"))
    if args.end_to_end:
        return end_to_end(args)
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
