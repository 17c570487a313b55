"""A small catalogue of image files for the ScoreFlow tests, and ScoreFlow run through Metaflow's Runner API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from tests.support.flows import ROOT, FlowResult, session_datastore
from tests.support.images import encode, png_bomb, real_test_images

SCORE_FLOW_FILE = ROOT / "flows" / "score_flow.py"
# The test profile's file size limit: the "enormous file" below is over it, every image under it.
MAX_FILE_BYTES = 100_000
# file name -> the start of the error its row must carry (the service's own messages, `fmnist.images.uploads`).
BAD_FILES = {
    "bad/empty.png": "empty file",
    "bad/notes.txt": "file is not an image",
    "bad/corrupt.png": "file is not an image",
    "bad/truncated.png": "image file is truncated or corrupt",
    "bad/bomb.png": "image too large to decode safely",
    "bad/enormous.png": "file is 150000 bytes, over the limit of 100000",
}


def product_photo(pixels: np.ndarray, index: int) -> bytes:
    """A garment rendered as a 224x224 JPEG product photo on grey paper, as the report's photo suite renders it."""
    from fmnist.evaluation.photos import PHOTO_CONDITIONS, photo_rng, render_photo

    condition = next(c for c in PHOTO_CONDITIONS if c.name == "grey_backdrop")
    return render_photo(pixels, condition, condition.severities[condition.realistic], photo_rng(0, index))


def write_catalogue(folder: Path, scans: int = 40, photos: int = 4) -> dict[str, bytes]:
    """Write real 28x28 PNG scans, product photos and every kind of bad file under `folder`; relative path -> bytes."""
    images, _ = real_test_images(scans + photos)
    files = {f"scans/{i:03d}.png": encode(images[i]) for i in range(scans)}
    files |= {f"photos/{i:02d}.jpg": product_photo(images[scans + i], i) for i in range(photos)}
    good = files["scans/000.png"]
    rng = np.random.default_rng(0)
    files |= {
        "bad/empty.png": b"",
        "bad/notes.txt": b"not an image, just notes\n",
        "bad/corrupt.png": b"\x89PNG\r\n\x1a\n" + rng.bytes(200),
        "bad/truncated.png": good[: len(good) // 2],
        "bad/bomb.png": png_bomb(),
        "bad/enormous.png": good + rng.bytes(150_000 - len(good)),
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


def score_profile(path: Path, shards: int = 3, batch_size: int = 8) -> Path:
    """A test profile: small batches (several per shard), a checkpoint after every batch, the CPU, one thread."""
    profile = {
        "name": "test",
        "shards": shards,
        "batch_size": batch_size,
        "max_file_bytes": MAX_FILE_BYTES,
        "compute": {"device": "cpu", "threads": 1, "checkpoint_seconds": 0},
    }
    path.write_text(yaml.safe_dump(profile))
    return path


def run_score_flow(
    profile: Path, env: dict[str, str] | None = None, cwd: Path | None = None, **options: str
) -> FlowResult:
    """Run ScoreFlow with a profile and parameters (`input`, `run`, `output`, ...); the outcome, failed or not."""
    from metaflow import Runner

    with Runner(
        str(SCORE_FLOW_FILE),
        show_output=False,
        env=env,
        cwd=str(cwd or session_datastore()),
        config=[("config", str(profile))],
    ) as runner:
        done = runner.run(**options)
        return FlowResult(done.status, done.run, done.stdout, done.stderr)


def resume_score_flow(origin_run_id: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> FlowResult:
    """Resume a ScoreFlow run (its profile and parameters are the original run's)."""
    from metaflow import Runner

    with Runner(str(SCORE_FLOW_FILE), show_output=False, env=env, cwd=str(cwd or session_datastore())) as runner:
        done = runner.resume(origin_run_id=origin_run_id)
        return FlowResult(done.status, done.run, done.stdout, done.stderr)
