"""Fitting the "unsure" policy on the validation split, and the selective-classification figures it is judged by.

`fmnist.trust.abstention` holds the policy itself (what the service runs); this module builds one from validation
logits and descriptors (`fit_abstention`) and measures risk against coverage (`risk_coverage_curve`, `aurc`,
`selective_summary`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from fmnist.core.data import FAMILIES
from fmnist.trust.abstention import (
    DEFAULT_FEATURE_POWER,
    DEFAULT_OOD_QUANTILE,
    DEFAULT_OOD_SCORE,
    DEFAULT_PHOTO_COMPONENT_QUANTILE,
    DEFAULT_PHOTO_COMPONENTS_PER_FAMILY,
    DEFAULT_PHOTO_OOD_QUANTILE,
    DEFAULT_RIDGE,
    DEFAULT_TARGET_RISK,
    REASONS,
    SAME_FAMILY,
    AbstentionPolicy,
    confidence_scores,
    family_mass,
    mahalanobis_scores,
    power_transform,
)
from fmnist.trust.calibration import softmax

log = logging.getLogger(__name__)

# The photo threshold's risk bound holds with probability at least 1 - PHOTO_RISK_DELTA (`guaranteed_risk_threshold`).
PHOTO_RISK_DELTA = 0.05
# Candidate thresholds of the bound: one per 5% of coverage.
RISK_CANDIDATES = 20
# The scans' OOD threshold is a quantile of validation scores that the density did not see: each of OOD_FOLDS parts
# scored by the density fitted on the others (`held_out_ood_scores`). Scored by the density they were fitted on, the
# 240-dimensional descriptors sit closer to their class means than a new image's do: with the density and the 99.5%
# quantile of such in-sample scores fitted on one half of the validation split, 2.16% of the other half was flagged
# rather than 0.5%; with the held-out quantile, 0.28% (`benchmarks/photo_robustness.py --run
# FashionFlow/1796485873631808` prints both). Five folds fit each density on four fifths, nearly the whole split's own.
OOD_FOLDS = 5


def fit_gaussian(
    features: torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    num_classes: int | None = None,
    ridge: float = DEFAULT_RIDGE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means (C, D) and the shared precision matrix (D, D), both float32, from (N, D) features and labels.

    The covariance is pooled over classes (each feature minus its own class mean), as in Lee et al. (2018), plus
    `ridge` times its mean variance on the diagonal so the inverse stays stable. Computed in float64, stored in
    float32: the scores are then computed from exactly the tensors that travel in the model record.
    """
    f = torch.as_tensor(features).double()  # (N, D)
    y = torch.as_tensor(np.asarray(labels).astype(np.int64))  # (N,)
    if f.ndim != 2 or len(f) != len(y) or len(f) == 0:
        raise ValueError(f"need (N, D) features with N > 0 matching N labels, got {tuple(f.shape)} and {len(y)}")
    c = int(num_classes if num_classes is not None else int(y.max()) + 1)
    d = f.shape[1]
    counts = torch.bincount(y, minlength=c).double()  # (C,)
    sums = torch.zeros(c, d, dtype=torch.float64).index_add_(0, y, f)  # (C, D)
    means = sums / counts.clamp(min=1.0)[:, None]  # (C, D)
    if (counts == 0).any():
        log.warning("no examples of class(es) %s: their means are zero", torch.nonzero(counts == 0).flatten().tolist())
    centred = f - means[y]  # (N, D)
    cov = centred.T @ centred / len(f)  # (D, D)
    scale = float(cov.diagonal().mean()) if d else 1.0
    cov += (ridge * (scale if scale > 0 else 1.0)) * torch.eye(d, dtype=torch.float64)
    precision = torch.linalg.inv(cov)
    precision = (precision + precision.T) / 2  # exact symmetry, lost to rounding in the inverse
    return means.float(), precision.float()


