"""Rebuild this folder's compact copy of the real clothing photographs from upstream.

Upstream: the CC0 "clothing dataset (subset)", https://github.com/alexeygrigorev/clothing-dataset-small, its
`train/` folder only (3,068 phone photos in 10 folders). Its `test/` and `validation/` folders, and the full
clothing-dataset it was cut from, stay out of the project: they are kept for independent checks.

    python data/real_photos/rebuild.py                       # clones upstream at the pinned commit (needs git)
    python data/real_photos/rebuild.py --source CLONE         # a local clone (a work tree or a .git directory)

Each photo is turned upright (EXIF orientation), converted to RGB, reduced so its long side is 256 pixels (the
normaliser works at 224: `fmnist.images.normalise.WORK_SIZE`) and saved as a JPEG at quality 85 without metadata:
about 37 MB for all of them. `manifest.csv` records each file's upstream folder, the split it belongs to, its
SHA-256 and the upstream blob it came from; the split (fit 50%, validation 25%, report 25% of every folder) is
drawn once with a seeded generator and recorded there, so it never changes with the code. The loader
(`fmnist.core.real_photos`) checks every file against its SHA-256. A rebuild with another Pillow (another libjpeg)
may encode other bytes: commit the new manifest with the new files.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

UPSTREAM = "https://github.com/alexeygrigorev/clothing-dataset-small"
COMMIT = "11961516512414bf9f6c150a832cfd21b54a6b54"
HERE = Path(__file__).resolve().parent
LONG_SIDE = 256
QUALITY = 85
SEED = 0
SHARES = (("fit", 0.5), ("validation", 0.25), ("report", 0.25))


def git(git_dir: Path, *args: str) -> bytes:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True).stdout


def upstream_files(git_dir: Path) -> list[tuple[str, str]]:
    """(path, blob sha1) of every file under train/ at the pinned commit, sorted by path."""
    listing = git(git_dir, "ls-tree", "-r", COMMIT, "train/").decode().splitlines()
    files = []
    for line in listing:
        meta, path = line.split("\t", 1)
        files.append((path, meta.split()[2]))
    return sorted(files)


def reduce(data: bytes) -> bytes:
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    image.thumbnail((LONG_SIDE, LONG_SIDE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=QUALITY, optimize=True)
    return out.getvalue()


def split_of(files: list[tuple[str, str]]) -> dict[str, str]:
    """Every path's split: per upstream folder, a seeded permutation cut at the shares."""
    rng = np.random.default_rng(SEED)
    by_folder: dict[str, list[str]] = {}
    for path, _ in files:
        by_folder.setdefault(path.split("/")[1], []).append(path)
    splits = {}
    for folder in sorted(by_folder):
        paths = by_folder[folder]
        order = rng.permutation(len(paths))
        start = 0
        for i, (name, share) in enumerate(SHARES):
            end = len(paths) if i == len(SHARES) - 1 else start + round(share * len(paths))
            for k in order[start:end]:
                splits[paths[k]] = name
            start = end
    return splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, help="a local clone of upstream (default: clone it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.source is None:
            subprocess.run(["git", "clone", "--quiet", "--bare", UPSTREAM, f"{tmp}/upstream.git"], check=True)
            git_dir = Path(tmp) / "upstream.git"
        else:
            git_dir = args.source / ".git" if (args.source / ".git").exists() else args.source
        files = upstream_files(git_dir)
        splits = split_of(files)
        images = HERE / "images"
        shutil.rmtree(images, ignore_errors=True)
        rows = []
        for i, (path, blob) in enumerate(files):
            data = reduce(git(git_dir, "cat-file", "blob", blob))
            folder, name = path.split("/")[1:]
            target = images / folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            rows.append([f"images/{folder}/{name}", folder, splits[path], hashlib.sha256(data).hexdigest(), blob])
            if (i + 1) % 500 == 0:
                print(f"{i + 1}/{len(files)} photos reduced")
        (HERE / "LICENSE").write_bytes(git(git_dir, "show", f"{COMMIT}:LICENSE"))
    with open(HERE / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "upstream_folder", "split", "sha256", "upstream_blob"])
        writer.writerows(rows)
    total = sum((HERE / r[0]).stat().st_size for r in rows)
    print(f"{len(rows)} photos, {total / 1e6:.1f} MB, upstream {UPSTREAM} at {COMMIT}")


if __name__ == "__main__":
    main()
