"""Finding a FashionFlow run through Metaflow's Client API, and reading its model record.

Every lookup spans all users' namespaces: the run to serve, score or judge may belong to anyone. Errors say which
run was looked for, why it cannot be used, and which metadata provider was asked.
"""

from __future__ import annotations

from typing import Any

from metaflow import Flow, Run, get_metadata, namespace
from metaflow.exception import MetaflowException, MetaflowNotFound

from registry.artifacts import LEGACY_MODEL, MODEL, MODEL_FLOW


class RunLookupError(RuntimeError):
    """No usable run: not found, not finished, or without a model record; the message says which and why."""


class NoRunError(RunLookupError):
    """Nothing to choose from: the flow has never run (successfully), or no successful run carries the tag."""


def pathspec(name: str, flow: str = MODEL_FLOW) -> str:
    """ "<flow>/<id>" for a run id; a pathspec as it is."""
    return name if "/" in name else f"{flow}/{name}"


def describe_metadata() -> str:
    """Which metadata provider the Client API asks, for error messages ("metadata local@/path")."""
    return f"metadata {get_metadata()}"


def find_run(run: str | None = None, tag: str | None = None, flow: str = MODEL_FLOW) -> Any:
    """The Metaflow Run `run` (a pathspec or an id), else the newest successful run tagged `tag`, else the flow's
    latest successful run. The run must have finished successfully."""
    namespace(None)
    try:
        if run:
            found = Run(pathspec(run, flow))
            if not found.successful:
                raise RunLookupError(f"run {found.pathspec} did not finish successfully; it has no final model")
            return found
        if tag:
            tagged = newest_tagged(tag, flow)
            if tagged is None:
                raise NoRunError(f"no successful {flow} run is tagged {tag!r} ({describe_metadata()})")
            return tagged
        latest = latest_successful(flow)
        if latest is None:
            raise NoRunError(f"flow {flow} has no successful run yet ({describe_metadata()})")
        return latest
    except MetaflowNotFound as err:
        if run:
            raise RunLookupError(f"cannot find {run} in Metaflow ({describe_metadata()}): {err}") from None
        raise NoRunError(f"no {flow} run exists ({describe_metadata()}): {err}") from None
    except MetaflowException as err:
        what = run or (f"tag {tag!r}" if tag else f"latest successful {flow}")
        raise RunLookupError(f"cannot find {what} in Metaflow ({describe_metadata()}): {err}") from None


def latest_successful(flow: str = MODEL_FLOW) -> Any | None:
    """The successful run of `flow` started last, or None: by run id where every id is a number (the local metadata
    provider's start timestamps, the metadata service's sequence), else by when the run finished.

    Not `Flow.latest_successful_run`: it goes by the runs' creation time, which the local metadata provider rewrites
    whenever a run's tags change, so tagging an old run would make it "the latest". Where the ids are numbers only the
    runs newer than the latest successful one are read beyond their listing."""
    namespace(None)
    runs = list(Flow(flow))
    if all(run.id.isdigit() for run in runs):
        return next((run for run in sorted(runs, key=lambda run: int(run.id), reverse=True) if run.successful), None)
    return max((run for run in runs if run.successful), key=lambda run: run.finished_at or run.created_at, default=None)


def newest_tagged(tag: str, flow: str = MODEL_FLOW) -> Any | None:
    """The newest successful run of `flow` carrying `tag` (what `fmnist-serve --tag` serves), or None."""
    namespace(None)
    # Newest by when the run finished, not in `runs()` order: that order is the runs' creation time, which the local
    # metadata provider rewrites whenever a run's tags change (so two runs tagged within a millisecond tie, and fall
    # in directory order).
    tagged = [run for run in Flow(flow).runs(tag) if run.successful]
    return max(tagged, key=lambda run: run.finished_at or run.created_at, default=None)


def artifact(data: Any, name: str, default: Any = None) -> Any:
    """The artifact `name` of a task's `data`, or `default` where the run has none by that name."""
    try:
        return getattr(data, name)
    except AttributeError:
        return default


def end_data(run: Any) -> Any:
    """The artifacts of the run's end step, which carries every artifact the flow produced."""
    return run["end"].task.data


def model_record_bytes(run: Any) -> bytes:
    """The run's model record (safetensors bytes; `calibrated_model`, or `model` in older runs)."""
    data = end_data(run)
    blob = artifact(data, MODEL) or artifact(data, LEGACY_MODEL)
    if blob is None:
        raise RunLookupError(f"run {run.pathspec} has no {MODEL!r} artifact; was it produced by {MODEL_FLOW}?")
    return bytes(blob)
