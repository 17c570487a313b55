"""The promotion gate: its rules on synthetic reports (every rule, champion or none, rollback), the rules file, and
PromoteFlow end to end on real smoke runs through Metaflow's Runner and Client APIs (refusal, promotion with the tag
moved and who/when recorded, rollback)."""

from __future__ import annotations

import base64
import json
import re
import uuid
from typing import Any

import metaflow
import pytest

from fmnist.core.data import CLASS_NAMES
from fmnist.evaluation.report_schema import EvaluationReport
from fmnist.promotion import (
    DEFAULT_RULES_PATH,
    PromotionRules,
    RulesError,
    RunFacts,
    decide,
    load_rules,
    parse_rules,
)
from tests.support.flows import session_datastore
from tests.support.hints import check_card_commands
from tests.support.releases import PROMOTE_FLOW, second_smoke_run

RULES = load_rules()
FULL = {"name": "default", "data": {"train_subset": None}}
SMOKE = {"name": "smoke", "data": {"train_subset": 3000}}


def report(
    accuracy: float = 0.923,
    half_width: float = 0.005,
    recalls: dict[str, float] | None = None,
    ece: float = 0.005,
    photo_relative: float = 0.93,
    coverage: float = 0.86,
    confident_accuracy: float | None = 0.972,
    nongarments: float = 0.983,
) -> dict[str, Any]:
    """A complete evaluation report (as the artifact stores it) with the numbers the rules read."""
    recall = {name: accuracy for name in CLASS_NAMES} | (recalls or {})
    per_class = [{"class": n, "precision": r, "recall": r, "f1": r, "support": 1000} for n, r in recall.items()]
    summary = {"temperature": 1.2, "ece": ece, "nll": 0.25, "mean_confidence": accuracy}
    row = {"condition": "grey_backdrop", "description": "", "severity": 0.5, "realistic": True, "count": 200}
    selective = {
        "num_examples": 10000,
        "num_confident": int(coverage * 10000),
        "coverage": coverage,
        "risk": None if confident_accuracy is None else 1 - confident_accuracy,
        "accuracy": confident_accuracy,
        "accuracy_all": accuracy,
        "flagged": {},
        "aurc": 0.01,
        "coverage_at_target_risk": coverage,
        "target_risk": 0.02,
        "confidence_threshold": 0.8,
        "ood_score": "mahalanobis",
        "ood_threshold": 10.0,
    }
    data = {
        "test": {
            "accuracy": accuracy,
            "accuracy_ci95": [accuracy - half_width, accuracy + half_width],
            "num_examples": 10000,
            "macro_f1": accuracy,
            "per_class_accuracy": recall,
            "per_class": per_class,
            "confusion_matrix": [[0] * 10 for _ in range(10)],
            "top_confusions": [],
        },
        "calibration": {
            "temperature": 1.2,
            "fitted_on": "validation",
            "validation_before": summary,
            "validation_after": summary,
            "test_before": summary,
            "test_after": summary,
        },
        "robustness": [],
        "photos": {
            "rows": [],
            "clean_accuracy": 0.9,
            "worst": {**row, "accuracy": 0.9 * photo_relative, "relative": photo_relative},
            "sample_size": 200,
            "photo_size": 224,
        },
        "abstention": {
            "policy": {},
            "test": selective,
            "risk_coverage": [],
            "nongarments": {"per_kind": {}, "overall": nongarments, "count": 175},
        },
        "misclassified": [],
        "provenance": {},
    }
    return EvaluationReport.model_validate(data).to_artifact()


def run(report_data: dict[str, Any] | None, profile: dict[str, Any] = FULL, run_id: str = "2") -> RunFacts:
    return RunFacts(f"FashionFlow/{run_id}", profile, report_data)


CHAMPION = run(report(), run_id="1")


def by_rule(decision) -> dict[str, Any]:
    return {check.rule: check for check in decision.checks}


# --- the rules --------------------------------------------------------------------------------------------------------


