"""`fmnist predict`: classify image files without starting a server, with the answer the service gives.

    fmnist predict shoe.jpg shirt.png                  # one line per file
    fmnist predict photos/ --tag production --json     # a folder (recursively), JSON Lines
    find . -name '*.png' | fmnist predict -            # file names on standard input

The model is the one `fmnist-serve` would serve for the same `--run`, `--tag` and FASHIONFLOW_* settings (default: the
newest successful run); each file goes through the service's upload checks and normalisation and is scored by the
same classifier, so the classes and probabilities are the service's. A file that cannot be read or is not an image
the service accepts is named with the reason on standard error, the others are still answered, and the exit
status is 1 when any file failed (2 for a usage error, 3 when there is no model to load).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from fmnist.images.normalise import Prepared, prepare_upload
from fmnist.images.uploads import ImageError

from .inference import Predictor
from .model_loading import ModelLoadError, load_model
from .settings import Settings

# Files scored per forward pass: what the service's batch route takes at most by default.
BATCH = 64


def expand(arguments: Iterable[str], stdin: Iterable[str]) -> Iterator[Path]:
    """Paths to classify: files as given, folders' files (recursively, in name order), and for `-` the lines of
    `stdin`, one path each (blank lines skipped)."""
    for argument in arguments:
        if argument == "-":
            yield from (Path(line.rstrip("\n")) for line in stdin if line.strip())
            continue
        path = Path(argument)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        else:
            yield path


def prepare(path: Path, settings: Settings) -> Prepared:
    """One file as the model's input, through the service's checks; ImageError or OSError naming the problem."""
    data = path.read_bytes()
    if not data:
        raise ImageError("empty file")
    return prepare_upload(data, settings.max_image_pixels)


def predict_paths(paths: Iterable[Path], predictor: Predictor, settings: Settings, top_k: int) -> Iterator[dict]:
    """One answer per path, in order: the service's prediction fields and `file`, or `file` and `error`."""
    pending: list[tuple[Path, Prepared]] = []

    def flush() -> Iterator[dict]:
        pixels = np.stack([p.pixels for _, p in pending])  # (B, 28, 28) uint8
        scored = predictor.score(pixels, [p.empty for _, p in pending], [p.photo for _, p in pending])
        for (path, prepared), one in zip(pending, scored, strict=True):
            prediction = predictor.describe(one, top_k, prepared.inverted, path.name)
            yield {"file": str(path), **prediction.model_dump(exclude={"filename"})}
        pending.clear()

    for path in paths:
        try:
            pending.append((path, prepare(path, settings)))
        except (ImageError, OSError) as err:
            yield from flush() if pending else ()
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            yield {"file": str(path), "error": reason}
            continue
        if len(pending) == BATCH:
            yield from flush()
    if pending:
        yield from flush()


def line(answer: dict) -> str:
    """One answer as a line of text: `file: class (probability, confident or unsure and why)`."""
    if "error" in answer:
        return f"{answer['file']}: error: {answer['error']}"
    if not answer["confident"]:
        trust = f"unsure: {answer['unsure_reason']}"
    elif answer["class_confident"]:
        trust = "confident"
    else:
        trust = f"confident it is {answer['family']}, not of the class"
    return f"{answer['file']}: {answer['class_name']} ({answer['probability']:.3f}, {trust})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fmnist", description="FashionFlow on the command line.")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser(
        "predict",
        help="classify image files with the model the service would serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("files", nargs="+", metavar="FILE", help="image files, folders, or - for a list on stdin")
    chosen = predict.add_mutually_exclusive_group()
    chosen.add_argument("--run", help="run pathspec FashionFlow/<run-id> (or the run id)")
    chosen.add_argument("--tag", help="the newest successful run with this tag, e.g. production")
    predict.add_argument("--json", action="store_true", help="one JSON object per file (JSON Lines)")
    predict.add_argument("--top-k", type=int, default=3, choices=range(1, 11), metavar="K", help="classes listed (3)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        overrides = {k: v for k, v in (("run", args.run), ("tag", args.tag)) if v is not None}
        settings = Settings(**overrides, reload_seconds=0)
    except ValidationError as err:
        parser.error(str(err))
    try:
        predictor = Predictor(load_model(settings))
    except ModelLoadError as err:
        print(f"fmnist predict: no model to use: {err}. Train one with `make run`.", file=sys.stderr)
        sys.exit(3)
    failed = 0
    for answer in predict_paths(expand(args.files, sys.stdin), predictor, settings, args.top_k):
        if "error" in answer:
            failed += 1
            print(line(answer), file=sys.stderr)
            if not args.json:
                continue
        print(json.dumps(answer) if args.json else line(answer), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
