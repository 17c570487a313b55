"""The promotion gate's rules: may a candidate FashionFlow run replace the champion (the run tagged `production`)?

Everything here takes plain data, as the runs' artifacts hold it (the run profile `config` and the evaluation
`report`), and returns a `Decision` that lists every rule with the candidate's value, the champion's, the threshold,
whether it passed and why. `flows/promote_flow.py` reads the runs through Metaflow's Client API, calls `decide`, and
moves the tag; nothing here knows about Metaflow.

Three kinds of rule:
- profile: the candidate was trained with a release profile (not smoke, full training data);
- absolute: targets every released model meets (calibration, photos, abstention, non-garments), so they also decide a
  first candidate when there is no champion yet;
- relative: the candidate is not worse than the champion (accuracy beyond the intervals, recall of any class). A
  rollback (re-promoting an earlier run on purpose) skips them, but not the others, and says so in the decision.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import CONFIG_DIR
from .report_schema import EvaluationReport

DEFAULT_RULES_PATH = CONFIG_DIR / "promotion" / "default.yaml"

RuleKind = Literal["profile", "absolute", "relative", "report"]
Value = float | str | bool | None


class RulesError(ValueError):
    """Promotion rules that cannot be used; the message names the field and the problem."""


class PromotionRules(BaseModel):
    """The release policy. A threshold set to None switches its rule off (the decision lists it as off)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The tag that marks the served model; `fmnist-serve --tag production` follows it.
    tag: str = Field("production", min_length=1, max_length=100)
    # Profiles that only prove the pipeline runs (a few thousand images, two epochs): never served.
    refused_profiles: list[str] = Field(default_factory=lambda: ["smoke"])
    # A released model is trained on the whole training set: a profile with `data.train_subset` is not.
    require_full_data: bool = True
    # Accuracy may be lower than the champion's by at most this many times the sum of the two 95% half-widths: with
    # 1.0, refused only when the intervals do not overlap, the one difference the test set can vouch for.
    accuracy_ci_factor: float | None = Field(1.0, ge=0.0, le=10.0)
    # No class's test recall may drop by more than this (2 points): an average gain must not hide a class lost.
    max_recall_drop: float | None = Field(0.02, ge=0.0, le=1.0)
    # Test ECE after temperature scaling: served probabilities are read as probabilities (default profile: ~0.5%).
    max_ece: float | None = Field(0.015, ge=0.0, le=1.0)
    # Photo suite: the worst realistic condition keeps at least this share of the clean accuracy.
    min_photo_worst_relative: float | None = Field(0.90, ge=0.0, le=2.0)
    # Abstention on the test set: share answered confidently, and accuracy among those answers (target risk 2%).
    min_coverage: float | None = Field(0.85, ge=0.0, le=1.0)
    min_confident_accuracy: float | None = Field(0.97, ge=0.0, le=1.0)
    # Share of synthetic non-garments answered "unsure".
    min_nongarments_unsure: float | None = Field(0.95, ge=0.0, le=1.0)


