"""Photo robustness of any run's model: test garments rendered as product photos, through the service's own path.

    python benchmarks/photo_robustness.py [--run FashionFlow/123] [--per-class 30] [--size 224] [--json PATH]

Without --run, the flow's latest successful run (as the service picks it). A fixed, seeded, class-balanced sample
of real test images is rendered under every condition and severity of `fmnist.photos` (backdrops, exposure,
uneven and tinted light, noise with JPEG, rotation, framing, blur) and classified exactly as the service would
(`fmnist.classifier.Classifier.classify_uploads`: normalisation, network, temperature, abstention). Prints the
accuracy per condition and severity against the clean 28x28 PNGs of the same sample, the share of confident
answers and their accuracy, and the share of synthetic non-garments marked unsure; --json writes the figures.
Latency is not measured here: that is benchmarks/serve_load.py's business.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from fmnist.classifier import Scored
from fmnist.data import load_dataset
from fmnist.photos import PHOTO_CONDITIONS, photo_rng, render_clean, render_photo, sample_indices
from fmnist.report import nongarment_detection
from serving.model_loading import ModelLoadError, load_model
from serving.settings import Settings

# The targets of the photo suite: each condition at its realistic severity at least 0.9 x clean, none below 0.8 x.
REALISTIC_TARGET, FLOOR_TARGET = 0.9, 0.8


def summarize(scored: list[Scored], truth: np.ndarray) -> dict[str, float]:
    """Accuracy, share of confident answers and accuracy among them."""
    predicted = np.array([s.label for s in scored])
    confident = np.array([s.confident for s in scored])
    right = predicted == truth
    return {
        "accuracy": float(right.mean()),
        "confident_share": float(confident.mean()),
        "confident_accuracy": float(right[confident].mean()) if confident.any() else math.nan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="FashionFlow run pathspec or id (default: the latest successful run)")
    parser.add_argument("--per-class", type=int, default=30, help="test images per class (default 30: 300 photos)")
    parser.add_argument("--size", type=int, default=224, help="side of the rendered photos in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nongarments", type=int, default=40, help="synthetic non-garments per kind")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    # The run and its model record found and built exactly as the service does (a run id, or the latest success).
    try:
        served = load_model(Settings(run=args.run, device="cpu"))
    except ModelLoadError as err:
        raise SystemExit(f"{err} (train one with: python flows/fashion_flow.py run)") from None
    pathspec, classifier = served.run_pathspec, served.classifier
    data = load_dataset()
    indices = sample_indices(data.test_labels, args.per_class, args.seed)
    truth = data.test_labels[indices].astype(np.int64)
    sample = data.test_images[indices]
    started = time.perf_counter()

    clean = summarize(classifier.classify_uploads([render_clean(x) for x in sample]), truth)
    rows = [{"condition": "clean", "severity": 0.0, "realistic": False, **clean, "relative": 1.0}]
    for condition in PHOTO_CONDITIONS:
        for k, severity in enumerate(condition.severities):
            uploads = [
                render_photo(x, condition, severity, photo_rng(args.seed, int(i)), size=args.size)
                for x, i in zip(sample, indices, strict=True)
            ]
            figures = summarize(classifier.classify_uploads(uploads), truth)
            relative = figures["accuracy"] / clean["accuracy"] if clean["accuracy"] else math.nan
            rows.append(
                {
                    "condition": condition.name,
                    "severity": severity,
                    "realistic": k == condition.realistic,
                    **figures,
                    "relative": relative,
                }
            )
    nongarments = nongarment_detection(classifier, args.nongarments, args.seed)
    unsure = nongarments["per_kind"]
    seconds = time.perf_counter() - started

    print(f"model of {pathspec}: {len(indices)} test garments as {args.size}x{args.size} photos ({seconds:.0f} s)")
    print(f"{'condition':<18} {'severity':>8}  {'accuracy':>8}  {'x clean':>7}  {'confident':>9}  {'conf. acc':>9}")
    for r in rows:
        mark = "*" if r["realistic"] else " "
        print(
            f"{r['condition']:<18} {r['severity']:>8g}{mark} {r['accuracy']:>8.1%}  {r['relative']:>7.2f}"
            f"  {r['confident_share']:>9.1%}  {r['confident_accuracy']:>9.1%}"
        )
    realistic = [r for r in rows if r["realistic"]]
    worst = min(realistic, key=lambda r: r["relative"])
    floor = min(rows[1:], key=lambda r: r["relative"])
    print(
        f"worst realistic: {worst['condition']} {worst['relative']:.2f} x clean (target >= {REALISTIC_TARGET});"
        f" worst of all: {floor['condition']} at {floor['severity']:g}, {floor['relative']:.2f} x clean"
        f" (target >= {FLOOR_TARGET} at realistic severities)"
    )
    print("non-garments marked unsure: " + ", ".join(f"{k} {v:.0%}" for k, v in unsure.items()))
    print(f"non-garments marked unsure overall: {nongarments['overall']:.1%} of {nongarments['count']}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "run": pathspec,
                    "sample_size": len(indices),
                    "photo_size": args.size,
                    "rows": rows,
                    "nongarments_unsure": unsure,
                    "seconds": seconds,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