def test_a_first_candidate_that_meets_every_absolute_rule_is_promoted():
    decision = decide(run(report()), None, RULES)
    assert decision.promote, decision.summary()
    checks = by_rule(decision)
    assert not checks["accuracy_ci_factor"].applied and checks["accuracy_ci_factor"].reason == "no champion yet"
    assert all(c.applied for c in decision.checks if c.kind in ("profile", "absolute"))
    assert decision.champion is None and "no champion yet" in decision.summary()


def test_a_better_candidate_is_promoted_with_every_rule_recorded():
    decision = decide(run(report(accuracy=0.93)), CHAMPION, RULES)
    assert decision.promote, decision.summary()
    data = json.loads(json.dumps(decision.to_dict()))  # plain data, as the artifact stores it
    assert data["promote"] and data["failed_rules"] == [] and data["champion"] == "FashionFlow/1"
    assert {c["rule"] for c in data["checks"]} == {
        "refused_profiles",
        "require_full_data",
        "accuracy_ci_factor",
        "max_recall_drop",
        "max_ece",
        "min_photo_worst_relative",
        "min_coverage",
        "min_confident_accuracy",
        "min_nongarments_unsure",
    }
    accuracy = by_rule(decision)["accuracy_ci_factor"]
    assert accuracy.candidate == 0.93 and accuracy.champion == 0.923 and accuracy.passed and accuracy.applied


def test_a_smoke_run_is_refused_naming_the_profile_rules():
    decision = decide(run(report(), SMOKE), CHAMPION, RULES)
    assert not decision.promote
    assert decision.failed_rules == ["refused_profiles", "require_full_data"]
    assert "profile 'smoke' is refused" in decision.summary()
    assert "subset of 3000 images" in decision.summary()


@pytest.mark.parametrize(
    ("accuracy", "promote"),
    [(0.917, True), (0.9131, True), (0.9129, False), (0.90, False)],  # floor: 0.923 - (0.005 + 0.005) = 0.913
)
def test_accuracy_may_be_lower_only_within_the_two_intervals(accuracy, promote):
    decision = decide(run(report(accuracy=accuracy)), CHAMPION, RULES)
    assert decision.promote is promote, decision.summary()
    if not promote:
        assert decision.failed_rules[0] == "accuracy_ci_factor"  # (at 0.90 every class's recall fell too)
        assert "below the allowed floor 0.9130" in by_rule(decision)["accuracy_ci_factor"].reason


def test_a_class_losing_more_than_two_points_of_recall_is_refused_naming_the_class():
    worse_shirts = report(accuracy=0.925, recalls={"Shirt": 0.923 - 0.025})
    decision = decide(run(worse_shirts), CHAMPION, RULES)
    assert decision.failed_rules == ["max_recall_drop"]
    check = by_rule(decision)["max_recall_drop"]
    assert check.candidate == pytest.approx(0.025) and "'Shirt'" in check.reason
    assert decide(run(report(recalls={"Shirt": 0.923 - 0.015})), CHAMPION, RULES).promote


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"ece": 0.02}, "max_ece"),
        ({"photo_relative": 0.85}, "min_photo_worst_relative"),
        ({"coverage": 0.80}, "min_coverage"),
        ({"confident_accuracy": 0.96}, "min_confident_accuracy"),
        ({"confident_accuracy": None}, "min_confident_accuracy"),  # nothing answered confidently
        ({"nongarments": 0.90}, "min_nongarments_unsure"),
    ],
)
def test_each_absolute_rule_refuses_on_its_own_with_or_without_a_champion(change, rule):
    for champion in (CHAMPION, None):
        decision = decide(run(report(**change)), champion, RULES)
        assert decision.failed_rules == [rule], decision.summary()
        assert rule in decision.summary()


