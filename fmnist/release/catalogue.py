"""Scoring a catalogue of images in bulk, each answered as the service would answer it.

ScoreFlow (`flows/score_flow.py`) runs these functions; nothing here imports Metaflow.

- `list_inputs`: the images of a local folder (every file, recursively, hidden ones aside) or of a list file (one
  path per line); duplicates are dropped, so every input is scored exactly once. `s3://` prefixes are listed by the
  flow through Metaflow's S3 client.
- `split_shards`: contiguous, balanced slices of the input list, never an empty one: every input lands in exactly
  one shard, whatever the shard count.
- `score_shard`: read a shard's files (through the `Reader` it is given: `read_local_files` here, Metaflow's S3
  client in the flow), normalise each with `fmnist.images.normalise.prepare_upload` and score them in batches with
  `fmnist.release.classifier.Classifier`: the service's own path, so a row holds what `/predict/batch` answers for the
  same bytes. A file that cannot be read or decoded (empty, truncated, corrupt, not an image, too large) is a row with
  an `error` and no prediction, never a failed shard. Each batch's rows go to `on_rows` as soon as they exist, so the
  flow can checkpoint them; a retried shard passes the rows it already has as `done` and scores only the rest.
- `rows_frame`, `table_bytes`, `summarize`: the rows as one pandas table (Parquet or CSV bytes) and what the card
  reports about it (class distribution against the training prior, unsure answers and why, unreadable files, the
  drift signals the service computes).

Longer than most modules (about 480 lines) on purpose: listing, sharding, scoring and tabulating share the row's
shape and its error rules, and ScoreFlow reads them as one contract.
"""

from __future__ import annotations

import functools
import heapq
import io
import itertools
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fmnist.core.config import CONFIG_DIR, BatchConfig, KubernetesConfig, check_one_engine
from fmnist.images.uploads import DEFAULT_MAX_PIXELS
from fmnist.trust.drift import DriftReference, DriftThresholds, DriftWindow, image_statistics, js_divergence

# torch, scipy and Pillow are imported where a shard scores, not here: Metaflow imports the flow file, and with it
# this module, again for every card refresh and CLI command, which should not pay seconds for them each time.
if TYPE_CHECKING:
    from fmnist.images.normalise import Prepared
    from fmnist.release.classifier import Classifier
    from fmnist.release.model_record import ModelRecord

log = logging.getLogger(__name__)

SCORE_CONFIG_DIR = CONFIG_DIR / "score"
DEFAULT_SCORE_PROFILE_PATH = SCORE_CONFIG_DIR / "default.yaml"
# Columns of the table, before one probability column per class (`probability_column`).
BASE_COLUMNS = (
    "path",
    "class_index",
    "class_name",
    "probability",
    "confident",
    "class_confident",
    "unsure_reason",
    "family",
    "inverted",
    "error",
    "mean_pixel",
    "foreground",
)
# Least confident scored images each shard keeps as 28x28 thumbnails for the card.
THUMBNAILS = 12


# ------------------------------------------------------------------------------------------------------ profile
class _Strict(BaseModel):
    # Typos in a profile must fail loudly instead of silently scoring with a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScoreCompute(_Strict):
    """Where and how the score step (one task per shard) runs; `batch` and `retries` are read by the same flow
    mutator as FashionFlow's train step (`flows/shared_cloud.py`)."""

    # "auto": CUDA when present (torch), else the CPU (ONNX Runtime where installed, as the service).
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Threads decoding and normalising a shard's images. None: every core the task may use.
    threads: int | None = Field(None, ge=1, le=256)
    # Run the score step on AWS Batch with these resources (`gpu: 0` for CPU jobs); None scores where the flow runs.
    batch: BatchConfig | None = None
    # Or on Kubernetes (`gpu: 0` for CPU pods); a profile naming both `batch` and `kubernetes` is refused.
    kubernetes: KubernetesConfig | None = None
    # Retries of a failed shard where the flow runs (Batch and Kubernetes use their own `retries`); a retry keeps the
    # rows scored.
    retries: int = Field(0, ge=0, le=10)
    # Seconds between checkpoints of a shard's rows to the datastore; 0 saves after every batch.
    checkpoint_seconds: float = Field(30.0, ge=0.0, le=3600.0)

    @model_validator(mode="after")
    def _one_engine(self) -> ScoreCompute:
        check_one_engine(self.batch, self.kubernetes)
        return self


