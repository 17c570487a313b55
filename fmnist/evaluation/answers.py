"""What the service said about a list of uploads, and the figures every photo suite reports from it.

The photo suites (`fmnist.evaluation.photos`, `fmnist.evaluation.wild_photos`) and the non-garment sets take a
`classify` function that turns encoded uploads into `Answers`; `service_answers(classifier)` is the service's own one
(`Classifier.classify_with_inputs`). Keeping the suites
behind this small record lets their tests use oracles and constants instead of a trained model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fmnist.release.classifier import Classifier, Scored
from fmnist.trust.abstention import UNLIKE_TRAINING


@dataclass(frozen=True)
class Answers:
    """One answer per upload, in upload order."""

    labels: np.ndarray  # (n,) int64 predicted class
    # (n,) bool: confident of the class (`Scored.class_confident`; the service's `class_confident`), what the suites'
    # "right when confident" is judged on
    confident: np.ndarray
    inputs: np.ndarray | None = None  # (n, 28, 28) uint8: what the model saw, where the classifier tells
    empty: np.ndarray | None = None  # (n,) bool: the normalisation found nothing but background
    photo: np.ndarray | None = None  # (n,) bool: the normalisation had to transform it (`normalise.Normalized.photo`)
    # (n,) bool: sure of the garment family at least (`Scored.confident`, the service's `confident`: of the class, or
    # of its family alone); None: the same as `confident` (a classifier without family answers)
    family_sure: np.ndarray | None = None
    # (n,) bool: declined as unlike the training images (an empty upload too), before any confidence is looked at;
    # None: not told (a classifier without an OOD check)
    unlike: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.confident):
            raise ValueError(f"{len(self.labels)} labels but {len(self.confident)} confidence flags")

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def confident_labels(cls, labels: np.ndarray) -> Answers:
        """Labels from a classifier that never abstains (an oracle, a constant, a bare network)."""
        y = np.asarray(labels).reshape(-1).astype(np.int64)
        return cls(y, np.ones(len(y), dtype=bool))

    @classmethod
    def from_scored(cls, scored: Sequence[Scored], inputs: np.ndarray, empty: np.ndarray, photo: np.ndarray) -> Answers:
        """The classifier's `Scored` answers to the model inputs `inputs` (n, 28, 28), with their empty and photo
        flags (n,)."""
        return cls(
            labels=np.array([s.label for s in scored], dtype=np.int64),
            confident=np.array([s.class_confident for s in scored], dtype=bool),
            inputs=inputs,
            empty=empty,
            photo=photo,
            family_sure=np.array([s.confident for s in scored], dtype=bool),
            unlike=np.array([s.unsure_reason == UNLIKE_TRAINING for s in scored], dtype=bool),
        )

    @property
    def sure(self) -> np.ndarray:
        """(n,) bool: sure of the class or at least of the garment family; "unsure" is sure of neither."""
        confident = np.asarray(self.confident, dtype=bool)
        return confident if self.family_sure is None else (np.asarray(self.family_sure, dtype=bool) | confident)


# (condition name, the answers to that condition's uploads under the fitted policy) -> the same answers judged by
# the policy fitted without that condition; None when the condition was not in the fit (`fmnist.evaluation.leave_out`).
LeaveOut = Callable[[str, "Answers"], "Answers | None"]


@dataclass(frozen=True)
class Figures:
    """Accuracy of a set of answers, how many were confident, and how often the confident ones were right."""

    accuracy: float
    confident_share: float
    confident_accuracy: float  # nan when no answer was confident
    count: int


def figures(answers: Answers, truth: np.ndarray) -> Figures:
    """`answers` scored against `truth` (n,) class indices. Raises ValueError if the counts differ."""
    y = np.asarray(truth).reshape(-1)
    if len(answers) != len(y):
        raise ValueError(f"classify returned {len(answers)} answers for {len(y)} uploads")
    right = np.asarray(answers.labels) == y
    confident = np.asarray(answers.confident, dtype=bool)
    return Figures(
        accuracy=float(right.mean()) if len(y) else math.nan,
        confident_share=float(confident.mean()) if len(y) else math.nan,
        confident_accuracy=float(right[confident].mean()) if confident.any() else math.nan,
        count=len(y),
    )


def service_answers(classifier: Classifier) -> Callable[[Sequence[bytes]], Answers]:
    """The suites' `classify` function for a released model: uploads through the service's own path, as `Answers`
    (labels, verdicts and the 28x28 inputs the model saw)."""

    def classify(uploads: Sequence[bytes]) -> Answers:
        return Answers.from_scored(*classifier.classify_with_inputs(uploads))

    return classify
