"""Abstention, "unsure" as a first-class answer: when to decline a prediction, fitted on the validation split only.

A prediction is declined for one of two reasons, checked in this order:

    unlike_training_images  The image's descriptor (`FashionCNN.describe`) is far from every class of Fashion-MNIST: an
                            out-of-distribution (OOD) score above a threshold. Checked first because on such an
                            input the classifier's confidence means nothing (networks are confidently wrong far
                            from their data, Hein et al. 2019).
    low_confidence          The image looks like the training data but the calibrated top probability is below a
                            threshold chosen for selective classification (Geifman & El-Yaniv 2017): the lowest
                            threshold whose selective risk (error rate among the answers kept) on validation is at
                            most `target_risk`.

A photo whose class is unsure can still be sure of its garment family (`fmnist.core.data.FAMILIES`: tops,
trousers, dress, footwear, bag): a T-shirt and a shirt, a sneaker and a sandal are often told apart by detail a 28x28
view of a phone photo no longer has, where the family is plain. Such an answer is confident of its family
(`Decision.confident`, with `Decision.family` naming it) but not of its class (`Decision.class_confident` false) when
the calibrated probability summed over the top class's family reaches `family_threshold`, fitted like the photo
threshold with a risk bound (the family wrong at most `target_risk` of the time among those family-only answers,
bounded on their own so that they are as trustworthy as the class-confident ones). Hierarchical selective
classification, after Goren et al. (2024): the answer says how far it can be relied on, its class or its family, where
a flat rule would decline it. A scan is confident of its class or of nothing.

Two OOD scores are implemented; higher always means "less like the training images":

    mahalanobis  Lee et al. (2018): class-conditional Gaussians with one shared covariance fitted on the network's
                 descriptor (every conv block's mean activation, then the pooled features the head reads: their
                 feature ensemble, in one Gaussian); the score is the squared Mahalanobis distance to the nearest
                 class mean. The features are square-rooted first (`DEFAULT_FEATURE_POWER`): ReLU outputs are
                 skewed, and the Gaussian fits their square roots far better.
    energy       Liu et al. (2020): -T * logsumexp(logits / T), T = 1, the free energy of the logits.

Mahalanobis (on square-rooted features, over every conv block's mean activation and the pooled features) is the
policy's default: it separates far-from-garment patterns (checkerboards, stripes, text, flat shapes) that the
logits' energy confuses with garments, and the confidence threshold catches what it misses (a few bright specks on
black). The descriptor and the score were first compared on test images and on the report's own non-garments;
such choices are now made on the development sets that `benchmarks/photo_robustness.py` prints (validation images,
non-garments drawn with other seeds and other photographs than the report's), with the share each set gets flagged
by the model's scores alone. Re-compared there on the default model (`photo_robustness.py --run
FashionFlow/1796368689035310`, then with `--feature-power 1.0`, then `--ood-score energy`, all three before the real
photos' family components below; development non-garments unsure, synthetic / photographs / faces / digits; rendered
photos at realistic severities answered confidently):

    mahalanobis, power 0.5 (the default)  99.4 / 100 / 97.0 / 100%;  67.1% confident, 99.03% right
    mahalanobis, power 1.0                99.4 / 100 / 96.0 / 98.5%; 57.0% confident, 99.53% right
    energy                                94.3 / 96.7 / 95.0 / 99.5%; 62.9% confident, 99.33% right

The square-rooted Mahalanobis score catches the most non-garments and answers the most photos, so it stays. (Real
photos sure of their family: 35.4%, 40.4% and 49.5%, each about 99% right: the other two let more real garments pass
the OOD check, and with them more non-garments.) The descriptor's layers are part of the network
(`FashionCNN.describe`) and were not re-compared.

Photos are also measured against real phone photos (`fmnist.core.real_photos`): by default every real garment photo
is a component of its own (its descriptor; a family's mean or k-means centres are the other choices,
`fit_photo_components`), with the same precision. A photo passes the OOD check when it is close enough to the clean
scans (the photo OOD threshold) or to the nearest component (the components' own threshold, from other real photos
than the components); one score carries both (`photo_scores`). A scan is measured
against the class means alone (a handwritten digit, a scan, would otherwise come closer to the components). A
garment on a bed, a floor or a rug is far from every clean studio scan while plainly a garment; a face or a landscape
stays far from both.

Both thresholds are fitted on the validation split (never the test set) and travel in the model record: the
scalars as JSON (`AbstentionPolicy.metadata`), the class means and the precision matrix as tensors
(`AbstentionPolicy.tensors`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fmnist.core.data import FAMILY_OF
from fmnist.trust.calibration import softmax

log = logging.getLogger(__name__)

UNLIKE_TRAINING = "unlike_training_images"
LOW_CONFIDENCE = "low_confidence"
REASONS = (UNLIKE_TRAINING, LOW_CONFIDENCE)

OOD_SCORES = ("mahalanobis", "energy")
# Mahalanobis on square-rooted features beats energy on the non-garments a user uploads by mistake (module docstring).
DEFAULT_OOD_SCORE = "mahalanobis"
# At most 2% wrong answers among those marked confident.
DEFAULT_TARGET_RISK = 0.02
# About 0.5% of in-distribution (validation) images are flagged as unlike the training images.
DEFAULT_OOD_QUANTILE = 0.995
# Photos: 10% of validation garment photos are flagged as unlike the training images (see `fit_abstention`).
DEFAULT_PHOTO_OOD_QUANTILE = 0.9
# Photos close to the real photos of a garment family: 80% of other real garment photos pass by that distance
# (`EvaluationConfig.photo_component_quantile`, chosen on validation).
DEFAULT_PHOTO_COMPONENT_QUANTILE = 0.8
# Photo components per garment family (`fmnist.trust.abstention_fit.fit_photo_components`): 1, the family's mean;
# k, k-means centres; 0, every real photo (`EvaluationConfig.photo_components_per_family`, chosen on validation).
DEFAULT_PHOTO_COMPONENTS_PER_FAMILY = 0
# Ridge added to the shared covariance, relative to its mean variance: ReLU-and-max-pooled features have
# near-degenerate directions, and a few thousand validation images estimate a covariance of a few hundred dimensions
# only roughly.
DEFAULT_RIDGE = 1e-3
# Penultimate features of FashionCNN are max-pooled ReLU outputs: non-negative and right-skewed, a poor fit for a
# Gaussian. A square root (the power transform of Hu et al. 2021, "Leveraging the feature distribution in
# transfer-based few-shot learning") makes them far closer to one. 1.0 gives Lee et al. as published.
DEFAULT_FEATURE_POWER = 0.5
# Liu et al. (2020) use T = 1; the calibration temperature is a different quantity and is not reused here.
ENERGY_TEMPERATURE = 1.0

TENSOR_PREFIX = "abstention."
# (C, C) bool: SAME_FAMILY[a, b] when classes a and b belong to one garment family.
SAME_FAMILY = np.array([[fa == fb for fb in FAMILY_OF] for fa in FAMILY_OF])


def confidence_scores(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(N, C) logits -> (N,) float64 maximum calibrated probability, softmax(logits / T).max()."""
    if len(logits) == 0:
        return torch.empty(0, dtype=torch.float64)
    return softmax(logits, temperature).max(1).values


