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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fmnist.core.config import CONFIG_DIR
from fmnist.evaluation.report_schema import EvaluationReport

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
    # Test ECE after temperature scaling: served probabilities are read as probabilities (a run's end step prints it).
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
    """An absolute rule: one number of the report against one threshold of the rules."""

    rule: str  # the field of `PromotionRules` holding the threshold
    description: str
    read: Callable[[EvaluationReport], float | None]
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
ACCURACY = "test accuracy not below the champion's beyond their 95% intervals"
RECALL = "largest drop of a class's test recall against the champion"


def decide(candidate: RunFacts, champion: RunFacts | None, rules: PromotionRules, rollback: bool = False) -> Decision:
    """Apply every rule to the candidate (against the champion where one exists) and return the verdict.

    A rollback skips the relative rules (the earlier run is expected to be worse than the champion it replaces) but
    applies the profile and absolute rules, so even a rollback cannot put a smoke model into production.
    """
    notes: list[str] = []
    checks = _profile_checks(candidate, rules)
    try:
        report = candidate.typed_report()
    except ValueError as err:
        reason = f"candidate {candidate.pathspec}: {err}"
        checks.append(_check("report", "report", "a readable evaluation report", passed=False, reason=reason))
        return _decision(candidate, champion, rollback, rules, checks, notes)
    champion_report = None
    if champion is not None:
        try:
            champion_report = champion.typed_report()
        except ValueError as err:
            notes.append(f"champion {champion.pathspec}: {err}; the relative rules cannot be applied")
        if champion.pathspec == candidate.pathspec:
            notes.append("the candidate is the champion already")
    checks += [_absolute(metric, report, champion_report, rules) for metric in ABSOLUTE_RULES]
    if champion_report is None or rollback:
        why = "rollback: the champion comparison is skipped" if rollback else "no champion yet"
        if champion is not None and champion_report is None and not rollback:
            why = "the champion's report cannot be read"
        theirs = champion_report.test.accuracy if champion_report is not None else None
        checks.append(_check("accuracy_ci_factor", "relative", ACCURACY, report.test.accuracy, theirs, reason=why))
        checks.append(_check("max_recall_drop", "relative", RECALL, reason=why))
    else:
        checks += [_accuracy(report, champion_report, rules), _recall(report, champion_report, rules)]
    return _decision(candidate, champion, rollback, rules, checks, notes)


def _check(
    rule: str,
    kind: RuleKind,
    description: str,
    candidate: Value = None,
    champion: Value = None,
    threshold: Value = None,
    passed: bool = True,
    applied: bool | None = None,
    reason: str = "",
) -> Check:
    """A `Check`; `applied` defaults to "the rule decided something": failed, or had a threshold to pass."""
    applied = (not passed or threshold is not None) if applied is None else applied
    return Check(rule, kind, description, candidate, champion, threshold, passed, applied, reason)


def _decision(
    candidate: RunFacts,
    champion: RunFacts | None,
    rollback: bool,
    rules: PromotionRules,
    checks: list[Check],
    notes: list[str],
) -> Decision:
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
    name, subset = candidate.profile_name, candidate.train_subset
    if not candidate.profile:  # a run without its profile cannot show it was a release profile
        reason = f"{candidate.pathspec} has no profile artifact (`config`)"
        return [
            _check("refused_profiles", "profile", "a release profile", passed=False, reason=reason),
            _check("require_full_data", "profile", "trained on the full training set", passed=False, reason=reason),
        ]
    refused = name in rules.refused_profiles
    profile = _check(
        "refused_profiles",
        "profile",
        "a release profile (not one that only proves the pipeline runs)",
        candidate=name,
        threshold=f"not in {rules.refused_profiles}",
        passed=not refused,
        applied=True,
        reason=f"profile {name!r} is refused for production" if refused else f"profile {name!r} may be released",
    )
    if subset is None:
        reason = "trained on all training images"
    else:
        allowed = "" if rules.require_full_data else "; allowed by these rules"
        reason = f"trained on a subset of {subset} images (data.train_subset){allowed}"
    data = _check(
        "require_full_data",
        "profile",
        "trained on the full training set",
        candidate="all" if subset is None else subset,
        threshold="all" if rules.require_full_data else None,
        passed=subset is None or not rules.require_full_data,
        applied=rules.require_full_data,
        reason=reason,
    )
    return [profile, data]


def _absolute(
    metric: _Metric, report: EvaluationReport, champion: EvaluationReport | None, rules: PromotionRules
) -> Check:
    threshold: float | None = getattr(rules, metric.rule)
    value, theirs = metric.read(report), (metric.read(champion) if champion is not None else None)
    if threshold is None:
        return _check(metric.rule, "absolute", metric.description, value, theirs, reason="rule off")
    if value is None:
        reason = f"{metric.description}: not measured"
        return _check(metric.rule, "absolute", metric.description, None, theirs, threshold, False, reason=reason)
    passed = value >= threshold if metric.at_least else value <= threshold
    sign = {(True, True): ">=", (True, False): "<", (False, True): "<=", (False, False): ">"}[metric.at_least, passed]
    reason = f"{metric.description} {_fmt(value)} {sign} {_fmt(threshold)}"
    return _check(metric.rule, "absolute", metric.description, float(value), theirs, threshold, passed, reason=reason)


def _accuracy(report: EvaluationReport, champion: EvaluationReport, rules: PromotionRules) -> Check:
    mine, theirs = report.test, champion.test
    if rules.accuracy_ci_factor is None:
        return _check("accuracy_ci_factor", "relative", ACCURACY, mine.accuracy, theirs.accuracy, reason="rule off")
    half_widths = sum((hi - lo) / 2 for lo, hi in (mine.accuracy_ci95, theirs.accuracy_ci95))
    floor = theirs.accuracy - rules.accuracy_ci_factor * half_widths
    passed = mine.accuracy >= floor
    reason = (
        f"test accuracy {mine.accuracy:.4f} vs champion {theirs.accuracy:.4f}: {'within' if passed else 'below'} the"
        f" allowed floor {floor:.4f} (champion minus {rules.accuracy_ci_factor:g} x the half-widths {half_widths:.4f})"
    )
    return _check(
        "accuracy_ci_factor",
        "relative",
        ACCURACY,
        mine.accuracy,
        theirs.accuracy,
        round(floor, 6),
        passed,
        True,
        reason,
    )


def _recall(report: EvaluationReport, champion: EvaluationReport, rules: PromotionRules) -> Check:
    mine = {c.name: c.recall for c in report.test.per_class}
    theirs = {c.name: c.recall for c in champion.test.per_class}
    drops = {name: recall - mine.get(name, 0.0) for name, recall in theirs.items()}
    if not drops:
        return _check("max_recall_drop", "relative", RECALL, reason="the champion's report has no per-class scores")
    worst = max(drops, key=lambda name: drops[name])
    drop = round(drops[worst], 6)
    if rules.max_recall_drop is None:
        return _check("max_recall_drop", "relative", RECALL, drop, reason="rule off")
    passed = drop <= rules.max_recall_drop
    reason = (
        f"recall of {worst!r}: {mine.get(worst, 0.0):.4f} vs champion {theirs[worst]:.4f}, a drop of {_fmt(drop)}"
        f" {'<=' if passed else '>'} {_fmt(rules.max_recall_drop)}"
    )
    return _check("max_recall_drop", "relative", RECALL, drop, None, rules.max_recall_drop, passed, True, reason)


def _fmt(value: float) -> str:
    """Shares as percentages, anything else as a number."""
    return f"{100 * value:.2f}%" if abs(value) <= 1.0 else f"{value:.4g}"