def test_a_rollback_skips_the_champion_comparison_but_not_the_other_rules():
    earlier = report(accuracy=0.90, recalls={"Shirt": 0.80})  # worse than the champion on both counts
    assert not decide(run(earlier), CHAMPION, RULES).promote
    decision = decide(run(earlier), CHAMPION, RULES, rollback=True)
    assert decision.promote and decision.rollback
    assert by_rule(decision)["max_recall_drop"].reason == "rollback: the champion comparison is skipped"
    assert decision.to_dict()["rollback"] is True
    refused = decide(run(report(), SMOKE), CHAMPION, RULES, rollback=True)
    assert refused.failed_rules == ["refused_profiles", "require_full_data"]  # never a smoke model, even so


def test_a_rule_set_to_null_is_off_and_listed_as_such():
    rules = PromotionRules(max_ece=None, refused_profiles=[], require_full_data=False)
    decision = decide(run(report(ece=0.5), SMOKE), None, rules)
    assert decision.promote
    assert by_rule(decision)["max_ece"].reason == "rule off" and not by_rule(decision)["max_ece"].applied


def test_a_candidate_without_a_readable_report_is_refused():
    decision = decide(run(None), CHAMPION, RULES)
    assert decision.failed_rules == ["report"] and "no evaluation report" in decision.summary()
    decision = decide(run({"test": {"accuracy": 0.9}}), CHAMPION, RULES)
    assert decision.failed_rules == ["report"] and "cannot be read" in decision.summary()


def test_a_candidate_without_its_profile_is_refused():
    decision = decide(run(report(), profile={}), None, RULES)
    assert decision.failed_rules == ["refused_profiles", "require_full_data"]
    assert "no profile artifact" in decision.summary()


def test_a_champion_without_a_readable_report_leaves_only_the_absolute_rules():
    decision = decide(run(report()), run(None, run_id="1"), RULES)
    assert decision.promote and any("champion FashionFlow/1" in note for note in decision.notes)
    assert not by_rule(decision)["accuracy_ci_factor"].applied


def test_the_rules_file_states_the_defaults_and_bad_rules_name_the_field():
    assert load_rules(DEFAULT_RULES_PATH) == PromotionRules()
    assert parse_rules("")["tag"] == "production"
    with pytest.raises(RulesError, match="max_ece"):
        parse_rules("max_ece: 2.0")
    with pytest.raises(RulesError, match="min_coverge"):
        parse_rules("min_coverge: 0.9")  # a typo must not silently keep the default
    with pytest.raises(RulesError, match="mapping"):
        parse_rules("- 1")


# --- PromoteFlow, end to end ------------------------------------------------------------------------------------------


def promote(rules: str | None = None, **parameters):
    """Run PromoteFlow through the Runner API (from the session's datastore, where its card is written)."""
    from metaflow import Runner

    config = [("rules", rules)] if rules else None
    with Runner(str(PROMOTE_FLOW), show_output=False, cwd=str(session_datastore()), config=config) as runner:
        result = runner.run(**parameters)
        assert result.status == "successful", result.stderr[-3000:]
        return result.run, result.stdout


def card_text(task) -> str:
    """The markdown and table text of the task's card."""
    from metaflow.cards import get_cards

    (card,) = list(get_cards(task))
    data = re.search(r'window\.__MF_DATA__\["[^"]+"\] = "([A-Za-z0-9+/=]+)"', card.get())
    assert data, "card data not found"
    return base64.b64decode(data.group(1)).decode()


def tags_of(pathspec: str) -> set[str]:
    metaflow.namespace(None)
    return set(metaflow.Run(pathspec).user_tags)


def test_promote_flow_refuses_a_smoke_run_and_leaves_production_untouched(smoke_run):
    metaflow.namespace(None)
    before = {r.pathspec for r in metaflow.Flow("FashionFlow").runs("production")}
    gate, stdout = promote(candidate=smoke_run.pathspec)
    decision = gate.data.decision
    assert not decision["promote"] and not gate.data.promote
    assert {"refused_profiles", "require_full_data"} <= set(decision["failed_rules"])
    assert decision["candidate"] == smoke_run.pathspec and decision["decided_by"]
    assert "refused to promote" in stdout and "FAIL refused_profiles" in stdout
    assert "production" not in tags_of(smoke_run.pathspec)
    assert {r.pathspec for r in metaflow.Flow("FashionFlow").runs("production")} == before
    card = card_text(gate["decide"].task)
    assert "champion" in card and "candidate" in card and smoke_run.pathspec in card and "refused" in card
    check_card_commands(stdout, session_datastore(), {"decide": "## Rules (champion and candidate side by side)"})


