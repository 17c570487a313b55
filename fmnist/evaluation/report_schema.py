"""The evaluation report's shape: typed records the report builder returns and the cards, the tracker, the flow's
end step and the model record's metrics read, so a rename is a refactor rather than a grep for string keys.

The Metaflow artifact stays plain data (`EvaluationReport.model_dump()`, JSON-able, readable without this package);
`EvaluationReport.model_validate(run.data.report)` gives the typed record back. This module imports only pydantic,
so the flow's cards can use it without loading torch.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    # Extra keys are kept, not rejected: a report written by a newer version still reads.
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class ClassScore(_Record):
    """Precision, recall, F1 and support of one class."""

    name: str = Field(alias="class")
    precision: float
    recall: float
    f1: float
    support: int


class Confusion(_Record):
    """One frequent mistake: true class, predicted class, how often, and its share of the true class."""

    true: str
    predicted: str
    count: int
    share_of_class: float


class ClassificationMetrics(_Record):
    """Accuracy with its 95% Wilson interval, per-class scores and the confusion matrix on the test set."""

    accuracy: float
    accuracy_ci95: tuple[float, float]
    num_examples: int
    macro_f1: float
    per_class_accuracy: dict[str, float]
    per_class: list[ClassScore]
    confusion_matrix: list[list[int]]  # row = true class, column = predicted class
    top_confusions: list[Confusion]


class ReliabilityBin(_Record):
    """One confidence bin of a reliability diagram."""

    lo: float
    hi: float
    count: int
    confidence: float
    accuracy: float


class CalibrationSummary(_Record):
    """ECE, NLL and mean confidence at one temperature; the bins only where a diagram is drawn."""

    temperature: float
    ece: float
    nll: float
    mean_confidence: float
    bins: list[ReliabilityBin] = Field(default_factory=list)


class Calibration(_Record):
    """Temperature scaling: fitted on validation, scored on validation and test before and after."""

    temperature: float
    fitted_on: str
    validation_before: CalibrationSummary
    validation_after: CalibrationSummary
    test_before: CalibrationSummary
    test_after: CalibrationSummary


class Perturbed(_Record):
    """Accuracy under one perturbation of the raw pixels; the first row is 'clean'."""

    name: str
    description: str
    accuracy: float
    change: float  # accuracy - clean accuracy


class PhotoRow(_Record):
    """Accuracy on the photo sample under one condition and severity; the first row is 'clean'."""

    condition: str
    description: str
    severity: float
    realistic: bool
    accuracy: float
    relative: float  # accuracy / clean accuracy of the same sample
    count: int
    confident_share: float | None = None  # share answered without "unsure" (reports before it: None)
    confident_accuracy: float | None = None  # accuracy of the confident answers; NaN when none was confident
    # The two judged by the photo thresholds fitted without this condition (`fmnist.evaluation.leave_out`): what a
    # kind of photo the fit never saw gets. NaN where not measured; None in reports before it.
    unseen_confident_share: float | None = None
    unseen_confident_accuracy: float | None = None


class PhotoSuite(_Record):
    """Test garments rendered as product photos, classified through the service's normalisation."""

    rows: list[PhotoRow]
    clean_accuracy: float
    worst: PhotoRow  # the realistic-severity row with the lowest accuracy
    sample_size: int
    photo_size: int


class WildRow(_Record):
    """One condition of the in-the-wild suite at one severity; the first rows are 'clean' and 'plain'."""

    condition: str
    description: str
    severity: float
    realistic: bool
    fully_visible: bool  # the whole garment in view: held to the clean-relative target
    accuracy: float
    relative: float  # accuracy / clean accuracy of the same sample
    confident_share: float
    confident_accuracy: float  # NaN when no answer was confident
    input_change: float  # mean |model input - the plain photo's model input|, grey levels; NaN where undefined
    count: int
    unseen_confident_share: float | None = None  # as `PhotoRow`'s: judged by thresholds fitted without the condition
    unseen_confident_accuracy: float | None = None