class ScoreProfile(_Strict):
    """A ScoreFlow profile (`configs/score/*.yaml`); every field states its default and why."""

    name: str = "default"
    # Shards scored side by side (one foreach task each); fewer when there are fewer inputs.
    shards: int = Field(2, ge=1, le=10_000)
    # Images per forward pass: large enough that the network's per-call overhead vanishes, small enough that a
    # killed shard loses little when checkpoints follow every batch.
    batch_size: int = Field(256, ge=1, le=8192)
    # The service's limits (`FASHIONFLOW_MAX_BODY_BYTES`, `FASHIONFLOW_MAX_IMAGE_PIXELS` defaults): a file the
    # service would refuse is an error row here too.
    max_file_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=784)
    compute: ScoreCompute = ScoreCompute()


class ScoreProfileError(ValueError):
    """A score profile that cannot be used; the message names the field and the problem."""


def parse_score_profile(text: str) -> dict[str, Any]:
    """Parse and validate a score profile's YAML; the full profile, defaults filled in, as plain data (the parser
    ScoreFlow hands to Metaflow's `Config`, so a bad profile fails before any step runs)."""
    try:
        raw = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as err:
        raise ScoreProfileError(f"score profile is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ScoreProfileError(f"score profile must be a mapping of settings, got {type(raw).__name__}")
    try:
        return ScoreProfile(**raw).model_dump(mode="json")
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise ScoreProfileError(f"invalid score profile: {problems}") from None


# ------------------------------------------------------------------------------------------------------- inputs
def list_inputs(source: str | Path) -> list[str]:
    """The images to score: every file under a folder (recursively, sorted, hidden files and folders skipped), or
    the lines of a list file (blank lines and `#` comments skipped; relative paths are relative to the list file;
    `s3://` URLs kept as they are). Duplicates are dropped, first occurrence kept. Raises FileNotFoundError."""
    path = Path(source).expanduser()
    if path.is_dir():
        found = _walk(path)
    elif path.is_file():
        found = list(_list_file_entries(path))
    else:
        raise FileNotFoundError(f"input {str(source)!r} is neither a folder nor a list file")
    unique = list(dict.fromkeys(found))
    if len(unique) < len(found):
        log.info("%s: %d duplicate entries dropped", source, len(found) - len(unique))
    return unique


def _walk(folder: Path) -> list[str]:
    """Every entry under `folder` that is not a folder, sorted, hidden names skipped. Symlinked folders are followed
    (each real folder once, so a link cycle ends), and a broken symlink is listed too: reading it fails, and it
    becomes a row with the reason instead of vanishing."""
    found: list[Path] = []
    seen: set[str] = set()
    for root, folders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            folders[:] = []
            continue
        seen.add(real)
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [Path(root, name) for name in files if not name.startswith(".")]
    return [str(p) for p in sorted(found)]


def display_path(path: str) -> str:
    """`path` as the table holds it: a file name that is not valid UTF-8 (held by Python as surrogate escapes, which
    Parquet and CSV cannot store) gets its undecodable bytes as \\xNN escapes; any other path is unchanged."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return path


def _list_file_entries(path: Path) -> Iterator[str]:
    for line in path.read_text().splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if entry.startswith("s3://") or Path(entry).is_absolute():
            yield entry
        else:
            yield str((path.parent / entry).resolve())


def split_shards(count: int, shards: int) -> list[tuple[int, int]]:
    """(start, stop) of each shard of `count` inputs: contiguous, sizes differing by at most one, in input order,
    never empty; min(shards, count) of them, so every input is in exactly one shard (none for no input)."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    used = min(shards, count)
    bounds = [count * i // used for i in range(used + 1)] if used else [0]
    return list(itertools.pairwise(bounds))


# ------------------------------------------------------------------------------------------------------ reading
@dataclass(frozen=True)
class Unreadable:
    """A file that could not be read; `reason` becomes the row's error."""

    reason: str


# Paths -> each file's bytes or why it could not be read, in order.
Reader = Callable[[Sequence[str]], list[bytes | Unreadable]]


def read_local_files(max_bytes: int) -> Reader:
    """A `Reader` of local files, refusing (as an `Unreadable`) any file over `max_bytes` before reading it."""

    def read(paths: Sequence[str]) -> list[bytes | Unreadable]:
        return [_read_local(path, max_bytes) for path in paths]

    return read


def _read_local(path: str, max_bytes: int) -> bytes | Unreadable:
    try:
        size = os.stat(path).st_size
        if size > max_bytes:
            return Unreadable(too_large(size, max_bytes))
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        return Unreadable(f"cannot read the file: {err.strerror or err}")


def too_large(size: int, max_bytes: int) -> str:
    """The error of a file over the size limit (the service answers such a body 413)."""
    return f"file is {size} bytes, over the limit of {max_bytes}"


# ------------------------------------------------------------------------------------------------------ scoring
def build_classifier(record: ModelRecord, device: str = "auto", threads: int = 1) -> Classifier:
    """The record as the service builds it under `FASHIONFLOW_RUNTIME=auto`: ONNX Runtime on a CPU where it can be
    used (else torch, with a log line), torch on a GPU."""
    from fmnist.core.runtime import pick_device
    from fmnist.release.classifier import Classifier
    from fmnist.release.scoring_graph import RuntimeUnavailable

    target = pick_device(device)
    if target.type == "cpu":
        try:
            return Classifier(record, target, "onnxruntime", threads)
        except RuntimeUnavailable as err:
            log.warning("scoring with torch, not ONNX Runtime: %s", err)
    return Classifier(record, target, "torch", threads)


def probability_column(class_name: str) -> str:
    """The table column of a class's calibrated probability: `p_` and the name in lower case, other characters
    as underscores ("T-shirt/top" -> "p_t_shirt_top")."""
    return "p_" + re.sub(r"[^0-9a-z]+", "_", class_name.lower()).strip("_")


@dataclass
class ShardOutcome:
    """What one shard produced: its rows (input order), how long the new ones took, and the least confident."""

    rows: list[dict[str, Any]]
    scored: int  # rows produced by this call (the rest came from `done`)
    seconds: float  # wall time of this call
    # (probability, path, (28, 28) uint8 model input) of the least confident images this call scored.
    least_confident: list[tuple[float, str, np.ndarray]] = field(default_factory=list)


def score_shard(
    classifier: Classifier,
    paths: Sequence[str],
    read: Reader,
    *,
    batch_size: int = 256,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    threads: int | None = None,
    done: Iterable[dict[str, Any]] = (),
    on_rows: Callable[[list[dict[str, Any]]], None] | None = None,
) -> ShardOutcome:
    """One row per path (in `paths` order): the rows in `done` kept as they are, every other path read, normalised
    and scored in batches of `batch_size`; `on_rows` receives each batch's new rows as soon as they exist."""
    from fmnist.core.runtime import available_cores

    start = time.perf_counter()
    kept = {row["path"]: row for row in done}  # by the table's form of the path (`display_path`)
    todo = [p for p in paths if display_path(p) not in kept]
    if kept:
        log.info(
            "%d of %d images already scored by an earlier attempt; scoring the other %d",
            len(kept),
            len(paths),
            len(todo),
        )
    names = list(classifier.record.class_names)
    least: list[tuple[float, str, np.ndarray]] = []
    new: dict[str, dict[str, Any]] = {}
    workers = threads or available_cores()
    # One thread decodes in the calling thread: handing each file to a pool thread and back costs two thread switches
    # a file, CPU spent for no parallelism (and a visible share of a 28x28 scan's cost).
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prepare") if workers > 1 else _Inline() as pool:
        for first in range(0, len(todo), batch_size):
            batch = todo[first : first + batch_size]
            rows, inputs = _score_batch(classifier, batch, read(batch), pool, max_pixels, names)
            least = _least_confident(least, rows, inputs)
            new.update(zip(batch, rows, strict=True))
            if on_rows is not None:
                on_rows(rows)
            log.info("scored %d of %d images", len(kept) + len(new), len(paths))
    rows = [kept[display_path(p)] if display_path(p) in kept else new[p] for p in paths]
    return ShardOutcome(rows, len(new), time.perf_counter() - start, least)


class _Inline:
    """A stand-in for a one-thread pool: `map` runs in the calling thread."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        return map(fn, items)


def _score_batch(
    classifier: Classifier,
    paths: Sequence[str],
    contents: Sequence[bytes | Unreadable],
    pool: ThreadPoolExecutor | _Inline,
    max_pixels: int,
    names: Sequence[str],
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Rows of one batch (input order) and the model inputs of its scored images by path."""
    from fmnist.images.normalise import Prepared

    prepared = list(pool.map(lambda content: _prepare(content, max_pixels), contents))
    good = [i for i, p in enumerate(prepared) if isinstance(p, Prepared)]
    ready = [p for p in prepared if isinstance(p, Prepared)]
    rows: list[dict[str, Any]] = [
        _error_row(path, p if isinstance(p, str) else "", names) for path, p in zip(paths, prepared, strict=True)
    ]
    if not ready:
        return rows, {}
    pixels = np.stack([p.pixels for p in ready])  # (b, 28, 28) uint8
    scored = classifier.score(pixels, [p.empty for p in ready], [p.photo for p in ready])
    mean_pixel, foreground = image_statistics(pixels)  # (b,), (b,): the drift signals' input statistics
    columns = _probability_columns(tuple(names))
    for j, (i, answer) in enumerate(zip(good, scored, strict=True)):
        probabilities = answer.probabilities.tolist()  # Python floats, as float() of each element gives
        best = answer.label
        rows[i] = {
            "path": display_path(paths[i]),
            "class_index": best,
            "class_name": names[best],
            "probability": probabilities[best],
            "confident": answer.confident,
            "class_confident": answer.class_confident,
            "unsure_reason": answer.unsure_reason,
            "family": answer.family,
            "inverted": ready[j].inverted,
            "error": None,
            "mean_pixel": float(mean_pixel[j]),
            "foreground": float(foreground[j]),
            **dict(zip(columns, probabilities, strict=True)),
        }
    return rows, {display_path(paths[i]): pixels[j] for j, i in enumerate(good)}


def _prepare(content: bytes | Unreadable, max_pixels: int) -> Prepared | str:
    """The model input of one file, or why there is none (the row's error)."""
    from fmnist.images.normalise import prepare_upload
    from fmnist.images.uploads import ImageError

    if isinstance(content, Unreadable):
        return content.reason
    try:
        return prepare_upload(content, max_pixels)
    except ImageError as err:  # what the service answers 413 or 422, with the same message
        return str(err)
    except Exception as err:  # a decoder failure nobody foresaw: one bad file must not fail the shard
        log.warning("unexpected error decoding an image: %r", err)
        return f"cannot decode the image: {type(err).__name__}: {err}"


def _error_row(path: str, error: str, names: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(BASE_COLUMNS)
    row.update({"path": display_path(path), "error": error})
    row.update(dict.fromkeys(_probability_columns(tuple(names))))
    return row


@functools.lru_cache(maxsize=8)
def _probability_columns(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(probability_column(n) for n in names)


def _least_confident(
    kept: list[tuple[float, str, np.ndarray]], rows: Sequence[dict[str, Any]], inputs: dict[str, np.ndarray]
) -> list[tuple[float, str, np.ndarray]]:
    """The THUMBNAILS least confident of `kept` and the scored `rows`: (probability, path, model input)."""
    fresh = [(row["probability"], row["path"], inputs[row["path"]]) for row in rows if row["error"] is None]
    return heapq.nsmallest(THUMBNAILS, [*kept, *fresh], key=lambda item: item[0])


# -------------------------------------------------------------------------------------------------------- table
def rows_frame(rows: Sequence[dict[str, Any]], class_names: Sequence[str]) -> Any:
    """The rows as a pandas DataFrame with typed, nullable columns (an error row has no prediction)."""
    import pandas as pd

    columns = [*BASE_COLUMNS, *(probability_column(n) for n in class_names)]
    frame = pd.DataFrame.from_records(list(rows), columns=columns)
    types = {"path": "string", "class_index": "Int64", "class_name": "string", "confident": "boolean"}
    types["class_confident"] = "boolean"
    types.update({"unsure_reason": "string", "family": "string", "inverted": "boolean", "error": "string"})
    types.update(
        {c: "Float64" for c in columns if c.startswith("p_") or c in ("probability", "mean_pixel", "foreground")}
    )
    return frame.astype(types)


def table_bytes(frame: Any, fmt: Literal["parquet", "csv"] = "parquet") -> bytes:
    """The table as Parquet (pyarrow) or CSV bytes."""
    if fmt == "csv":
        return frame.to_csv(index=False).encode()
    buffer = io.BytesIO()
    frame.to_parquet(buffer, engine="pyarrow", index=False)
    return buffer.getvalue()


def read_table(data: bytes) -> Any:
    """Parquet bytes (`table_bytes`) -> the pandas DataFrame."""
    import pandas as pd

    return pd.read_parquet(io.BytesIO(data), engine="pyarrow").convert_dtypes()


# ------------------------------------------------------------------------------------------------------ summary
def summarize(frame: Any, record: ModelRecord) -> dict[str, Any]:
    """What a reader of the card wants to know about a scored table, as plain data: counts, classes against the
    training prior, unsure answers by reason, the confident answers sure of the garment family alone (a photo whose
    exact class is unsure but whose family is not: `confident` true, `class_confident` false), unreadable files, and
    the service's drift signals over the whole catalogue against the model's reference."""
    names = list(record.class_names)
    reference = _reference(record)
    scored = frame[frame["error"].isna()]
    counts = np.bincount(scored["class_index"].to_numpy(dtype=np.int64), minlength=len(names))
    n = len(scored)
    unsure = scored[~scored["confident"].astype(bool)]
    family_only = scored[scored["confident"].astype(bool) & ~scored["class_confident"].astype(bool)]
    prior = np.asarray(reference.class_prior, dtype=float)
    return {
        "images": len(frame),
        "scored": n,
        "unreadable": len(frame) - n,
        "classes": [
            {"class": name, "count": int(c), "share": float(c / n) if n else 0.0, "prior": float(p)}
            for name, c, p in zip(names, counts, prior, strict=True)
        ],
        "class_divergence": js_divergence(counts.astype(float), prior) if n else None,
        "unsure": len(unsure),
        "unsure_share": len(unsure) / n if n else None,
        "unsure_reasons": {str(k): int(v) for k, v in unsure["unsure_reason"].value_counts().items()},
        "family_only": {str(k): int(v) for k, v in family_only["family"].dropna().value_counts().items()},
        "errors": [
            {"path": p, "error": e}
            for p, e in frame.loc[frame["error"].notna(), ["path", "error"]].itertuples(index=False)
        ],
        "drift": _drift(scored, reference, len(names)),
    }


def _reference(record: ModelRecord) -> DriftReference:
    if record.reference:
        try:
            return DriftReference.from_dict(record.reference)
        except (KeyError, TypeError, ValueError) as err:
            log.warning("drift reference unreadable (%s); using a uniform class prior", err)
    return DriftReference.uniform(len(record.class_names))


def _drift(scored: Any, reference: DriftReference, num_classes: int) -> dict[str, Any]:
    """The service's drift signals with the whole catalogue as the window (`fmnist.trust.drift`, default thresholds)."""
    window = DriftWindow(max(1, len(scored)), num_classes)
    for row in scored[["class_index", "confident", "inverted", "mean_pixel", "foreground"]].itertuples(index=False):
        window.add(int(row[0]), not bool(row[1]), bool(row[2]), float(row[3]), float(row[4]))
    summary = window.summary(reference, DriftThresholds())
    return {
        "count": summary.count,
        "min_samples": summary.min_samples,
        "drifting": summary.drifting,
        "signals": [
            {
                "name": s.name,
                "value": s.value,
                "reference": s.reference,
                "threshold": s.threshold,
                "past_threshold": s.past_threshold,
            }
            for s in summary.signals
        ],
    }