def _tie_groups(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct confidence, most confident first: (threshold, answers with confidence >= it, their errors).

    Answers with equal confidence are kept or dropped together by any threshold, so only the ends of tie groups
    are valid operating points.
    """
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    wrong = ~np.asarray(correct, dtype=bool).ravel()
    if len(conf) != len(wrong):
        raise ValueError(f"{len(conf)} confidences but {len(wrong)} correctness flags")
    order = np.argsort(-conf, kind="stable")
    sorted_conf = conf[order]
    cum_errors = np.cumsum(wrong[order])
    ends = np.flatnonzero(np.append(sorted_conf[1:] != sorted_conf[:-1], True))  # last index of each tie group
    return sorted_conf[ends], ends + 1, cum_errors[ends]


def _lowest_threshold(confidence: np.ndarray, correct: np.ndarray, target_risk: float) -> tuple[float, bool]:
    """(lowest confidence threshold whose selective risk is <= target_risk, whether any threshold reached it)."""
    thresholds, kept, errors = _tie_groups(confidence, correct)
    if len(thresholds) == 0:
        raise ValueError("cannot fit a confidence threshold on zero examples")
    # errors / kept <= target, in integers-times-float to avoid a division's rounding at the boundary.
    ok = np.flatnonzero(errors <= target_risk * kept + 1e-9)
    if len(ok) == 0:
        return float(thresholds[0]), False
    return float(thresholds[ok[-1]]), True


def risk_coverage_curve(confidence: np.ndarray, correct: np.ndarray, points: int = 101) -> list[dict[str, float]]:
    """At most `points` operating points (coverage, risk, threshold), from most to least confident.

    Coverage is the share of answers with confidence >= threshold, risk the error rate among them. Points are
    spread evenly in coverage; the last one keeps everything (coverage 1.0, risk = overall error rate).
    """
    thresholds, kept, errors = _tie_groups(confidence, correct)
    n = int(kept[-1]) if len(kept) else 0
    if n == 0:
        return []
    wanted = np.ceil(np.linspace(0.0, 1.0, max(points, 2)) * n).clip(1, n)  # answers to keep at each point
    groups = np.unique(np.searchsorted(kept, wanted))  # first tie group keeping at least that many
    return [
        {"coverage": float(kept[g] / n), "risk": float(errors[g] / kept[g]), "threshold": float(thresholds[g])}
        for g in groups
    ]


def coverage_at_risk(confidence: np.ndarray, correct: np.ndarray, target_risk: float) -> float:
    """Largest coverage whose selective risk is <= target_risk, over confidence thresholds; 0.0 if none."""
    _, kept, errors = _tie_groups(confidence, correct)
    ok = np.flatnonzero(errors <= target_risk * kept + 1e-9)
    return float(kept[ok[-1]] / kept[-1]) if len(ok) else 0.0


def aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk-coverage curve (Geifman et al. 2019): mean selective risk over every coverage k / N.

    Ties are resolved as any threshold would: a tie group's members share the risk of keeping the whole group.
    """
    _, kept, errors = _tie_groups(confidence, correct)
    if len(kept) == 0:
        return 0.0
    sizes = np.diff(np.concatenate([[0], kept]))  # members in each tie group
    return float((sizes * errors / kept).sum() / kept[-1])


def fit_abstention(
    val_logits: torch.Tensor,
    val_features: torch.Tensor,
    val_labels: np.ndarray,
    temperature: float,
    target_risk: float = DEFAULT_TARGET_RISK,
    ood_quantile: float = DEFAULT_OOD_QUANTILE,
    *,
    ood_score: str = DEFAULT_OOD_SCORE,
    ridge: float = DEFAULT_RIDGE,
    feature_power: float = DEFAULT_FEATURE_POWER,
    photos: tuple[torch.Tensor, torch.Tensor, np.ndarray] | None = None,
    photo_ood_quantile: float = DEFAULT_PHOTO_OOD_QUANTILE,
    photo_density: tuple[torch.Tensor, np.ndarray] | None = None,
    real_photos: np.ndarray | None = None,
    photo_component_quantile: float = DEFAULT_PHOTO_COMPONENT_QUANTILE,
    photo_components_per_family: int = DEFAULT_PHOTO_COMPONENTS_PER_FAMILY,
) -> AbstentionPolicy:
    """Fit both thresholds (and the feature density) on validation logits (N, C), features (N, D) and labels (N,).

    `photos`, when given, is (logits (M, C), features (M, D), labels (M,)) of validation garments rendered as photos
    and normalised as the service does (`fmnist.evaluation.photo_mix`): photos then get their own confidence threshold,
    the
    lowest that keeps their selective risk at `target_risk` (never below the scans' threshold), so a confident
    answer is as trustworthy on a photo as on a scan. A network is more often wrong, and as sure of itself, on a
    photo; one threshold for both would either let photo mistakes through or decline scans it gets right. Photos
    also get their own OOD threshold, the `photo_ood_quantile` quantile of the photos' scores (never above the
    scans' one): a photograph of something else, normalised into a garment-like blob, is then caught by its
    distance where its confidence would pass. The density stays the clean images' own: it describes what the
    training images look like.

    1. The feature density: class means and shared precision of the validation features raised to
       `feature_power` (fitted whichever `ood_score` is chosen, so a record can switch scores). Held-out features
       are what a new upload's features are compared with; the network has seen its training images, whose
       features sit a little closer to their class means.
    2. The OOD threshold: the `ood_quantile` quantile of the validation images' OOD scores, each by a density fitted
       without it (`held_out_ood_scores`), so about 1 - ood_quantile of new in-distribution images are flagged.
    3. The confidence threshold: among validation images that pass the OOD check, the lowest threshold whose
       selective risk is at most `target_risk`, so the policy as a whole reaches the target on validation. If no
       threshold does, the highest confidence seen (only the most confident tie group is kept), with a warning.
    4. `photo_density`, when given, is (features (K, D), right-class masks (K, C)) of real phone photos: they become
       the photo components, `photo_components_per_family` per family (`fit_photo_components`), and
       `real_photos` (M,) bool marks the other real photos, those in `photos`: the `photo_component_quantile` quantile
       of their distances to the nearest component (garments with a family only) is the components' own threshold.
       A real garment on a bed or a rug is far from every clean scan (its descriptor is not that of a 28x28 studio
       image) while being plainly a garment; close to the real photos of its family, it passes the OOD check where a
       face or a landscape still does not (`AbstentionPolicy.photo_scores`). The components and their threshold come
       from different photos, so the threshold is what a new real photo meets. Scans are never scored against the
       components (a handwritten digit would come closer to them).
    """
    labels = np.asarray(val_labels).astype(np.int64)
    if not (len(val_logits) == len(val_features) == len(labels)) or len(labels) == 0:
        raise ValueError(f"need matching, non-empty logits {len(val_logits)}, features {len(val_features)}, labels")
    if not 0.0 <= target_risk < 1.0 or not 0.0 < ood_quantile <= 1.0:
        raise ValueError(f"target_risk {target_risk} must be in [0, 1), ood_quantile {ood_quantile} in (0, 1]")
    means, precision = fit_gaussian(
        power_transform(val_features, feature_power), labels, num_classes=val_logits.shape[1], ridge=ridge
    )
    policy = AbstentionPolicy(
        confidence_threshold=0.0,
        target_risk=target_risk,
        ood_score=ood_score,
        ood_threshold=math.inf,
        ood_quantile=ood_quantile,
        class_means=means,
        precision=precision,
        ridge=ridge,
        feature_power=feature_power,
        num_fit_examples=len(labels),
    )
    # Scores from the stored float32 tensors, exactly as `decide` will compute them.
    ood = policy.ood_scores(val_logits, val_features).numpy()  # (N,)
    policy.ood_threshold = float(
        np.quantile(held_out_ood_scores(policy, val_logits, val_features, labels), ood_quantile)
    )
    passes = ood <= policy.ood_threshold

    confidence = confidence_scores(val_logits, temperature).numpy()  # (N,)
    correct = val_logits.argmax(1).numpy() == labels  # (N,)
    threshold, reached = _lowest_threshold(confidence[passes], correct[passes], target_risk)
    if not reached:
        log.warning(
            "no confidence threshold reaches selective risk %.4f on validation; keeping only the most confident"
            " answers (threshold %.6f)",
            target_risk,
            threshold,
        )
    policy.confidence_threshold = threshold
    if photos is not None and len(photos[2]):
        if photo_density is not None and real_photos is not None:
            _fit_components(
                policy, photo_density, photos, real_photos, photo_component_quantile, photo_components_per_family
            )
        fit_photo_thresholds(policy, photos, temperature, photo_ood_quantile)

    kept = passes & (confidence >= threshold)
    policy.val_coverage = float(kept.mean())
    policy.val_risk = float((~correct[kept]).mean()) if kept.any() else 0.0
    policy.val_ood_flagged = float((~passes).mean())
    log.info(
        "abstention on %d validation images: confidence >= %.4f, %s score <= %.4g; coverage %.4f, risk %.4f,"
        " %.2f%% flagged as unlike the training images",
        len(labels),
        threshold,
        ood_score,
        policy.ood_threshold,
        policy.val_coverage,
        policy.val_risk,
        100 * policy.val_ood_flagged,
    )
    return policy


def held_out_ood_scores(
    policy: AbstentionPolicy, logits: torch.Tensor, features: torch.Tensor, labels: np.ndarray
) -> np.ndarray:
    """(N,) OOD scores of the validation images, each by a density that was not fitted on it: the images in OOD_FOLDS
    interleaved folds, each fold scored by the class means and precision fitted on the other folds (the policy's
    ridge and feature power). The energy score fits nothing, so its scores are the policy's own."""
    if policy.ood_score != "mahalanobis" or len(labels) < 2 * OOD_FOLDS:
        return policy.ood_scores(logits, features).numpy()
    transformed = power_transform(features, policy.feature_power)  # (N, D)
    # (N,): interleaved by position; the validation split keeps the training file's order, in which the classes are
    # mixed, so each fold holds about a fifth of every class.
    fold = np.arange(len(labels)) % OOD_FOLDS
    scores = np.empty(len(labels), dtype=np.float64)
    for k in range(OOD_FOLDS):
        means, precision = fit_gaussian(
            transformed[fold != k], labels[fold != k], num_classes=logits.shape[1], ridge=policy.ridge
        )
        scores[fold == k] = mahalanobis_scores(transformed[fold == k], means, precision).numpy()
    return scores


def fit_photo_components(
    features: torch.Tensor,
    right: np.ndarray,
    feature_power: float,
    per_family: int = DEFAULT_PHOTO_COMPONENTS_PER_FAMILY,
    precision: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """(K, D) float32 photo components from the features (N, D) raised to `feature_power` of real photos whose right
    classes are (N, C) bool, family by family in `FAMILIES` order; photos without a right class are left out. None
    when none has one.

    `per_family` 1: each family's mean. k > 1: k-means centres of the family's photos (at most one per photo), found
    in the space the shared `precision` (D, D) whitens, where the Mahalanobis distance is the Euclidean one. 0: every
    photo is its own component, so the distance is to the nearest real photo (a nearest-neighbour density, Sun et al.
    2022). One mean sits in the middle of a family's many looks; a face or a coin that the normaliser turns into a
    blob can come closer to that middle than a real garment does, and farther from every one of the photos."""
    masks = np.asarray(right, dtype=bool)
    if masks.ndim != 2 or len(masks) != len(features):
        raise ValueError(f"{len(features)} photo features but right-class masks of shape {masks.shape}")
    if per_family < 0:
        raise ValueError(f"components per family must be 0 (every photo) or more, not {per_family}")
    if per_family > 1 and precision is None:
        raise ValueError("k-means components need the shared precision")
    transformed = power_transform(features, feature_power)  # (N, D) float64
    components = []
    for members in FAMILIES.values():
        chosen = transformed[torch.from_numpy(np.flatnonzero(masks[:, list(members)].any(1)))]  # (n, D)
        if not len(chosen):
            continue
        if per_family == 1:
            components.append(chosen.mean(0, keepdim=True))
        elif per_family == 0 or per_family >= len(chosen):
            components.append(chosen)
        else:
            assert precision is not None
            components.append(_kmeans_centres(chosen, precision.double(), per_family))
    return torch.cat(components).float() if components else None


def _kmeans_centres(points: torch.Tensor, precision: torch.Tensor, k: int) -> torch.Tensor:
    """(k, D) k-means centres of points (n, D) under the Mahalanobis distance of `precision` (D, D): clustered in
    the whitened space (rows times L, where precision = L L^T), mapped back. Seeded: the same photos give the same
    centres."""
    from sklearn.cluster import KMeans  # only this choice of components needs it

    lower = torch.linalg.cholesky(precision)  # (D, D)
    whitened = (points @ lower).numpy()  # (n, D)
    centres = KMeans(n_clusters=k, n_init=4, random_state=0).fit(whitened).cluster_centers_  # (k, D)
    # c_w = c L  =>  c = c_w L^-1, solved as L^T c^T = c_w^T.
    return torch.linalg.solve_triangular(lower.T, torch.from_numpy(centres).T, upper=True).T


def _fit_components(
    policy: AbstentionPolicy,
    density: tuple[torch.Tensor, np.ndarray],
    photos: tuple[torch.Tensor, torch.Tensor, np.ndarray],
    real: np.ndarray,
    quantile: float,
    per_family: int,
) -> None:
    """Set `policy`'s photo components from `density` and their threshold from the real photos among `photos`."""
    marks = np.asarray(real, dtype=bool).reshape(-1)
    right = _right_classes(photos)  # (M, C)
    if len(marks) != len(right):
        raise ValueError(f"{len(marks)} real-photo flags for {len(right)} photos")
    policy.photo_means = fit_photo_components(
        density[0], density[1], policy.feature_power, per_family, policy.precision
    )
    garments = marks & right.any(1)
    if policy.photo_means is None or not garments.any():
        policy.photo_means = None
        return
    distances = policy.component_distances(photos[1][torch.from_numpy(np.flatnonzero(garments))]).numpy()
    policy.photo_component_threshold = float(np.quantile(distances, quantile))
    policy.photo_component_quantile = quantile
    log.info(
        "photo components: %d from %d real photos; distance <= %.4g (the %g quantile of %d others)",
        len(policy.photo_means),
        len(density[1]),
        policy.photo_component_threshold,
        quantile,
        int(garments.sum()),
    )


def fit_photo_thresholds(
    policy: AbstentionPolicy,
    photos: tuple[torch.Tensor, torch.Tensor, np.ndarray],
    temperature: float,
    photo_ood_quantile: float = DEFAULT_PHOTO_OOD_QUANTILE,
) -> AbstentionPolicy:
    """Fit `policy`'s photo thresholds (OOD, confidence, family) on `photos` (logits (M, C), features (M, D), labels
    (M,) or right-class masks (M, C)) at the policy's target risk, the scans' thresholds and the density as they are;
    records what they reach on those photos. Returns `policy`, changed in place. Refitting on a subset of the photos
    (`fmnist.evaluation.leave_out`) tells what a kind of photo the fit never saw gets."""
    target_risk = policy.target_risk
    scored = _ScoredPhotos.score(policy, photos, temperature)
    policy.photo_ood_quantile = photo_ood_quantile
    policy.photo_ood_threshold = math.nan
    if not math.isnan(photo_ood_quantile):  # on the scans' density: how far photos are from the clean images
        quantile = float(np.quantile(scored.scans, photo_ood_quantile))
        policy.photo_ood_threshold = min(policy.ood_threshold, quantile)
    policy.num_fit_photos = len(scored.right)
    ood = scored.ood(policy)  # (M,): the photo route, now that the photos' OOD threshold is set
    policy.photo_threshold = max(policy.confidence_threshold, _fit_photo_threshold(policy, scored, ood, target_risk))
    policy.family_threshold = _fit_family_threshold(policy, scored, ood, target_risk)

    decisions = policy.decisions(scored.probabilities, ood, scored.marks)
    photo_kept = np.array([d.class_confident for d in decisions], dtype=bool)  # (M,)
    photo_correct = scored.correct
    policy.val_photo_coverage = float(photo_kept.mean())
    policy.val_photo_risk = float((~photo_correct[photo_kept]).mean()) if photo_kept.any() else 0.0
    family_sure = np.array([d.family is not None for d in decisions], dtype=bool)  # (M,)
    family_correct = scored.family_right
    policy.val_photo_family_coverage = float(family_sure.mean())
    policy.val_photo_family_risk = float((~family_correct[family_sure]).mean()) if family_sure.any() else 0.0
    return policy


@dataclass(frozen=True)
class _ScoredPhotos:
    """The photos of one photo-threshold fit, scored once: every threshold and figure of the fit reads these (the
    derived ones are computed on first use and kept)."""

    probabilities: np.ndarray  # (M, C) float64, calibrated
    right: np.ndarray  # (M, C) bool: the classes counted right for each photo
    scans: np.ndarray  # (M,) float64 OOD scores on the clean scans' density (`AbstentionPolicy.ood_scores`)
    components: np.ndarray | None  # (M,) distances to the nearest photo component; None when the policy has none

    @classmethod
    def score(
        cls, policy: AbstentionPolicy, photos: tuple[torch.Tensor, torch.Tensor, np.ndarray], temperature: float
    ) -> _ScoredPhotos:
        logits, features, _ = photos
        right = _right_classes(photos)
        with_components = policy.photo_means is not None and policy.ood_score != "energy"
        return cls(
            probabilities=softmax(logits, temperature).numpy(),
            right=right,
            scans=policy.ood_scores(logits, features).numpy(),
            components=policy.component_distances(features).numpy() if with_components else None,
        )

    @cached_property
    def marks(self) -> np.ndarray:
        """(M,) bool: every one of them is a photo."""
        return np.ones(len(self.scans), dtype=bool)

    @cached_property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(1)  # (M,)

    @cached_property
    def correct(self) -> np.ndarray:
        """(M,) bool: whether the top class is a right one."""
        return self.right[np.arange(len(self.right)), self.probabilities.argmax(1)]

    @cached_property
    def family_right(self) -> np.ndarray:
        """(M,) bool: whether the top class is of a right family (a right class shares the top class's family)."""
        return (self.right & SAME_FAMILY[self.probabilities.argmax(1)]).any(1)

    def ood(self, policy: AbstentionPolicy) -> np.ndarray:
        """(M,) OOD scores by the photo route (`AbstentionPolicy.marked_scores`) at the policy's current thresholds."""
        if self.components is None:
            return self.scans
        return policy.marked_scores(self.scans, self.components, self.marks)


def _fit_photo_threshold(policy: AbstentionPolicy, scored: _ScoredPhotos, ood: np.ndarray, target_risk: float) -> float:
    """The lowest confidence threshold whose selective risk on the photos that pass the OOD check (`ood` (M,)) is at
    most `target_risk` with confidence 1 - PHOTO_RISK_DELTA (`guaranteed_risk_threshold`; above every confidence, no
    confident photo, when none is)."""
    passes = ood <= (policy.ood_threshold if math.isnan(policy.photo_ood_threshold) else policy.photo_ood_threshold)
    if not passes.any():
        return 0.0
    threshold, reached = guaranteed_risk_threshold(scored.confidence[passes], scored.correct[passes], target_risk)
    if not reached:
        log.warning(
            "no confidence threshold bounds the photos' selective risk by %.4f (%.0f%% confidence)",
            target_risk,
            100 * (1 - PHOTO_RISK_DELTA),
        )
    return threshold


def _fit_family_threshold(
    policy: AbstentionPolicy, scored: _ScoredPhotos, ood: np.ndarray, target_risk: float
) -> float:
    """The lowest threshold on the top class's family probability (`abstention.family_mass`) whose family-only
    answers are of the wrong family at most `target_risk` of the time with confidence 1 - PHOTO_RISK_DELTA
    (`guaranteed_risk_threshold`), among the photos that pass the OOD check (`ood` (M,)) but are not confident of
    their class. Bounding those answers on their own, not pooled with the class-confident ones (right far more often),
    keeps the family answer as trustworthy as a confident one wherever it is given. NaN (no family answers) when none
    is."""
    codes = policy.reason_codes(scored.confidence, ood, scored.marks)
    family_only = codes == 2  # like the training images, the class unsure
    if not family_only.any():
        return math.nan
    threshold, reached = guaranteed_risk_threshold(
        family_mass(scored.probabilities)[family_only], scored.family_right[family_only], target_risk
    )
    if not reached:
        log.warning("no family threshold bounds the photos' family risk by %.4f", target_risk)
        return math.nan
    return threshold


def _right_classes(photos: tuple[torch.Tensor, torch.Tensor, np.ndarray]) -> np.ndarray:
    """(M, C) bool: the classes counted right for each photo. Labels are (M,) class indices, or already (M, C) masks
    (a garment family: several classes right; a garment with no class: none, only "unsure" is right)."""
    logits, features, labels = photos
    y = np.asarray(labels)
    if not len(logits) == len(features) == len(y):
        raise ValueError(f"photo logits {len(logits)}, features {len(features)} and labels {len(y)} must match")
    if y.ndim == 2:
        if y.shape[1] != logits.shape[1]:
            raise ValueError(f"photo label masks have {y.shape[1]} classes, the logits {logits.shape[1]}")
        return y.astype(bool)
    right = np.zeros((len(y), logits.shape[1]), dtype=bool)
    right[np.arange(len(y)), y.astype(np.int64)] = True
    return right


def guaranteed_risk_threshold(
    confidence: np.ndarray, correct: np.ndarray, target_risk: float, delta: float | None = None
) -> tuple[float, bool]:
    """A confidence threshold with guaranteed selective risk, after Geifman & El-Yaniv (2017): among RISK_CANDIDATES
    thresholds spread evenly over the answers' coverage, the lowest whose selective risk has a one-sided
    Clopper-Pearson upper bound at most `target_risk`, the confidence level split among the candidates (Bonferroni),
    so the bound holds with probability at least 1 - `delta` for new answers drawn like these. A fixed set of
    candidates rather than their binary search: one unlucky step of the search can throw away every good threshold.
    (threshold, reached); when no candidate is bounded, a threshold above every confidence (no answer confident)
    and False."""
    from scipy.stats import beta

    delta = PHOTO_RISK_DELTA if delta is None else delta
    thresholds, kept, errors = _tie_groups(confidence, correct)
    if len(thresholds) == 0:
        raise ValueError("cannot fit a confidence threshold on zero examples")
    # Tie-group ends closest to coverage k / RISK_CANDIDATES of the answers, k = 1 .. RISK_CANDIDATES.
    wanted = np.arange(1, RISK_CANDIDATES + 1) * kept[-1] / RISK_CANDIDATES
    candidates = np.unique(np.clip(np.searchsorted(kept, wanted), 0, len(kept) - 1))
    level = 1.0 - delta / len(candidates)
    upper = np.where(
        errors[candidates] >= kept[candidates],
        1.0,
        beta.ppf(level, errors[candidates] + 1, np.maximum(kept[candidates] - errors[candidates], 1)),
    )
    bounded = candidates[upper <= target_risk]
    if len(bounded) == 0:
        return float(np.nextafter(thresholds[0], np.inf)), False
    return float(thresholds[bounded.max()]), True


def selective_summary(
    policy: AbstentionPolicy,
    logits: torch.Tensor,
    features: torch.Tensor,
    labels: np.ndarray,
    temperature: float,
) -> dict[str, Any]:
    """How the policy does on a labelled set: coverage, risk and accuracy among confident answers, shares declined.

    coverage: share marked confident; risk / accuracy: error rate / accuracy among those (None if there are
    none); flagged: share declined per reason; aurc: area under the risk-coverage curve of the confidence alone
    (the OOD check aside), a threshold-free summary of how well confidence ranks right above wrong.
    """
    y = np.asarray(labels).astype(np.int64)
    confidence, _, code = policy.scores(logits, features, temperature)
    code_np = code.numpy()
    correct = logits.argmax(1).numpy() == y  # (N,)
    n = len(y)
    kept = code_np == 0
    n_kept = int(kept.sum())
    risk = float((~correct[kept]).mean()) if n_kept else None
    return {
        "num_examples": n,
        "num_confident": n_kept,
        "coverage": n_kept / n if n else 0.0,
        "risk": risk,
        "accuracy": None if risk is None else 1.0 - risk,
        "accuracy_all": float(correct.mean()) if n else 0.0,
        "flagged": {reason: float((code_np == i + 1).mean()) if n else 0.0 for i, reason in enumerate(REASONS)},
        "aurc": aurc(confidence.numpy(), correct),
        "coverage_at_target_risk": coverage_at_risk(confidence.numpy(), correct, policy.target_risk) if n else 0.0,
        "target_risk": policy.target_risk,
        "confidence_threshold": policy.confidence_threshold,
        "ood_score": policy.ood_score,
        "ood_threshold": policy.ood_threshold,
    }