def test_promote_flow_moves_the_tag_records_who_and_when_and_rolls_back(smoke_run, tmp_path):
    """With rules that admit smoke models (and a tag of this test's own): the first candidate is promoted, the second
    replaces it, and a rollback puts the first back."""
    tag = f"release-{uuid.uuid4().hex[:8]}"
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        f"tag: {tag}\nrefused_profiles: []\nrequire_full_data: false\nmax_ece: 0.2\nmin_coverage: 0.0\n"
        "min_confident_accuracy: 0.5\nmin_photo_worst_relative: 0.5\nmin_nongarments_unsure: 0.5\n"
    )
    first, second = smoke_run.pathspec, second_smoke_run().pathspec

    gate, _ = promote(str(rules), candidate=first)  # no champion yet: the absolute rules decide
    assert gate.data.decision["promote"] and gate.data.decision["champion"] is None
    tags = tags_of(first)
    assert tag in tags and f"promotion:{gate.pathspec}" in tags
    assert any(t.startswith("promoted_by:") for t in tags)
    assert any(re.fullmatch(r"promoted_at:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", t) for t in tags)

    gate, stdout = promote(str(rules), candidate=second)  # the champion is `first`; same profile, same results
    decision = gate.data.decision
    assert decision["promote"] and decision["champion"] == first, decision["summary"]
    assert {c["rule"]: c["applied"] for c in decision["checks"]}["accuracy_ci_factor"]
    assert tag in tags_of(second) and tag not in tags_of(first)
    assert f"retired_by:{gate.pathspec}" in tags_of(first)
    assert gate.data.retired == [first] and f"{second} is now tagged" in stdout
    card = card_text(gate["decide"].task)
    assert first in card and second in card

    gate, _ = promote(str(rules), candidate=first, rollback=True)
    decision = gate.data.decision
    assert decision["promote"] and decision["rollback"] and decision["champion"] == second
    assert tag in tags_of(first) and tag not in tags_of(second)
    assert [t for t in tags_of(first) if t.startswith("promotion:")] == [f"promotion:{gate.pathspec}"]
    metaflow.namespace(None)
    assert [r.pathspec for r in metaflow.Flow("FashionFlow").runs(tag)] == [first]


def test_two_promotions_at_once_leave_one_champion_the_newer(smoke_run):
    """Two PromoteFlow runs that both tag their candidate before either takes the tag off the others (the interleaving
    that left two champions, or none): in either order of settling, the newer promotion's run alone keeps it."""
    from promote_runs import put_tag, settle

    first, second = smoke_run.pathspec, second_smoke_run().pathspec
    for settle_order in ((first, second), (second, first)):
        tag = f"race-{uuid.uuid4().hex[:8]}"
        promotions = {
            first: ("PromoteFlow/100", "2026-12-04T10:00:00+00:00"),
            second: ("PromoteFlow/101", "2026-12-04T10:00:01+00:00"),
        }
        for run in (first, second):
            put_tag(tag, run, promotions[run][0], "test", promotions[run][1])
        assert {r.pathspec for r in metaflow.Flow("FashionFlow").runs(tag)} == {first, second}
        retired = [settle(tag, run, *promotions[run]) for run in settle_order]
        metaflow.namespace(None)
        assert [r.pathspec for r in metaflow.Flow("FashionFlow").runs(tag)] == [second], settle_order
        assert first in retired[0] + retired[1]
        assert "retired_by:PromoteFlow/10" in " ".join(tags_of(first))