class WildSuite(_Record):
    """Test garments photographed as real photos are (`fmnist.evaluation.wild_photos`), through the service's
    normalisation."""

    rows: list[WildRow]
    clean_accuracy: float
    worst: dict[str, WildRow]  # figure ("accuracy", "confident_share", "confident_accuracy") -> the worst row
    sample_size: int
    photo_size: int


class Selective(_Record):
    """The abstention policy on a labelled set: how much is answered confidently and how often that is right."""

    num_examples: int
    num_confident: int
    coverage: float
    risk: float | None  # error rate among confident answers; None when there are none
    accuracy: float | None
    accuracy_all: float
    flagged: dict[str, float]  # share declined, per reason
    aurc: float
    coverage_at_target_risk: float
    target_risk: float
    confidence_threshold: float
    ood_score: str
    ood_threshold: float


class RiskCoveragePoint(_Record):
    """One operating point of the confidence threshold."""

    coverage: float
    risk: float
    threshold: float


class NonGarmentSet(_Record):
    """One set of non-garments: the share marked unsure, what the `empty` rule caught, what the scores alone did."""

    count: int
    unsure: float  # marked unsure by the service
    empty_rule: float  # declared empty by the normaliser before any score
    model_scores: float  # unsure by the model's OOD and confidence thresholds alone, empty rule aside
    per_kind: dict[str, float]
    per_kind_model_scores: dict[str, float] = Field(default_factory=dict)


class NonGarments(_Record):
    """Non-garments uploaded as images: the synthetic set's shares (per kind and overall) and every set's figures."""

    per_kind: dict[str, float]
    overall: float
    count: int
    sets: dict[str, NonGarmentSet] = Field(default_factory=dict)  # synthetic, photographs, faces, digits


class Abstention(_Record):
    """When the served model says "unsure": its thresholds, their effect on the test set, non-garments caught."""

    policy: dict[str, Any]  # AbstentionPolicy.metadata()
    test: Selective
    risk_coverage: list[RiskCoveragePoint]
    nongarments: NonGarments


class Mistake(_Record):
    """One confidently misclassified test image."""

    index: int
    true: str
    predicted: str
    confidence: float
    image: list[list[int]]  # (28, 28) pixels


class RealPhotoRow(_Record):
    """One upstream folder of the real photographs' report split (`fmnist.evaluation.real_photo_suite`)."""

    folder: str
    count: int
    judged_by: str  # "exact", "family:<name>" or "unsure" (a garment without a Fashion-MNIST class)
    accuracy: float | None  # exact class where there is one, else the family; None for garments without a class
    family_accuracy: float | None
    confident: float | None  # confident of the class (`abstention.Decision.class_confident`)
    confident_family_accuracy: float | None
    # Confident, sure of the family at least: of the class, or of the garment family alone (`Decision.confident`).
    family_sure: float | None = None
    family_sure_accuracy: float | None = None
    unsure: float | None  # sure of neither
    unlike: float | None = None  # declined as unlike the training images (the OOD check), an empty upload too


class RealPhotoWorst(_Record):
    """A wrong answer to a real photograph, as the grid shows it."""

    name: str
    folder: str
    predicted: str
    confident: bool
    image: list[list[int]]  # (28, 28): what the model saw
    family_sure: bool = False


class RealPhotoSuite(_Record):
    """Real phone photographs of clothes (`fmnist.core.real_photos`, report split) through the service's path."""

    count: int
    rows: list[RealPhotoRow]
    exact_accuracy: float | None
    family_accuracy: float | None
    confident: float | None
    confident_family_accuracy: float | None
    family_sure: float | None = None
    family_sure_accuracy: float | None = None
    no_class_unsure: float | None
    unlike: float | None = None  # garments with a class declined as unlike the training images
    worst: list[RealPhotoWorst]


