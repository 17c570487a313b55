"""ScoreFlow's side of Metaflow's Client API: which FashionFlow run's model scores the catalogue, and the tags that
link the two runs.

The start step copies the model record into the ScoreFlow run (`model_record`), so the shards, wherever they run,
never need the Client API (a Batch container has none without a metadata service).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from metaflow import Flow, Run, namespace
from metaflow.exception import MetaflowException, MetaflowNotFound

log = logging.getLogger("score_runs")

MODEL_FLOW = "FashionFlow"
# The tag on a FashionFlow run naming the ScoreFlow run that used its model last; the previous one is replaced, as a
# run holds at most 50 user tags. Every scoring run names its model run in its own `model_run` artifact.
SCORED_BY = "scored_by:"


class ModelRunError(RuntimeError):
    """No usable model run: not found, not finished, or without a model record; the message says which and why."""


@dataclass(frozen=True)
class ModelRun:
    """The run whose model scores the catalogue: its pathspec, record bytes, and what the card shows of it."""

    pathspec: str
    record: bytes
    facts: dict[str, Any]  # created_at, tags, profile name, test accuracy, data fingerprint


def find_model_run(requested: str, tag: str) -> ModelRun:
    """The run `requested` ("FashionFlow/<id>" or the id), else the newest successful FashionFlow run tagged `tag`;
    across every user's namespace, as the service looks."""
    namespace(None)
    try:
        run = _select(requested, tag)
    except MetaflowNotFound as err:
        raise ModelRunError(f"cannot find {requested or MODEL_FLOW}: {err}") from None
    if not run.successful:
        raise ModelRunError(f"{run.pathspec} did not finish successfully; it has no final model")
    data = run["end"].task.data
    record = _artifact(data, "calibrated_model") or _artifact(data, "model")  # "model": runs before the rename
    if record is None:
        raise ModelRunError(f"{run.pathspec} has no 'calibrated_model' artifact; was it produced by FashionFlow?")
    profile = _artifact(data, "config") or {}
    facts = {
        "created_at": str(run.created_at),
        "tags": sorted(run.user_tags),
        "profile": profile.get("name") if isinstance(profile, dict) else None,
        "test_accuracy": _artifact(data, "test_accuracy"),
        "data_fingerprint": _artifact(data, "data_fingerprint"),
    }
    return ModelRun(run.pathspec, bytes(record), facts)


def _select(requested: str, tag: str) -> Any:
    if requested:
        return Run(requested if "/" in requested else f"{MODEL_FLOW}/{requested}")
    for run in Flow(MODEL_FLOW).runs(tag):  # newest first
        if run.successful:
            return run
    raise ModelRunError(f"no successful {MODEL_FLOW} run is tagged {tag!r}; name one with --run {MODEL_FLOW}/<id>")


def _artifact(data: Any, name: str) -> Any:
    try:
        return getattr(data, name)
    except AttributeError:
        return None


def mark_used(model_run: str, scoring_run: str) -> None:
    """Tag the model run `scored_by:<scoring run>` (replacing an older such tag) and the scoring run
    `model:<model run>`. A tag is a convenience, never a reason to fail a finished scoring: errors are logged."""
    try:
        namespace(None)
        run = Run(model_run)
        stale = [t for t in run.user_tags if t.startswith(SCORED_BY)]
        run.replace_tags(stale, [SCORED_BY + scoring_run])
        Run(scoring_run).add_tag(f"model:{model_run}")
    except MetaflowException as err:
        log.warning("could not tag %s and %s: %s", model_run, scoring_run, err)