def family_mass(probabilities: np.ndarray) -> np.ndarray:
    """(N, C) calibrated probabilities -> (N,) float64 probability summed over the top class's garment family."""
    p = np.asarray(probabilities, dtype=np.float64)
    return (p * SAME_FAMILY[p.argmax(1)]).sum(1)


def energy_scores(logits: torch.Tensor, temperature: float = ENERGY_TEMPERATURE) -> torch.Tensor:
    """(N, C) logits -> (N,) float64 energy -T * logsumexp(logits / T); higher is less like the training data."""
    z = logits.double() / temperature
    return -temperature * torch.logsumexp(z, dim=1)


def power_transform(features: torch.Tensor, power: float = DEFAULT_FEATURE_POWER) -> torch.Tensor:
    """(N, D) non-negative (post-ReLU) features -> features ** power, float64; power 1.0 returns them unchanged.

    Negative values, which FashionCNN's max-pooled ReLU features never have, are clamped to zero first.
    """
    f = features.double()
    if power == 1.0:
        return f
    return f.clamp_min(0.0).pow(power)


def mahalanobis_scores(features: torch.Tensor, class_means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(N, D) features -> (N,) float64 squared Mahalanobis distance to the nearest class mean.

    min_c (f - mu_c)^T P (f - mu_c), expanded as f P f - 2 f P mu_c + mu_c P mu_c so that a batch costs a few
    matmuls ((N, D) x (D, D) and (N, D) x (D, C)) instead of an (N, C, D) difference tensor. float64 keeps the
    cancellation in the expansion harmless.
    """
    return _mahalanobis(features, mahalanobis_terms(class_means, precision))


def mahalanobis_terms(class_means: torch.Tensor, precision: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What `mahalanobis_scores` computes from the density alone: float64 means (C, D), precision (D, D) and
    mu_c P mu_c (C,). A policy keeps them, so a request pays only for its own features' matmuls."""
    mu = class_means.double()  # (C, D)
    p = precision.double()  # (D, D)
    quad_mu = ((mu @ p) * mu).sum(1)  # (C,)
    return mu, p, quad_mu


def _mahalanobis(features: torch.Tensor, terms: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return squared_distances(features, terms).min(1).values


def squared_distances(features: torch.Tensor, terms: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """(N, D) features and `mahalanobis_terms` -> (N, C) float64 squared Mahalanobis distance to each class mean."""
    mu, p, quad_mu = terms
    f = features.double()  # (N, D)
    fp = f @ p  # (N, D)
    quad_f = (fp * f).sum(1, keepdim=True)  # (N, 1)
    cross = fp @ mu.T  # (N, C)
    return (quad_f - 2 * cross + quad_mu).clamp_min(0.0)  # (N, C)


@dataclass(frozen=True)
class Decision:
    """Whether to trust one prediction, and if not, why."""

    # The answer can be relied on: for its class (`class_confident`) or, a photo, at least for its garment family.
    confident: bool
    reason: str | None  # None when confident, else "unlike_training_images" or "low_confidence"
    confidence: float  # maximum calibrated probability
    ood_score: float  # higher: less like the training images
    # The garment family the answer can be relied on for: its class's when the class is confident; for a photo whose
    # class is unsure but whose family is sure (`AbstentionPolicy.family_threshold`), that family; None when not
    # confident.
    family: str | None = None
    # The class itself can be relied on: the selective rule at the (photo) confidence threshold. Implies `confident`.
    class_confident: bool = False

    def __post_init__(self) -> None:
        if self.class_confident and not self.confident:
            raise ValueError("an answer confident of its class is confident")
        if self.confident != (self.family is not None) or self.confident != (self.reason is None):
            raise ValueError(f"a confident answer names its family and no reason: {self}")


@dataclass(kw_only=True)
class AbstentionPolicy:
    """The two fitted thresholds and the feature density that the OOD score needs; travels in the model record."""

    confidence_threshold: float
    target_risk: float = DEFAULT_TARGET_RISK
    ood_score: str = DEFAULT_OOD_SCORE
    ood_threshold: float
    ood_quantile: float = DEFAULT_OOD_QUANTILE
    class_means: torch.Tensor  # (C, D) float32 on the CPU
    precision: torch.Tensor  # (D, D) float32 on the CPU, inverse of the shared (ridged) covariance
    ridge: float = DEFAULT_RIDGE
    feature_power: float = DEFAULT_FEATURE_POWER  # features ** power before the Mahalanobis score
    # What the policy reached on the validation split it was fitted on.
    val_coverage: float = math.nan
    val_risk: float = math.nan
    val_ood_flagged: float = math.nan
    num_fit_examples: int = 0
    # The photo part of the fit (validation garments rendered as photos; `fmnist.evaluation.photo_mix`), when there was
    # one. Photos (uploads the normaliser had to transform, `imaging.Normalized.photo`) are held to their own confidence
    # threshold: the lowest that keeps their selective risk at the target, never below the scans' one. NaN: photos
    # share `confidence_threshold` (policies fitted before photos were part of the fit).
    photo_threshold: float = math.nan
    # Photos also have their own OOD threshold: the `photo_ood_quantile` quantile of the validation photos' scores,
    # never above the scans' one. NaN: photos share `ood_threshold`.
    photo_ood_threshold: float = math.nan
    photo_ood_quantile: float = math.nan
    val_photo_coverage: float = math.nan
    val_photo_risk: float = math.nan
    num_fit_photos: int = 0
    # Photos whose class is unsure but which pass the OOD check are sure of their garment family when the calibrated
    # probability summed over the top class's family is at least this (fitted with the photo threshold). NaN: no
    # family answers (policies fitted before them, or without photos).
    family_threshold: float = math.nan
    val_photo_family_coverage: float = math.nan
    val_photo_family_risk: float = math.nan
    # (K, D) float32 on the CPU: (power-transformed) descriptors of real phone photos, every photo's own or each
    # family's mean (`fit_abstention`'s `photo_density`), with the shared precision. A photo also passes the
    # OOD check when its distance to the nearest component is at most `photo_component_threshold`, the
    # `photo_component_quantile` quantile of other real garment photos' distances (`photo_scores`). None or NaN:
    # photos are scored like scans (policies fitted before, or without real photos).
    photo_means: torch.Tensor | None = None
    photo_component_threshold: float = math.nan
    photo_component_quantile: float = math.nan

    def __post_init__(self) -> None:
        if self.ood_score not in OOD_SCORES:
            raise ValueError(f"unknown OOD score {self.ood_score!r}; expected one of {OOD_SCORES}")

    def metadata(self) -> dict[str, Any]:
        """Every scalar of the policy as plain JSON-able data (no tensors; see `tensors`)."""
        return {
            "confidence_threshold": float(self.confidence_threshold),
            "target_risk": float(self.target_risk),
            "ood_score": self.ood_score,
            "ood_threshold": float(self.ood_threshold),
            "ood_quantile": float(self.ood_quantile),
            "ridge": float(self.ridge),
            "feature_power": float(self.feature_power),
            "val_coverage": _json_float(self.val_coverage),
            "val_risk": _json_float(self.val_risk),
            "val_ood_flagged": _json_float(self.val_ood_flagged),
            "num_fit_examples": int(self.num_fit_examples),
            "photo_threshold": _json_float(self.photo_threshold),
            "photo_ood_threshold": _json_float(self.photo_ood_threshold),
            "photo_ood_quantile": _json_float(self.photo_ood_quantile),
            "val_photo_coverage": _json_float(self.val_photo_coverage),
            "val_photo_risk": _json_float(self.val_photo_risk),
            "num_fit_photos": int(self.num_fit_photos),
            "family_threshold": _json_float(self.family_threshold),
            "val_photo_family_coverage": _json_float(self.val_photo_family_coverage),
            "val_photo_family_risk": _json_float(self.val_photo_family_risk),
            "num_classes": int(self.class_means.shape[0]),
            "feature_dim": int(self.class_means.shape[1]),
            "num_photo_components": 0 if self.photo_means is None else int(self.photo_means.shape[0]),
            "photo_component_threshold": _json_float(self.photo_component_threshold),
            "photo_component_quantile": _json_float(self.photo_component_quantile),
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        """The class means, precision matrix and photo components (when fitted) as contiguous CPU float32 tensors,
        keys prefixed 'abstention.'."""
        parts = {"class_means": self.class_means, "precision": self.precision, "photo_means": self.photo_means}
        return {
            TENSOR_PREFIX + name: t.detach().to("cpu", torch.float32).contiguous()
            for name, t in parts.items()
            if t is not None
        }

    @classmethod
    def from_parts(cls, metadata: dict[str, Any], tensors: dict[str, torch.Tensor]) -> AbstentionPolicy:
        """Rebuild a policy from `metadata()` and `tensors()` (other keys in `tensors`, e.g. weights, are ignored)."""
        try:
            means = tensors[TENSOR_PREFIX + "class_means"]
            precision = tensors[TENSOR_PREFIX + "precision"]
        except KeyError as err:
            raise ValueError(f"abstention tensor {err} missing from the model record") from None
        if means.ndim != 2 or precision.shape != (means.shape[1], means.shape[1]):
            raise ValueError(f"class means {tuple(means.shape)} and precision {tuple(precision.shape)} do not match")
        photo_means = tensors.get(TENSOR_PREFIX + "photo_means")
        if photo_means is not None and (photo_means.ndim != 2 or photo_means.shape[1] != means.shape[1]):
            raise ValueError(f"photo components {tuple(photo_means.shape)} and class means {tuple(means.shape)} differ")
        return cls(
            confidence_threshold=float(metadata["confidence_threshold"]),
            target_risk=float(metadata["target_risk"]),
            ood_score=str(metadata["ood_score"]),
            ood_threshold=float(metadata["ood_threshold"]),
            ood_quantile=float(metadata["ood_quantile"]),
            class_means=means.detach().to("cpu", torch.float32),
            precision=precision.detach().to("cpu", torch.float32),
            ridge=float(metadata.get("ridge", DEFAULT_RIDGE)),
            feature_power=float(metadata.get("feature_power", 1.0)),
            val_coverage=_from_json_float(metadata.get("val_coverage")),
            val_risk=_from_json_float(metadata.get("val_risk")),
            val_ood_flagged=_from_json_float(metadata.get("val_ood_flagged")),
            num_fit_examples=int(metadata.get("num_fit_examples", 0)),
            photo_threshold=_from_json_float(metadata.get("photo_threshold")),
            photo_ood_threshold=_from_json_float(metadata.get("photo_ood_threshold")),
            photo_ood_quantile=_from_json_float(metadata.get("photo_ood_quantile")),
            val_photo_coverage=_from_json_float(metadata.get("val_photo_coverage")),
            val_photo_risk=_from_json_float(metadata.get("val_photo_risk")),
            num_fit_photos=int(metadata.get("num_fit_photos", 0)),
            family_threshold=_from_json_float(metadata.get("family_threshold")),
            val_photo_family_coverage=_from_json_float(metadata.get("val_photo_family_coverage")),
            val_photo_family_risk=_from_json_float(metadata.get("val_photo_family_risk")),
            photo_means=None if photo_means is None else photo_means.detach().to("cpu", torch.float32),
            photo_component_threshold=_from_json_float(metadata.get("photo_component_threshold")),
            photo_component_quantile=_from_json_float(metadata.get("photo_component_quantile")),
        )

    def ood_scores(self, logits: torch.Tensor, features: torch.Tensor, photo: np.ndarray | None = None) -> torch.Tensor:
        """(N,) float64 scores of the policy's OOD method; higher is less like the training images. `photo` (N,) bool
        marks the photos, whose score also counts their distance to the photo components (`photo_scores`); None: all
        are scans."""
        if self.ood_score == "energy":
            return energy_scores(logits)
        transformed = power_transform(features, self.feature_power)  # (N, D)
        scans = _mahalanobis(transformed, self._terms("class", self.class_means))  # (N,)
        if photo is None or self.photo_means is None:
            return scans
        marks = np.asarray(photo, dtype=bool).reshape(-1)
        if len(marks) != len(scans):
            raise ValueError(f"{len(marks)} photo flags for {len(scans)} inputs")
        nearest = _mahalanobis(transformed, self._terms("photo", self.photo_means))  # (N,)
        return torch.from_numpy(self.marked_scores(scans.numpy(), nearest.numpy(), marks))

    def marked_scores(self, scans: np.ndarray, components: np.ndarray, photo: np.ndarray | None) -> np.ndarray:
        """(N,) OOD scores from (N,) scan scores and (N,) distances to the nearest photo component: `photo_scores` where
        `photo` (N,) bool is set, the scan score elsewhere (everywhere when `photo` is None)."""
        if photo is None:
            return np.asarray(scans, dtype=np.float64)
        return np.where(photo, self.photo_scores(scans, components), scans)

    def component_distances(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) features -> (N,) float64 squared Mahalanobis distance to the nearest photo component (`photo_means`
        must be set)."""
        if self.photo_means is None:
            raise ValueError("the policy has no photo components")
        return _mahalanobis(power_transform(features, self.feature_power), self._terms("photo", self.photo_means))

    def photo_scores(self, scans: np.ndarray, components: np.ndarray) -> np.ndarray:
        """A photo's OOD score from its scan score (distance to the nearest class mean) and its distance to the nearest
        photo component: it passes when either is within its own threshold, so the component distance is rescaled to
        meet the photo threshold, min(scan, component x photo OOD threshold / component threshold). The scan score
        alone where the policy has no components."""
        scans = np.asarray(scans, dtype=np.float64)
        if self.photo_means is None or not self.photo_component_threshold > 0:
            return scans
        photo_threshold = self.ood_threshold if math.isnan(self.photo_ood_threshold) else self.photo_ood_threshold
        scale = photo_threshold / self.photo_component_threshold
        return np.minimum(scans, np.asarray(components, dtype=np.float64) * scale)

    def _terms(self, name: str, means: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # The density's own terms are computed once per (means, precision) pair, not on every request.
        cached = self.__dict__.get(f"_mahalanobis_{name}")
        if cached is None or cached[0] is not means or cached[1] is not self.precision:
            cached = (means, self.precision, mahalanobis_terms(means, self.precision))
            self.__dict__[f"_mahalanobis_{name}"] = cached
        return cached[2]

    def scores(
        self, logits: torch.Tensor, features: torch.Tensor, temperature: float, photo: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Vectorised `decide`: (confidence (N,), OOD score (N,), reason code (N,) int64).

        Reason codes: 0 confident, 1 unlike the training images, 2 low confidence. `photo` (N,) bool marks the
        inputs that were photos (see `reason_codes`); None: all are scans in Fashion-MNIST's own form.
        """
        confidence = confidence_scores(logits, temperature)  # (N,)
        ood = self.ood_scores(logits, features, photo)  # (N,)
        return confidence, ood, torch.from_numpy(self.reason_codes(confidence.numpy(), ood.numpy(), photo))

    def thresholds(self, photo: np.ndarray | None, n: int) -> tuple[np.ndarray | float, np.ndarray | float]:
        """(confidence threshold, OOD threshold) of each of `n` inputs: the photo thresholds where `photo` is set
        and the policy has them, the scans' thresholds elsewhere."""
        if photo is None:
            return self.confidence_threshold, self.ood_threshold
        marks = np.asarray(photo, dtype=bool).reshape(-1)
        if len(marks) != n:
            raise ValueError(f"{len(marks)} photo flags for {n} inputs")

        def pick(photos: float, scans: float) -> np.ndarray | float:
            return scans if math.isnan(photos) else np.where(marks, photos, scans)

        return pick(self.photo_threshold, self.confidence_threshold), pick(self.photo_ood_threshold, self.ood_threshold)

    def reason_codes(self, confidence: np.ndarray, ood: np.ndarray, photo: np.ndarray | None = None) -> np.ndarray:
        """(N,) maximum calibrated probabilities and (N,) OOD scores -> (N,) int64 reason codes (see `scores`);
        `photo` (N,) bool: which inputs were photos, held to `photo_threshold`."""
        # Negated comparisons, so that a NaN score (from non-finite logits or features) is never confident.
        confidence_threshold, ood_threshold = self.thresholds(photo, len(confidence))
        unlike = ~(ood <= ood_threshold)
        low = ~(confidence >= confidence_threshold)
        # The OOD check wins: confidence on an input unlike the training data means nothing.
        return np.where(unlike, 1, np.where(low, 2, 0)).astype(np.int64)

    def decide(
        self, logits: torch.Tensor, features: torch.Tensor, temperature: float, photo: np.ndarray | None = None
    ) -> list[Decision]:
        """One Decision per row of (N, C) logits and (N, D) features, softmax temperature `temperature`.

        A few small matmuls per batch, cheap enough for every request.
        """
        probabilities = softmax(logits, temperature).numpy()  # (N, C) float64
        return self.decisions(probabilities, self.ood_scores(logits, features, photo).numpy(), photo)

    def decisions(self, probabilities: np.ndarray, ood: np.ndarray, photo: np.ndarray | None = None) -> list[Decision]:
        """One Decision per row of (N, C) calibrated probabilities and (N,) OOD scores: the rule every runtime
        applies."""
        probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(ood), -1)
        confidence = probabilities.max(1)  # (N,)
        codes = self.reason_codes(confidence, ood, photo)
        families = self.family_answers(probabilities, codes, photo)
        reasons = (None, UNLIKE_TRAINING, LOW_CONFIDENCE)
        return [
            Decision(
                confident=f is not None,
                reason=None if f is not None else reasons[c],
                confidence=p,
                ood_score=s,
                family=f,
                class_confident=c == 0,
            )
            for c, p, s, f in zip(codes.tolist(), confidence.tolist(), ood.tolist(), families, strict=True)
        ]

    def family_answers(
        self, probabilities: np.ndarray, codes: np.ndarray, photo: np.ndarray | None = None
    ) -> list[str | None]:
        """The garment family each answer can be relied on for (see `Decision.family`), from (N, C) calibrated
        probabilities and the (N,) reason codes of `reason_codes`."""
        top = probabilities.argmax(1)  # (N,)
        sure = codes == 0
        if photo is not None and not math.isnan(self.family_threshold):
            marks = np.asarray(photo, dtype=bool).reshape(-1)
            # Negated, so that a NaN probability is never sure.
            sure = sure | (marks & (codes == 2) & ~(family_mass(probabilities) < self.family_threshold))
        return [FAMILY_OF[t] if s else None for t, s in zip(top.tolist(), sure.tolist(), strict=True)]


def _json_float(x: float) -> float | None:
    # NaN and infinities are not JSON; None stands for "not measured".
    return float(x) if math.isfinite(x) else None


def _from_json_float(x: float | None) -> float:
    return math.nan if x is None else float(x)
