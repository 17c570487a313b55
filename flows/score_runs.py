"""ScoreFlow's side of Metaflow's Client API: which FashionFlow run's model scores the catalogue, and the tags that
link the two runs.

The start step copies the model record into the ScoreFlow run (`model_record`), so the shards, wherever they run,
never need the Client API (a Batch container has none without a metadata service).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from metaflow import Run, namespace
from metaflow.exception import MetaflowException

from registry.artifacts import CONFIG, DATA_FINGERPRINT, MODEL_FLOW, TEST_ACCURACY
from registry.runs import NoRunError, RunLookupError, artifact, end_data, find_run, model_record_bytes

log = logging.getLogger("score_runs")

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
    across every user's namespace, as the service looks (`registry.runs`)."""
    try:
        run = find_run(requested or None, tag)
        record = model_record_bytes(run)
    except NoRunError as err:
        raise ModelRunError(f"{err}; name one with --run {MODEL_FLOW}/<id>") from None
    except RunLookupError as err:
        raise ModelRunError(str(err)) from None
    data = end_data(run)
    profile = artifact(data, CONFIG) or {}
    facts = {
        "created_at": str(run.created_at),
        "tags": sorted(run.user_tags),
        "profile": profile.get("name") if isinstance(profile, dict) else None,
        "test_accuracy": artifact(data, TEST_ACCURACY),
        "data_fingerprint": artifact(data, DATA_FINGERPRINT),
    }
    return ModelRun(run.pathspec, record, facts)


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
