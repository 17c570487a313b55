"""ScoreFlow's reading and writing: inputs from a folder, a list file or an `s3://` prefix (Metaflow's S3 client),
the table to a folder or an `s3://` prefix, and each shard's rows checkpointed to the run's datastore.

Checkpoints: a shard saves the rows it has scored since its last save as one more Parquet part under
<datastore root>/ScoreFlow/<run>/score/<task>/checkpoint/rows-<n>.parquet (the local folder, or S3 on Batch), as
`flows/fashion_checkpoints.py` does for training; attempts of one task share the folder, so a retried shard reads
every part back and scores only the images no part holds.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

from metaflow import S3, current

from fmnist.core.faults import failing, kill_point
from fmnist.release.catalogue import (
    Reader,
    Unreadable,
    list_inputs,
    read_local_files,
    read_table,
    table_bytes,
    too_large,
)

log = logging.getLogger("score_io")

S3_SCHEME = "s3://"
# Test hooks, as FashionFlow's (`fmnist.pipeline`): shards that raise before scoring ("1,2"), and shard:batches
# pairs ("1:2") whose first attempt SIGKILLs itself right after checkpointing that many batches, standing in for a
# reclaimed spot instance.
FAIL_SHARDS_ENV = "SCOREFLOW_FAIL_SHARDS"
KILL_SHARDS_ENV = "SCOREFLOW_KILL_SHARDS"


# ------------------------------------------------------------------------------------------------------- inputs
def list_sources(source: str) -> list[str]:
    """Every input of `source`: an `s3://` prefix (every object under it, sorted, but the zero-byte "folder" markers
    that consoles create, keys ending in /), a folder or a list file."""
    if source.startswith(S3_SCHEME):
        with S3() as s3:
            return sorted(obj.url for obj in s3.list_recursive([source]) if not obj.url.endswith("/"))
    return list_inputs(source)


def reader_for(paths: Sequence[str], max_bytes: int) -> Reader:
    """A `Reader` for these paths: Metaflow's S3 client when any is an `s3://` URL, local files otherwise."""
    local = read_local_files(max_bytes)
    if not any(p.startswith(S3_SCHEME) for p in paths):
        return local

    def read(batch: Sequence[str]) -> list[bytes | Unreadable]:
        remote = [p for p in batch if p.startswith(S3_SCHEME)]
        fetched = dict(zip(remote, _read_s3(remote, max_bytes), strict=True))
        on_disk = iter(local([p for p in batch if not p.startswith(S3_SCHEME)]))
        return [fetched[p] if p.startswith(S3_SCHEME) else next(on_disk) for p in batch]

    return read


def _read_s3(urls: Sequence[str], max_bytes: int) -> list[bytes | Unreadable]:
    """Objects' bytes, in parallel; sizes are checked first (one HEAD each), so an enormous object is never fetched."""
    if not urls:
        return []
    with S3() as s3:
        infos = {info.url: info for info in s3.info_many(list(urls), return_missing=True)}
        wanted = [u for u in urls if infos[u].exists and (infos[u].size or 0) <= max_bytes]
        blobs = {obj.url: obj.blob for obj in s3.get_many(wanted, return_missing=True)} if wanted else {}
    results: list[bytes | Unreadable] = []
    for url in urls:
        info = infos[url]
        if not info.exists:
            results.append(Unreadable("cannot read the object: it does not exist"))
        elif url not in blobs:
            results.append(Unreadable(too_large(info.size or 0, max_bytes)))
        elif len(blobs[url] or b"") > max_bytes:  # grown since its HEAD, or a HEAD that gave a wrong size
            results.append(Unreadable(too_large(len(blobs[url]), max_bytes)))
        else:
            results.append(blobs[url] or b"")
    return results


# ------------------------------------------------------------------------------------------------------ outputs
def write_table(frame: Any, destination: str, name: str, fmt: str) -> str:
    """Write the table as `<destination>/<name>.<fmt>` (a folder, created if needed, or an `s3://` prefix); the URL."""
    data = table_bytes(frame, "csv" if fmt == "csv" else "parquet")
    filename = f"{name}.{'csv' if fmt == 'csv' else 'parquet'}"
    if destination.startswith(S3_SCHEME):
        url = destination.rstrip("/") + "/" + filename
        with S3() as s3:
            s3.put(url, data)
        return url
    folder = Path(destination).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / filename).write_bytes(data)
    return str(folder / filename)


# -------------------------------------------------------------------------------------------------- checkpoints
class ShardCheckpoint:
    """A shard's rows in the run's datastore, as Parquet parts: `restore` reads what earlier attempts saved, `save`
    adds the rows given since the last save once `every_seconds` have passed (or at once with 0)."""

    def __init__(self, flow: Any, class_names: Sequence[str], every_seconds: float, clock: Callable[[], float]) -> None:
        # The task's own datastore (local or S3), with the root and credentials its artifacts use.
        self.storage = flow._datastore.parent_datastore._storage_impl
        task = [current.flow_name, current.run_id, current.step_name, current.task_id]
        self.prefix = "/".join([*(str(part) for part in task), "checkpoint"])
        self.class_names, self.every, self.clock = list(class_names), every_seconds, clock
        self.pending: list[dict[str, Any]] = []
        self.parts = 0
        self.last = clock()

    def _key(self, part: int) -> str:
        return f"{self.prefix}/rows-{part:05d}.parquet"

    def restore(self) -> list[dict[str, Any]]:
        """Every row earlier attempts of this task saved, part by part until the first missing one."""
        rows: list[dict[str, Any]] = []
        while True:
            with self.storage.load_bytes([self._key(self.parts)]) as loaded:
                paths = [path for _, path, _ in loaded]
            if not paths or paths[0] is None:
                break
            frame = read_table(Path(paths[0]).read_bytes())
            rows += [_plain(row) for row in frame.to_dict("records")]
            self.parts += 1
        if rows:
            log.info(
                "attempt %d: restored %d scored rows from %d checkpoint parts",
                current.retry_count,
                len(rows),
                self.parts,
            )
        return rows

    def save(self, rows: list[dict[str, Any]], force: bool = False) -> bool:
        """Queue `rows`; write them as the next part when it is time. True when a part was written."""
        from fmnist.release.catalogue import rows_frame

        self.pending += rows
        if not self.pending or not (force or self.clock() - self.last >= self.every):
            return False
        data = table_bytes(rows_frame(self.pending, self.class_names))
        self.storage.save_bytes(iter([(self._key(self.parts), BytesIO(data))]), overwrite=True)
        self.parts, self.pending, self.last = self.parts + 1, [], self.clock()
        return True


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """A row read back from Parquet with pandas' missing values as None and numpy scalars as Python ones."""
    import pandas as pd

    return {k: (None if v is pd.NA or v is None else v.item() if hasattr(v, "item") else v) for k, v in row.items()}


# ---------------------------------------------------------------------------------------------------- test hooks
def failing_shards() -> set[int]:
    """Shards the test hook makes fail before scoring."""
    return failing(FAIL_SHARDS_ENV)


def kill_after(shard: int) -> int | None:
    """Batches after which the test hook SIGKILLs this shard's first attempt, or None."""
    return kill_point(KILL_SHARDS_ENV, shard)


def kill_now() -> None:
    """SIGKILL this task's process: no cleanup, no artifact, as a reclaimed instance."""
    log.warning("test hook: killing this shard (%s)", KILL_SHARDS_ENV)
    os.kill(os.getpid(), signal.SIGKILL)
