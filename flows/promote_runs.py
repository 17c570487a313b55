"""PromoteFlow's side of Metaflow's Client API: find the candidate and the champion, read what the gate judges
(their profiles and evaluation reports, as plain data), and move the tag that marks the served model.

The rules themselves are `fmnist.promotion`'s, which never imports Metaflow.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from metaflow import Flow, Run, namespace

from fmnist.promotion import RunFacts
from registry.artifacts import CONFIG, LEGACY_PROFILE, MODEL_FLOW, REPORT
from registry.runs import artifact, latest_successful, newest_tagged, pathspec

log = logging.getLogger("promotion")

CANDIDATE_FLOW = MODEL_FLOW
# User tags PromoteFlow writes; a run promoted again gets the new ones in place of the old (a run holds at most 50
# user tags). The full history is in the PromoteFlow runs (the `decision` artifact).
PROMOTION_TAGS = ("promoted_by:", "promoted_at:", "promotion:")
RETIREMENT_TAGS = ("retired_by:", "retired_at:")


class PromotionError(RuntimeError):
    """The candidate cannot be judged (no such run, not finished); the message says which run and why."""


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def find_candidate(requested: str, trigger: Any) -> Any:
    """The run to judge: `requested` (a pathspec or run id), else the run that triggered this one, else the latest
    successful FashionFlow run. It must have finished successfully."""
    namespace(None)  # the candidate and the champion may belong to any user
    if requested:
        run = Run(pathspec(requested, CANDIDATE_FLOW))
    elif trigger is not None and getattr(trigger, "run", None) is not None:
        run = trigger.run
    else:
        latest = latest_successful(CANDIDATE_FLOW)
        if latest is None:
            raise PromotionError(f"{CANDIDATE_FLOW} has no successful run to promote")
        run = latest
    if not run.successful:
        raise PromotionError(f"candidate {run.pathspec} did not finish successfully")
    return run


def find_champion(tag: str, flow: str = CANDIDATE_FLOW) -> Any | None:
    """The newest successful run carrying `tag` (what `fmnist-serve --tag` serves), or None."""
    return newest_tagged(tag, flow)


def run_facts(run: Any) -> RunFacts:
    """What the gate reads from a run: its profile (`config`, or `profile` in older runs) and evaluation report."""
    data = run.data
    profile = artifact(data, CONFIG) or artifact(data, LEGACY_PROFILE) or {}
    report = artifact(data, REPORT)
    created = run.created_at.isoformat(timespec="seconds") if hasattr(run.created_at, "isoformat") else None
    return RunFacts(
        pathspec=run.pathspec, profile=_plain(profile), report=_plain(report) if report else None, created_at=created
    )


def _plain(value: Any) -> Any:
    """JSON round trip: plain dicts, lists and scalars, as the rules take them."""
    return json.loads(json.dumps(value, default=str))


def move_tag(tag: str, candidate: str, promotion: str, user: str, when: str) -> list[str]:
    """Put `tag` on `candidate` with who, when and which PromoteFlow run decided; take it off every other run of the
    flow. Returns the runs it was taken off.

    The candidate is tagged first, so some run carries the tag at every moment: a service following it never finds
    none (while both carry it, it keeps the newest, then the candidate). Two promotions at once end with one
    champion: `settle` keeps the tag on the newest promotion's run only, whichever of them settles last."""
    put_tag(tag, candidate, promotion, user, when)
    return settle(tag, candidate, promotion, when)


def put_tag(tag: str, candidate: str, promotion: str, user: str, when: str) -> None:
    """Tag `candidate` with `tag` and who, when and which promotion; its earlier promotion records are replaced."""
    namespace(None)
    run = Run(candidate)
    stale = [t for t in run.user_tags if t.startswith(PROMOTION_TAGS)]
    run.replace_tags(stale, [tag, f"promoted_by:{user}", f"promoted_at:{when}", f"promotion:{promotion}"])


def promotion_order(run: Any) -> tuple[str, int, str]:
    """Sort key of the promotion that tagged `run`: its time, then its PromoteFlow run id (ids grow with time);
    a run tagged by hand, with no record, sorts first."""
    tags = dict(t.split(":", 1) for t in run.user_tags if t.startswith(("promoted_at:", "promotion:")))
    by = tags.get("promotion", "")
    run_id = by.rsplit("/", 1)[-1]
    return tags.get("promoted_at", ""), int(run_id) if run_id.isdigit() else -1, by


def settle(tag: str, candidate: str, promotion: str, when: str) -> list[str]:
    """Leave `tag` on one run only: of those carrying it, the newest promotion's (`promotion_order`). Every promotion
    settles after tagging, so the last to settle sees every tag put before it and the newest is never taken off:
    concurrent promotions converge on it. Returns the runs the tag was taken off (the candidate among them when a
    newer promotion won)."""
    namespace(None)
    holders = {r.pathspec: r for r in Flow(candidate.split("/")[0]).runs(tag)}
    holders.setdefault(candidate, Run(candidate))
    winner = max(holders.values(), key=promotion_order).pathspec
    retired = []
    for held, other in sorted(holders.items()):
        if held == winner:
            continue
        stale = [t for t in other.user_tags if t.startswith(RETIREMENT_TAGS)]
        other.replace_tags([tag, *stale], [f"retired_by:{promotion}", f"retired_at:{when}"])
        retired.append(held)
    if winner != candidate:
        log.warning("a newer promotion put %r on %s: %s keeps it, %s does not", tag, winner, winner, candidate)
    log.info("%s tagged %r (%s); untagged: %s", winner, tag, promotion, retired or "none")
    return retired
