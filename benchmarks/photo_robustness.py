"""Photo robustness and abstention of any run's model, on validation data only: the development counterpart of the
report's photo sections, and the place every photo-related default is chosen.

    python benchmarks/photo_robustness.py [--run FashionFlow/123] [--per-class 20] [--fit-per-class 10] [--one-view]
                                        [--real-per-folder N] [--json PATH]

Without --run, the flow's latest successful run (as the service picks it). The run's validation split (an artifact of
the run; never the test set) is cut in two seeded halves. On the first, the temperature and the abstention policy are
fitted exactly as the evaluate step fits them (clean images plus photos of both families,
`fmnist.evaluation.photo_mix`); on the second, held out from that fit, a class-balanced sample of garments is rendered
under every condition of both photo families (`fmnist.evaluation.photos`, the clean-studio family;
`fmnist.evaluation.wild_photos`, the in-the-wild family, with its development seed stream) and classified through the
service's own path (normalisation, network, temperature, abstention). Printed: per condition and severity, accuracy, x
clean, share answered confidently, accuracy of those answers and, for the in-the-wild family, how far the model's input
moved from the same garment's plain photo; then the development non-garment sets (synthetic, photographs, faces, digits:
other seeds and other photographs than the report's), with the share caught by the `empty` rule and by the model's
scores alone, and the share unsure under the run's own policy (the refit can differ from it); then the real phone
photographs' validation split (`fmnist.core.real_photos`: the fit split joins the policy's fit, the report split is the
evaluate step's) per folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmnist.core.config import EvaluationConfig
from fmnist.core.inference import features_and_logits
from fmnist.core.real_photos import load_real_photos, sample_per_folder
from fmnist.evaluation.answers import Answers, LeaveOut, service_answers
from fmnist.evaluation.leave_out import leave_one_condition_out
from fmnist.evaluation.photos import photo_robustness, sample_indices
from fmnist.evaluation.real_photo_suite import format_table, real_photo_table
from fmnist.evaluation.report import fit_on_validation, nongarment_detection
from fmnist.evaluation.wild_photos import DEV_STREAM, wild_robustness, worst_conditions
from fmnist.release.classifier import Classifier
from fmnist.trust.abstention import (
    DEFAULT_FEATURE_POWER,
    DEFAULT_OOD_SCORE,
    DEFAULT_PHOTO_COMPONENT_QUANTILE,
    DEFAULT_PHOTO_COMPONENTS_PER_FAMILY,
    DEFAULT_PHOTO_OOD_QUANTILE,
    OOD_SCORES,
    SAME_FAMILY,
    UNLIKE_TRAINING,
)
from fmnist.trust.abstention_fit import selective_summary
from serving.model_loading import ModelLoadError, load_model
from serving.settings import Settings

# The targets of the photo suites: accuracy of confident answers in every realistic condition, and accuracy relative
# to clean where the garment is fully visible.
CONFIDENT_TARGET, RELATIVE_TARGET = 0.97, 0.9
# Seed of the split of the validation images into a fitting half and a held-out half.
SPLIT_SEED = 20


def split_halves(count: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint, sorted halves of range(count), seeded: (fitting half, held-out half)."""
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[: count // 2]), np.sort(order[count // 2 :])


def refit(
    classifier: Classifier,
    images: np.ndarray,
    labels: np.ndarray,
    fit_per_class: int,
    seed: int,
    photo_ood_quantile: float = DEFAULT_PHOTO_OOD_QUANTILE,
    real_per_folder: int = 10_000,
    real_photo_density: bool = True,
    photo_component_quantile: float = DEFAULT_PHOTO_COMPONENT_QUANTILE,
    photo_components_per_family: int = DEFAULT_PHOTO_COMPONENTS_PER_FAMILY,
    **policy_options: Any,
) -> tuple[torch.Tensor, torch.Tensor, LeaveOut | None]:
    """Fit the classifier's temperature and abstention policy on (images, labels) exactly as the evaluate step does
    (`fmnist.evaluation.report.fit_on_validation`), with the default evaluation settings but these; returns the
    images' features and logits the fit read, and the leave-one-condition-out judge of that fit
    (`fmnist.evaluation.leave_out`; None without photos in the fit)."""
    evaluation = EvaluationConfig(
        fit_photo_per_class=fit_per_class,
        photo_ood_quantile=photo_ood_quantile,
        real_photos_per_folder=real_per_folder,
        real_photo_density=real_photo_density,
        photo_component_quantile=photo_component_quantile,
        photo_components_per_family=photo_components_per_family,
    )
    features, logits, _, photo_fit = fit_on_validation(
        classifier.record, classifier.network, images, labels, classifier.device, evaluation, seed, **policy_options
    )
    leave_out = None if photo_fit is None else leave_one_condition_out(classifier, photo_fit, photo_ood_quantile)
    return features, logits, leave_out


def keeping(classify: Callable[[Sequence[bytes]], Answers], kept: list[Answers]) -> Callable[[list[bytes]], Answers]:
    """`classify`, also appending each list of uploads' answers to `kept` (the suites call it once per row)."""

    def classify_and_keep(uploads: list[bytes]) -> Answers:
        answers = classify(uploads)
        kept.append(answers)
        return answers

    return classify_and_keep


def family_level(rows: Sequence[Answers], truth: np.ndarray) -> tuple[float, float, float]:
    """Pooled over rows of answers to the same sample (truth (n,) class indices): the share answered confidently
    (`Answers.sure`, the service's `confident`: of the class or of its family alone), and of those the share of the
    right class and of the right family."""
    sure = np.concatenate([a.sure for a in rows])  # (R * n,)
    labels = np.concatenate([a.labels for a in rows])
    truths = np.tile(truth, len(rows))
    family_right = SAME_FAMILY[labels, truths]
    if not sure.any():
        return 0.0, math.nan, math.nan
    return float(sure.mean()), float((labels == truths)[sure].mean()), float(family_right[sure].mean())


def _pct(x: float) -> str:
    return "   n/a" if x is None or math.isnan(x) else f"{x:6.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="FashionFlow run pathspec or id (default: the latest successful run)")
    parser.add_argument("--per-class", type=int, default=20, help="held-out garments per class per row")
    parser.add_argument("--fit-per-class", type=int, default=10, help="photos per class per condition for the fit")
    parser.add_argument("--size", type=int, default=224, help="side of the rendered photos in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--photo-ood-quantile",
        type=float,
        default=DEFAULT_PHOTO_OOD_QUANTILE,
        help="quantile of validation photos' OOD scores for the photos' OOD threshold (1.0: the scans' threshold)",
    )
    parser.add_argument("--nongarments", type=int, default=25, help="synthetic non-garments per kind")
    parser.add_argument(
        "--real-per-folder",
        type=int,
        default=10_000,
        help="real photographs per folder: of the fit split in the policy's fit, of the validation split judged",
    )
    parser.add_argument(
        "--one-view",
        action="store_true",
        help="the same weights without flip averaging (flip_tta off), to compare with the model as it was trained",
    )
    parser.add_argument(
        "--ood-score", choices=OOD_SCORES, default=DEFAULT_OOD_SCORE, help="the OOD score the policy is fitted with"
    )
    parser.add_argument(
        "--feature-power",
        type=float,
        default=DEFAULT_FEATURE_POWER,
        help="power the descriptor is raised to before the Mahalanobis density (1.0: Lee et al. as published)",
    )
    parser.add_argument(
        "--no-real-photo-density",
        dest="real_photo_density",
        action="store_false",
        help="score photos against the clean scans' class means alone, without the real photos' family components",
    )
    parser.add_argument(
        "--photo-component-quantile",
        type=float,
        default=DEFAULT_PHOTO_COMPONENT_QUANTILE,
        help="quantile of real fit photos' distances to their family components for the components' threshold",
    )
    parser.add_argument(
        "--photo-components-per-family",
        type=int,
        default=DEFAULT_PHOTO_COMPONENTS_PER_FAMILY,
        help="real-photo components per garment family: 1 its mean, k k-means centres, 0 every photo",
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    # The run and its model record found and built exactly as the service does (a run id, or the latest success).
    try:
        served = load_model(Settings(run=args.run, device="cpu", runtime="torch"))
    except ModelLoadError as err:
        raise SystemExit(f"{err} (train one with: python flows/fashion_flow.py run)") from None
    from metaflow import Run, namespace

    namespace(None)
    data = Run(served.run_pathspec).data
    if data is None:
        raise SystemExit(f"{served.run_pathspec} has no artifacts to read its validation split from")
    images, labels = np.asarray(data.val_images), np.asarray(data.val_labels)
    fitting, held_out = split_halves(len(labels))
    classifier = served.classifier
    if args.one_view:
        record = served.classifier.record
        one_view = replace(record, model_args=replace(record.model_args, flip_tta=False))
        classifier = Classifier(one_view, classifier.device, classifier.runtime)
    started = time.perf_counter()
    # The development non-garments under the run's own policy too (fitted on the whole validation split by its evaluate
    # step), before the refit below replaces it: the two can differ, and a user meets the run's own.
    own_nongarments = nongarment_detection(served.classifier, args.nongarments, args.seed, part="dev")
    fit_features, fit_logits, leave_out = refit(
        classifier,
        images[fitting],
        labels[fitting],
        args.fit_per_class,
        args.seed,
        args.photo_ood_quantile,
        args.real_per_folder,
        args.real_photo_density,
        args.photo_component_quantile,
        args.photo_components_per_family,
        ood_score=args.ood_score,
        feature_power=args.feature_power,
    )
    policy, record = classifier.policy, classifier.record
    assert policy is not None
    features, logits = features_and_logits(
        classifier.network, images[held_out], classifier.device, mean=record.mean, std=record.std
    )
    clean = selective_summary(policy, logits, features, labels[held_out], record.temperature)
    # The OOD threshold is a quantile of held-out scores (`held_out_ood_scores`); the same quantile of the fitting
    # images' own, in-sample scores is what it replaced: the share of held-out scans each flags.
    in_sample = float(np.quantile(policy.ood_scores(fit_logits, fit_features).numpy(), policy.ood_quantile))
    clean["ood_flagged_in_sample_quantile"] = float((policy.ood_scores(logits, features).numpy() > in_sample).mean())
    # Every row's answers, in row order, to judge the service's `confident` (of the family at least) on them too.
    studio_answers: list[Answers] = []
    wild_answers: list[Answers] = []
    studio = photo_robustness(
        keeping(service_answers(classifier), studio_answers),
        images[held_out],
        labels[held_out],
        seed=args.seed,
        per_class=args.per_class,
        size=args.size,
        leave_out=leave_out,
    )
    wild = wild_robustness(
        keeping(service_answers(classifier), wild_answers),
        images[held_out],
        labels[held_out],
        seed=args.seed,
        stream=DEV_STREAM,
        per_class=args.per_class,
        size=args.size,
        leave_out=leave_out,
    )
    nongarments = nongarment_detection(classifier, args.nongarments, args.seed, part="dev")
    real = None
    if args.real_per_folder > 0:
        real = real_photo_table(
            service_answers(classifier), sample_per_folder(load_real_photos("validation"), args.real_per_folder)
        )
        real.pop("inputs")
        real = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in real.items()}
    seconds = time.perf_counter() - started

    print(
        f"model of {served.run_pathspec}; validation only: policy refitted on {len(fitting)} images"
        f" (+ photos, {args.fit_per_class} per class per condition), judged on the other {len(held_out)}"
        f" ({seconds:.0f} s)"
    )
    print(
        f"policy ({policy.ood_score}, feature power {policy.feature_power:g}): scans confident at >="
        f" {policy.confidence_threshold:.4f}, photos at >= {policy.photo_threshold:.4f}"
        f" (OOD score <= {policy.ood_threshold:.4g}, photos <= {policy.photo_ood_threshold:.4g},"
        f" or <= {policy.photo_component_threshold:.4g} from the nearest of"
        f" {0 if policy.photo_means is None else len(policy.photo_means)} real-photo family components);"
        f" photos confident of the family alone at a family probability >= {policy.family_threshold:.4f};"
        f" held-out clean images: {clean['coverage']:.1%} confident, {clean['accuracy'] or 0:.2%} of those right"
    )
    print(
        f"held-out clean images unlike the training images: {clean['flagged'][UNLIKE_TRAINING]:.2%} (asked"
        f" {1 - policy.ood_quantile:.2%}; at the same quantile of the fitting images' own scores:"
        f" {clean['ood_flagged_in_sample_quantile']:.2%})"
    )
    # The suites' "confident" is of the class (`class_confident`), judged by the exact class.
    header = f"{'family':<7} {'condition':<20} {'severity':>8}  {'accuracy':>8} {'x clean':>7} {'cls conf':>9}"
    print(header + f" {'right':>9} {'input change':>12}  fit without it: class-confident, right")
    for r in studio:
        print(
            f"{'studio':<7} {r.condition:<20} {r.severity:>8g}{'*' if r.realistic else ' '} {r.accuracy:>8.1%}"
            f" {r.relative:>7.2f} {_pct(r.confident_share):>9} {_pct(r.confident_accuracy):>9} {'':>12}"
            f"  {_pct(r.unseen_confident_share)} {_pct(r.unseen_confident_accuracy)}"
        )
    for w in wild:
        change = "" if math.isnan(w.input_change) else f"{w.input_change:.1f}"
        print(
            f"{'wild':<7} {w.condition:<20} {w.severity:>8g}{'*' if w.realistic else ' '} {w.accuracy:>8.1%}"
            f" {w.relative:>7.2f}{' ' if w.fully_visible else 'c'}{_pct(w.confident_share):>8}"
            f" {_pct(w.confident_accuracy):>9} {change:>12}"
            f"  {_pct(w.unseen_confident_share)} {_pct(w.unseen_confident_accuracy)}"
        )
    worst = worst_conditions(wild)
    realistic = [w for w in wild if w.realistic and w.condition not in ("clean", "plain")]
    short = [w.condition for w in realistic if w.confident_accuracy < CONFIDENT_TARGET]  # NaN: none confident
    low = [w.condition for w in realistic if w.fully_visible and w.relative < RELATIVE_TARGET]
    print("(* realistic severity; c: garment cut off or covered, not held to the x-clean target)")
    print(
        f"worst realistic (in the wild): accuracy {worst['accuracy'].condition} {worst['accuracy'].accuracy:.1%};"
        f" confident share {worst['confident_share'].condition} {worst['confident_share'].confident_share:.1%};"
        f" right when confident {worst['confident_accuracy'].condition}"
        f" {worst['confident_accuracy'].confident_accuracy:.1%}"
    )
    pooled = [(r.confident_share, r.confident_accuracy) for r in studio if r.realistic]
    pooled += [(w.confident_share, w.confident_accuracy) for w in wild if w.realistic]
    shares = np.array([c for c, _ in pooled])
    right = np.array([a if not math.isnan(a) else 0.0 for _, a in pooled])
    print(
        f"photos at realistic severities, both families: {shares.mean():.1%} confident of the class,"
        f" {(shares * right).sum() / max(shares.sum(), 1e-12):.2%} of those right"
    )
    truth = labels[held_out][sample_indices(labels[held_out], args.per_class, args.seed)]
    realistic_rows = [r.realistic for r in studio] + [w.realistic for w in wild]
    kept = [a for r, a in zip(realistic_rows, [*studio_answers, *wild_answers], strict=True) if r]
    sure, class_right, family_right = family_level(kept, truth)
    print(
        f"photos at realistic severities, both families: {sure:.1%} answered `confident` (of the family at least),"
        f" {class_right:.2%} of those the right class, {family_right:.2%} the right family"
    )
    print(f"right when confident below {CONFIDENT_TARGET:.0%}: {', '.join(short) or 'none'}")
    unseen = [w.condition for w in realistic if w.unseen_confident_accuracy < CONFIDENT_TARGET]
    print(f"... with the photo thresholds fitted without the condition: {', '.join(unseen) or 'none'}")
    print(f"below {RELATIVE_TARGET} x clean (fully visible): {', '.join(low) or 'none'}")
    for name, found in nongarments["sets"].items():
        print(
            f"non-garments {name}: {found['count']} images, unsure {found['unsure']:.1%}, empty rule"
            f" {found['empty_rule']:.1%}, unsure by the model's scores alone {found['model_scores']:.1%}"
            f" (with the run's own policy: unsure {own_nongarments['sets'][name]['unsure']:.1%})"
        )
    if real is not None:
        print(f"real photographs, validation split ({real['count']}):")
        for line in format_table(real):
            print(line)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "run": served.run_pathspec,
                    "policy": policy.metadata(),
                    "held_out_clean": clean,
                    "studio": [asdict(r) for r in studio],
                    "wild": [asdict(w) for w in wild],
                    "nongarments": nongarments,
                    "nongarments_own_policy": own_nongarments,
                    "real_photos": real,
                    "seconds": seconds,
                },
                indent=2,
                default=float,
            )
        )


if __name__ == "__main__":
    main()
