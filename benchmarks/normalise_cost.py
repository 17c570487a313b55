"""Time to turn one real phone photo into the model's input (`fmnist.images.normalise.prepare_upload`: decode,
normalise), this checkout against another in the same run: p50 and p99 per photo on one thread, and their ratio.

    python benchmarks/normalise_cost.py [--photos 200] [--rounds 3] [--compare-tree DIR]

The photos are the real photographs' validation split (`data/real_photos/`). Each round times every photo once in
this checkout and, with --compare-tree, once in DIR (another checkout, e.g. `git worktree add DIR <commit>`), in
alternating subprocesses, so a shared machine's load falls on both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TIMER = """
import json, sys, time
import torch
torch.set_num_threads(1)
from fmnist.images.normalise import prepare_upload
from fmnist.images.uploads import DEFAULT_MAX_PIXELS
paths = json.loads(sys.stdin.read())
times = []
for p in paths:
    data = open(p, "rb").read()
    start = time.perf_counter()
    prepare_upload(data, DEFAULT_MAX_PIXELS)
    times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def time_tree(tree: Path, paths: list[str]) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", TIMER], input=json.dumps(paths), env=env, cwd=tree, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"{tree}: {out.stderr[-1500:]}")
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare-tree", type=Path, help="another checkout to time in the same run")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from fmnist.core.real_photos import DATA_DIR, load_real_photos

    paths = [str(DATA_DIR / p.name) for p in load_real_photos("validation")[: args.photos]]
    trees = {"this checkout": ROOT} | ({"compared": args.compare_tree.resolve()} if args.compare_tree else {})
    times: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            times[name] += time_tree(tree, paths)
    stats = {name: (np.percentile(t, 50) * 1e3, np.percentile(t, 99) * 1e3) for name, t in times.items()}
    for name, (p50, p99) in stats.items():
        print(f"{name:<14} {len(times[name])} photo normalisations: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    if args.compare_tree:
        (a50, a99), (b50, b99) = stats["this checkout"], stats["compared"]
        print(f"this checkout / compared: p50 x{a50 / b50:.2f}, p99 x{a99 / b99:.2f}")


if __name__ == "__main__":
    main()