class EvaluationReport(_Record):
    """Everything the evaluate step found out about the chosen model."""

    test: ClassificationMetrics
    calibration: Calibration
    robustness: list[Perturbed]
    photos: PhotoSuite
    abstention: Abstention
    misclassified: list[Mistake]
    provenance: dict[str, Any]
    wild_photos: WildSuite | None = None  # reports before the in-the-wild suite: None
    validation_unsure_share: float | None = None  # clean validation images marked unsure (the drift reference's)
    real_photos: RealPhotoSuite | None = None  # reports before the real-photograph suite, or a profile without it

    def to_artifact(self) -> dict[str, Any]:
        """Plain data for the Metaflow artifact (field names as stored, e.g. 'class' in per-class scores)."""
        return self.model_dump(mode="json", by_alias=True)

    def summary(self) -> dict[str, float]:
        """The headline numbers, flat: for the end step, the tracker and the model record's metrics."""
        test, cal = self.test, self.calibration
        perturbed = [r for r in self.robustness if r.name != "clean"]
        summary = {
            "test_accuracy": test.accuracy,
            "test_accuracy_ci95_low": test.accuracy_ci95[0],
            "test_accuracy_ci95_high": test.accuracy_ci95[1],
            "test_macro_f1": test.macro_f1,
            "temperature": cal.temperature,
            "test_ece_before": cal.test_before.ece,
            "test_ece_after": cal.test_after.ece,
            "test_nll_before": cal.test_before.nll,
            "test_nll_after": cal.test_after.nll,
            "photo_clean_accuracy": self.photos.clean_accuracy,
            "photo_worst_realistic_accuracy": self.photos.worst.accuracy,
            "photo_worst_realistic_relative": self.photos.worst.relative,
            "confident_coverage": self.abstention.test.coverage,
            "confident_accuracy": self.abstention.test.accuracy or 0.0,
            "nongarments_unsure": self.abstention.nongarments.overall,
        }
        if perturbed:
            summary["worst_perturbation_accuracy"] = min(r.accuracy for r in perturbed)
        if self.wild_photos is not None:
            worst = self.wild_photos.worst
            summary["wild_worst_realistic_accuracy"] = worst["accuracy"].accuracy
            summary["wild_worst_confident_accuracy"] = worst["confident_accuracy"].confident_accuracy
        for name, found in self.abstention.nongarments.sets.items():
            summary[f"nongarments_{name}_unsure_by_scores"] = found.model_scores
        return summary

    def summary_lines(self) -> list[str]:
        """The headline as the flow's end step prints it: calibration, photos, abstention."""
        cal, photos, selective = self.calibration, self.photos, self.abstention.test
        return [
            f"temperature {cal.temperature:.3f}: test ECE {cal.test_before.ece:.2%} -> {cal.test_after.ece:.2%}",
            f"photos: worst realistic condition {photos.worst.condition} at {photos.worst.accuracy:.1%}"
            f" ({photos.worst.relative:.2f} x clean {photos.clean_accuracy:.1%})",
            f"unsure: {selective.coverage:.1%} of test answers confident, {selective.accuracy or 0:.2%} of those"
            f" correct; {self.abstention.nongarments.overall:.1%} of synthetic non-garments marked unsure",
            *self._wild_lines(),
        ]

    def _wild_lines(self) -> list[str]:
        lines = []
        real = self.real_photos
        if real is not None:
            right = real.confident_family_accuracy
            lines.append(
                f"real photographs ({real.count}): family {real.family_accuracy or 0:.1%}, exact class"
                f" {real.exact_accuracy or 0:.1%}; {real.confident or 0:.1%} confident of the class"
                + (f", {right:.1%} of those right" if right is not None else "")
                + (
                    f"; confident (of the family at least) {real.family_sure:.1%}, {real.family_sure_accuracy or 0:.1%}"
                    " of those the right family"
                    if real.family_sure is not None
                    else ""
                )
                + f"; no class: {real.no_class_unsure or 0:.1%} unsure"
            )
        if self.wild_photos is not None:
            accuracy, confident = self.wild_photos.worst["accuracy"], self.wild_photos.worst["confident_accuracy"]
            lines.append(
                f"in-the-wild photos: worst realistic accuracy {accuracy.condition} {accuracy.accuracy:.1%};"
                f" right when confident, worst {confident.condition} {confident.confident_accuracy:.1%}"
            )
        sets = self.abstention.nongarments.sets
        if sets:
            lines.append(
                "non-garments unsure by the model's scores alone: "
                + ", ".join(f"{name} {found.model_scores:.1%} of {found.count}" for name, found in sets.items())
            )
        return lines