def parse_rules(text: str) -> dict[str, Any]:
    """Parse and validate the rules' YAML text; returns the full rules, defaults filled in, as plain data (the parser
    PromoteFlow hands to Metaflow's `Config`, so bad rules fail before any step runs)."""
    try:
        raw = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as err:
        raise RulesError(f"promotion rules are not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise RulesError(f"promotion rules must be a mapping, got {type(raw).__name__}")
    try:
        rules = PromotionRules(**raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'rules'}: {e['msg']}" for e in err.errors())
        raise RulesError(f"invalid promotion rules: {problems}") from None
    return json.loads(rules.model_dump_json())


def load_rules(source: str | Path | dict[str, Any] = DEFAULT_RULES_PATH) -> PromotionRules:
    """Validated rules from a YAML path or from the plain data `parse_rules` returned."""
    if isinstance(source, dict):
        return PromotionRules(**source)
    return PromotionRules(**parse_rules(Path(source).read_text()))


@dataclass(frozen=True)
class RunFacts:
    """What the gate knows about one FashionFlow run: plain data read from its artifacts."""

    pathspec: str
    profile: dict[str, Any]  # the run's profile (its `config` artifact), defaults filled in
    report: dict[str, Any] | None  # the evaluation report artifact; None when the run has none
    created_at: str | None = None

    @property
    def profile_name(self) -> str:
        return str(self.profile.get("name", "?"))

    @property
    def train_subset(self) -> int | None:
        subset = (self.profile.get("data") or {}).get("train_subset")
        return None if subset is None else int(subset)

    def typed_report(self) -> EvaluationReport:
        """The report, typed; raises ValueError when there is none or it cannot be read."""
        if self.report is None:
            raise ValueError("no evaluation report artifact")
        try:
            return EvaluationReport.model_validate(self.report)
        except ValidationError as err:
            raise ValueError(
                f"evaluation report cannot be read: {err.error_count()} problem(s), first: "
                f"{'.'.join(str(p) for p in err.errors()[0]['loc'])}: {err.errors()[0]['msg']}"
            ) from None


@dataclass(frozen=True)
class Check:
    """One rule applied to the candidate (and the champion, for the relative rules)."""

    rule: str  # the field of `PromotionRules` (or "report")
    kind: RuleKind
    description: str
    candidate: Value  # the candidate's value
    champion: Value  # the champion's value (side by side; for every rule when there is a champion)
    threshold: Value  # what the candidate's value was compared with
    passed: bool
    applied: bool  # False: the rule is off, or does not apply (no champion, rollback); it then passes
    reason: str


@dataclass(frozen=True)
class Decision:
    """The gate's verdict on a candidate, with every rule."""

    candidate: str
    champion: str | None
    rollback: bool
    tag: str
    checks: tuple[Check, ...]
    candidate_profile: str = "?"
    champion_profile: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def promote(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    @property
    def failed_rules(self) -> list[str]:
        return [check.rule for check in self.failed]

    def summary(self) -> str:
        """One line: promoted or refused, and why."""
        verb = "roll back to" if self.rollback else "promote"
        against = f" over champion {self.champion}" if self.champion else " (no champion yet)"
        if self.promote:
            return f"{verb} {self.candidate}{against}: every rule passed"
        reasons = "; ".join(f"{c.rule}: {c.reason}" for c in self.failed)
        return f"refused to {verb} {self.candidate}{against}: {reasons}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the Metaflow artifact: the verdict, the failed rules and every check."""
        return {
            "promote": self.promote,
            "summary": self.summary(),
            "candidate": self.candidate,
            "champion": self.champion,
            "candidate_profile": self.candidate_profile,
            "champion_profile": self.champion_profile,
            "rollback": self.rollback,
            "tag": self.tag,
            "failed_rules": self.failed_rules,
            "checks": [asdict(check) for check in self.checks],
            "notes": list(self.notes),
        }


# --- the rules ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Metric:
    rule: str
    description: str
    read: Any  # EvaluationReport -> float | None
    at_least: bool  # True: value >= threshold passes; False: value <= threshold passes


ABSOLUTE_RULES = (
    _Metric("max_ece", "calibrated test ECE", lambda r: r.calibration.test_after.ece, at_least=False),
    _Metric(
        "min_photo_worst_relative",
        "photos: worst realistic condition, relative to clean",
        lambda r: r.photos.worst.relative,
        at_least=True,
    ),
    _Metric("min_coverage", "test coverage of confident answers", lambda r: r.abstention.test.coverage, True),
    _Metric("min_confident_accuracy", "accuracy of confident test answers", lambda r: r.abstention.test.accuracy, True),
    _Metric(
        "min_nongarments_unsure",
        "synthetic non-garments answered unsure",
        lambda r: r.abstention.nongarments.overall,
        True,
    ),
)


def decide(candidate: RunFacts, champion: RunFacts | None, rules: PromotionRules, rollback: bool = False) -> Decision:
    """Apply every rule to the candidate (against the champion where one exists) and return the verdict.

    A rollback skips the relative rules (the earlier run is expected to be worse than the champion it replaces) but
    applies the profile and absolute rules, so even a rollback cannot put a smoke model into production.
    """
    notes: list[str] = []
    checks = [*_profile_checks(candidate, rules)]
    try:
        report = candidate.typed_report()
    except ValueError as err:
        checks.append(
            Check(
                "report",
                "report",
                "a readable evaluation report",
                None,
                None,
                None,
                False,
                True,
                f"candidate {candidate.pathspec}: {err}",
            )
        )
        return _decision(candidate, champion, rollback, rules, checks, notes)
    champion_report = None
    if champion is not None:
        try:
            champion_report = champion.typed_report()
        except ValueError as err:
            notes.append(f"champion {champion.pathspec}: {err}; the relative rules cannot be applied")
    checks += [_absolute(metric, report, champion_report, rules) for metric in ABSOLUTE_RULES]
    checks += _relative_checks(report, champion_report, rules, champion is not None, rollback)
    if candidate.pathspec == (champion.pathspec if champion else None):
        notes.append("the candidate is the champion already")
    return _decision(candidate, champion, rollback, rules, checks, notes)


def _decision(candidate, champion, rollback, rules, checks, notes) -> Decision:
    return Decision(
        candidate=candidate.pathspec,
        champion=champion.pathspec if champion else None,
        rollback=rollback,
        tag=rules.tag,
        checks=tuple(checks),
        candidate_profile=candidate.profile_name,
        champion_profile=champion.profile_name if champion else None,
        notes=tuple(notes),
    )


def _profile_checks(candidate: RunFacts, rules: PromotionRules) -> list[Check]:
    name = candidate.profile_name
    refused = name in rules.refused_profiles
    profile = Check(
        "refused_profiles",
        "profile",
        "a release profile (not one that only proves the pipeline runs)",
        name,
        None,
        f"not in {rules.refused_profiles}",
        not refused,
        True,
        f"profile {name!r} is refused for production" if refused else f"profile {name!r} may be released",
    )
    subset = candidate.train_subset
    full = subset is None
    data = Check(
        "require_full_data",
        "profile",
        "trained on the full training set",
        "all" if full else subset,
        None,
        "all" if rules.require_full_data else None,
        full or not rules.require_full_data,
        rules.require_full_data,
        "trained on all training images"
        if full
        else f"trained on a subset of {subset} images (data.train_subset)"
        + ("" if rules.require_full_data else "; allowed by these rules"),
    )
    return [profile, data]


def _absolute(
    metric: _Metric, report: EvaluationReport, champion: EvaluationReport | None, rules: PromotionRules
) -> Check:
    threshold = getattr(rules, metric.rule)
    value = metric.read(report)
    theirs = metric.read(champion) if champion is not None else None
    sign = ">=" if metric.at_least else "<="
    if threshold is None:
        return Check(metric.rule, "absolute", metric.description, value, theirs, None, True, False, "rule off")
    if value is None:
        return Check(
            metric.rule,
            "absolute",
            metric.description,
            None,
            theirs,
            threshold,
            False,
            True,
            f"{metric.description}: not measured",
        )
    passed = value >= threshold if metric.at_least else value <= threshold
    reason = f"{metric.description} {_fmt(value)} {sign if passed else _negate(sign)} {_fmt(threshold)}"
    return Check(metric.rule, "absolute", metric.description, float(value), theirs, threshold, passed, True, reason)


def _relative_checks(
    report: EvaluationReport,
    champion: EvaluationReport | None,
    rules: PromotionRules,
    has_champion: bool,
    rollback: bool,
) -> list[Check]:
    accuracy_text = "test accuracy not below the champion's beyond their 95% intervals"
    recall_text = "largest drop of a class's test recall against the champion"
    mine = report.test
    if champion is None or rollback:
        why = (
            "rollback: the champion comparison is skipped"
            if rollback
            else ("no champion yet" if not has_champion else "the champion's report cannot be read")
        )
        theirs_acc = champion.test.accuracy if champion is not None else None
        return [
            Check("accuracy_ci_factor", "relative", accuracy_text, mine.accuracy, theirs_acc, None, True, False, why),
            Check("max_recall_drop", "relative", recall_text, None, None, None, True, False, why),
        ]
    theirs = champion.test
    half = (mine.accuracy_ci95[1] - mine.accuracy_ci95[0]) / 2 + (theirs.accuracy_ci95[1] - theirs.accuracy_ci95[0]) / 2
    checks = []
    if rules.accuracy_ci_factor is None:
        checks.append(
            Check(
                "accuracy_ci_factor",
                "relative",
                accuracy_text,
                mine.accuracy,
                theirs.accuracy,
                None,
                True,
                False,
                "rule off",
            )
        )
    else:
        floor = theirs.accuracy - rules.accuracy_ci_factor * half
        passed = mine.accuracy >= floor
        reason = (
            f"test accuracy {mine.accuracy:.4f} vs champion {theirs.accuracy:.4f}: "
            + ("within" if passed else "below")
            + f" the allowed floor {floor:.4f} (champion minus {rules.accuracy_ci_factor:g} x the half-widths"
            f" {half:.4f})"
        )
        checks.append(
            Check(
                "accuracy_ci_factor",
                "relative",
                accuracy_text,
                mine.accuracy,
                theirs.accuracy,
                round(floor, 6),
                passed,
                True,
                reason,
            )
        )
    mine_recall = {c.name: c.recall for c in mine.per_class}
    theirs_recall = {c.name: c.recall for c in theirs.per_class}
    drops = {name: recall - mine_recall.get(name, 0.0) for name, recall in theirs_recall.items()}
    worst = max(drops, key=lambda name: drops[name]) if drops else None
    drop = round(drops[worst], 6) if worst is not None else 0.0
    if rules.max_recall_drop is None:
        checks.append(Check("max_recall_drop", "relative", recall_text, drop, None, None, True, False, "rule off"))
    elif worst is None:
        checks.append(
            Check(
                "max_recall_drop",
                "relative",
                recall_text,
                None,
                None,
                rules.max_recall_drop,
                True,
                False,
                "the champion's report has no per-class scores",
            )
        )
    else:
        passed = drop <= rules.max_recall_drop
        reason = (
            f"recall of {worst!r}: {mine_recall.get(worst, 0.0):.4f} vs champion {theirs_recall[worst]:.4f}, a drop"
            f" of {_fmt(drop)} {'<=' if passed else '>'} {_fmt(rules.max_recall_drop)}"
        )
        checks.append(
            Check("max_recall_drop", "relative", recall_text, drop, None, rules.max_recall_drop, passed, True, reason)
        )
    return checks


def _fmt(value: float) -> str:
    return f"{100 * value:.2f}%" if abs(value) <= 1.0 else f"{value:.4g}"


def _negate(sign: str) -> str:
    return {">=": "<", "<=": ">"}[sign]
