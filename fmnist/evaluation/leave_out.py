"""Fits that never see what they report: each photo condition judged by photo thresholds fitted without it.

The photo thresholds (`fmnist.trust.abstention_fit.fit_photo_thresholds`) are fitted on validation garments rendered
under every photo condition the report has a row for (`fmnist.evaluation.photo_mix`), and the real photographs' fit
half. Only the garments and the random draws differ between that fit and the report's rows, so a row's "right when
confident" is in-distribution for the fit. Leave-one-condition-out answers what a user whose photos look like none of
the fit's gets: for each condition, the thresholds refitted on the photo mix without that condition's photos, and
that condition's answers judged again by them (the same network outputs; only the verdicts can change). The report
shows both figures beside each other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import torch

from fmnist.evaluation.answers import Answers, LeaveOut
from fmnist.release.classifier import Classifier
from fmnist.trust.abstention import AbstentionPolicy
from fmnist.trust.abstention_fit import fit_photo_thresholds

log = logging.getLogger(__name__)

# The condition name of the real photographs in the photo fit (never left out: they are not a rendered condition).
REAL = "real photographs"


@dataclass(frozen=True)
class PhotoFit:
    """The photo part of the abstention fit, with the condition each photo was rendered under."""

    logits: torch.Tensor  # (M, C)
    features: torch.Tensor  # (M, D)
    right: np.ndarray  # (M, C) bool: the classes counted right for each photo
    condition: np.ndarray  # (M,) str: the condition's name, REAL for a real photograph

    def __post_init__(self) -> None:
        if not len(self.logits) == len(self.features) == len(self.right) == len(self.condition):
            raise ValueError(
                f"photo fit parts differ in length: logits {len(self.logits)}, features {len(self.features)},"
                f" right {len(self.right)}, conditions {len(self.condition)}"
            )

    def as_photos(self, keep: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(logits, features, right) of the photos where `keep` (M,) bool is set (all when None): `fit_abstention`'s
        `photos` argument."""
        if keep is None:
            return self.logits, self.features, self.right
        index = torch.from_numpy(np.flatnonzero(keep))
        return self.logits[index], self.features[index], self.right[keep]


def policy_without(
    policy: AbstentionPolicy, fit: PhotoFit, condition: str, temperature: float, photo_ood_quantile: float
) -> AbstentionPolicy:
    """A copy of `policy` whose photo thresholds are fitted on `fit` without `condition`'s photos (the scans'
    thresholds and the density unchanged)."""
    keep = fit.condition != condition
    if keep.all():
        raise ValueError(f"no photo of condition {condition!r} in the fit to leave out")
    return fit_photo_thresholds(replace(policy), fit.as_photos(keep), temperature, photo_ood_quantile)


def leave_one_condition_out(classifier: Classifier, fit: PhotoFit, photo_ood_quantile: float) -> LeaveOut:
    """A `LeaveOut` for `classifier` (its record's temperature and fitted policy): per condition, a copy of the policy
    with its photo thresholds refitted on `fit` without that condition (fitted once, on first use), scoring the
    answers' model inputs again."""
    policy = classifier.policy
    if policy is None:
        raise ValueError("the classifier has no abstention policy to refit")
    record = classifier.record
    judges: dict[str, Classifier] = {}

    def judge(condition: str, answers: Answers) -> Answers | None:
        if condition == REAL or not (fit.condition == condition).any():
            return None
        if answers.inputs is None or answers.empty is None or answers.photo is None:
            raise ValueError("leave-one-condition-out needs the answers' model inputs, empty and photo flags")
        if condition not in judges:
            refitted = policy_without(policy, fit, condition, record.temperature, photo_ood_quantile)
            log.info(
                "photo thresholds without %s: confidence %.4f (with it %.4f), OOD %.4g (%.4g), family %.4f (%.4f)",
                condition,
                refitted.photo_threshold,
                policy.photo_threshold,
                refitted.photo_ood_threshold,
                policy.photo_ood_threshold,
                refitted.family_threshold,
                policy.family_threshold,
            )
            judges[condition] = Classifier(
                replace(record, abstention=refitted), classifier.device, classifier.runtime, classifier.threads
            )
        scored = judges[condition].score(answers.inputs, answers.empty.tolist(), answers.photo.tolist())
        return Answers.from_scored(scored, answers.inputs, answers.empty, answers.photo)

    return judge
