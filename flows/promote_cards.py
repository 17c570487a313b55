"""PromoteFlow's card: the verdict, then champion and candidate side by side, one row per rule."""

from __future__ import annotations

from typing import Any

from metaflow.cards import Markdown, Table

from fmnist.promotion import Decision, RunFacts


def _value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{100 * value:.2f}%" if -1.0 <= value <= 1.0 else f"{value:.4g}"
    return str(value)


def decision_card(decision: Decision, candidate: RunFacts, champion: RunFacts | None) -> list[Any]:
    """Markdown verdict, a table of the two runs, and a table of every rule with both runs' values."""
    verb = "Rollback" if decision.rollback else "Promotion"
    verdict = "**promoted**" if decision.promote else "**refused**"
    lines = [f"# {verb} to `{decision.tag}`: {verdict}", "", decision.summary()]
    if decision.failed:
        lines += ["", "Failed rules:"] + [f"- `{c.rule}`: {c.reason}" for c in decision.failed]
    lines += [f"- note: {note}" for note in decision.notes]
    runs: list[list[Any]] = [
        ["run", champion.pathspec if champion else "none yet", candidate.pathspec],
        ["profile", champion.profile_name if champion else "–", candidate.profile_name],
        [
            "training data",
            _data(champion) if champion else "–",
            _data(candidate),
        ],
        ["created", (champion.created_at or "?") if champion else "–", candidate.created_at or "?"],
    ]
    rules: list[list[Any]] = [
        [
            check.rule,
            check.kind,
            check.description,
            _value(check.champion),
            _value(check.candidate),
            _value(check.threshold),
            ("pass" if check.passed else "FAIL") if check.applied else "n/a",
            check.reason,
        ]
        for check in decision.checks
    ]
    return [
        Markdown("\n".join(lines)),
        Markdown("## The runs"),
        Table(runs, headers=["", "champion", "candidate"]),
        Markdown("## Rules (champion and candidate side by side)"),
        Table(rules, headers=["rule", "kind", "what", "champion", "candidate", "threshold", "verdict", "why"]),
    ]


def _data(facts: RunFacts) -> str:
    return "all training images" if facts.train_subset is None else f"subset of {facts.train_subset}"
