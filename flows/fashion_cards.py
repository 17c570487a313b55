"""Metaflow cards for FashionFlow's steps: what a reader looks at to judge the run.

Every image is embedded as PNG bytes, so a card is one self-contained HTML file that renders offline. The numbers
and plots come from fmnist (the report, fmnist.evaluation.plots); this module only lays them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from metaflow import current
from metaflow.cards import Image, Markdown, ProgressBar, Table
from shared_cards import provenance_table

from fmnist.core.data import CLASS_NAMES
from fmnist.evaluation import plots
from fmnist.evaluation.report_schema import Abstention, EvaluationReport, PhotoSuite, RealPhotoSuite, WildSuite

Components = list[Any]


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _unseen(share: float | None, accuracy: float | None) -> str:
    """A row's figures under the photo thresholds fitted without its condition: 'share, accuracy' or '-'."""
    if share is None or np.isnan(share):
        return "-"
    return f"{_pct(share)}, " + ("n/a" if accuracy is None or np.isnan(accuracy) else _pct(accuracy))


UNSEEN_NOTE = (
    " *Confident of the class* is the service's `class_confident`, judged by the exact class (a photo can also be"
    " `confident` of its garment family alone: see Real photographs)."
    " *Fit without it*: the share confident of the class and how often rightly when the photo thresholds are fitted"
    " without this condition's photos (leave-one-condition-out, `fmnist.evaluation.leave_out`): what a kind of photo"
    " the fit never saw gets; the columns before it are judged by the thresholds fitted on every condition."
)


# ---------------------------------------------------------------------------------------------------------- load
def dataset_card(summary: dict[str, Any], train_images: np.ndarray, train_labels: np.ndarray) -> Components:
    """Dataset summary: sizes, source and fingerprint, class counts (table and chart), sample images per class."""
    counts = {"train": summary["train_class_counts"], "validation": summary["val_class_counts"]}
    rows = [[name, t, v] for name, t, v in zip(CLASS_NAMES, counts["train"], counts["validation"], strict=True)]
    rows.append(["total", summary["train_size"], summary["val_size"]])
    return [
        Markdown(
            "# Dataset: Fashion-MNIST\n"
            f"- **Source**: `{summary['source']}`\n"
            f"- **Fingerprint** (SHA-256 of the four verified files): `{summary['fingerprint']}`\n"
            f"- **Sizes**: {summary['train_size']} train, {summary['val_size']} validation (stratified, seeded), "
            f"{summary['test_size']} test (held out until evaluate)"
        ),
        Markdown("## Class counts"),
        Table(rows, headers=["class", "train", "validation"]),
        Image(plots.class_counts_chart(counts), label="images per class"),
        Markdown("## Sample grid per class (training split)"),
        Image(plots.class_sample_grid(train_images, train_labels), label="random training images, one row per class"),
    ]


# --------------------------------------------------------------------------------------------------------- train
class LiveTrainingCard:
    """The train step's live card: progress bar, latest epoch line and loss/accuracy curves, refreshed per epoch.

    Use its `on_epoch` as the training callback; Metaflow rate-limits the refreshes (the card's refresh_interval).
    """

    def __init__(self, index: int, hparams: dict[str, Any]) -> None:
        self.history: list[dict[str, float]] = []
        self.epochs = int(hparams.get("epochs", 1))
        self.status = Markdown("Waiting for the first epoch...")
        self.progress = ProgressBar(max=self.epochs, label="epochs", value=0, unit="epochs")
        self.curves: Image | None = None
        current.card.extend(
            [
                Markdown(f"# Trial {index}"),
                Table([[k, str(v)] for k, v in sorted(hparams.items())], headers=["hyper-parameter", "value"]),
                Markdown("## Progress"),
                self.progress,
                self.status,
            ]
        )
        current.card.refresh()

    def resumed(self, epoch: int) -> None:
        """Say that this attempt continues from a checkpoint an earlier attempt saved."""
        current.card.append(Markdown(f"**Resumed at epoch {epoch}** from the checkpoint of an earlier attempt."))
        self.progress.update(epoch - 1)
        current.card.refresh()

    def on_epoch(self, stats: dict[str, float]) -> None:
        """Record one epoch's stats and refresh the card."""
        self.history.append(stats)
        epoch = int(stats["epoch"])
        self.progress.update(epoch, metadata=f"{stats['images_per_second']:.0f} img/s")
        self.status.update(
            f"**Epoch {epoch}/{self.epochs}**: train loss {stats['train_loss']:.4f}, "
            f"train accuracy {_pct(stats['train_accuracy'])}, validation accuracy {_pct(stats['val_accuracy'])}, "
            f"{stats['elapsed_seconds']:.1f} s elapsed"
        )
        png = plots.training_curves(self.history)
        if self.curves is None:
            self.curves = Image(png, label="loss and accuracy per epoch", disable_updates=False)
            current.card.append(self.curves)
        else:
            self.curves.update(png)
        current.card.refresh()

    def finish(self, summary: dict[str, Any]) -> None:
        """Add the trial's final numbers; the step's end renders the final card."""
        current.card.append(
            Markdown(
                f"## Done\nValidation accuracy **{_pct(summary['val_accuracy'])}** (loss {summary['val_loss']:.4f}); "
                f"{summary['train_seconds']:.1f} s of training on {summary['device']}, "
                f"{summary['images_per_second']:.0f} images/s, {summary['parameters']} parameters."
                + (f" Resumed at epoch {summary['resumed_at_epoch']}." if summary.get("resumed_at_epoch") else "")
            )
        )


# ---------------------------------------------------------------------------------------------------------- join
def leaderboard_card(rows: Sequence[dict[str, Any]]) -> Components:
    """Every trial ranked on validation accuracy, the winner marked, and accuracy against the swept values."""
    swept = plots.swept_names(rows)
    header = ["rank", "trial", *swept, "val accuracy", "val loss", "train s", "device"]
    body = [
        [
            f"{r['rank']} ★" if r["rank"] == 1 else r["rank"],
            r["index"],
            *(r["hparams"][k] for k in swept),
            f"{r['val_accuracy']:.4f}",
            f"{r['val_loss']:.4f}",
            f"{r['train_seconds']:.1f}",
            r["device"],
        ]
        for r in rows
    ]
    best = rows[0]
    winner = ", ".join(f"{k}={best['hparams'][k]}" for k in swept) or "single trial"
    return [
        Markdown(
            f"# Leaderboard\nWinner ★: trial {best['index']} at {_pct(best['val_accuracy'])} validation accuracy "
            f"({winner}). "
            "Chosen on validation accuracy; the test set is not read before evaluate."
        ),
        Table(body, headers=header),
        Markdown("## Validation accuracy against the swept hyper-parameters"),
        Image(plots.sweep_chart(rows), label="each trial; the red star is the winner"),
    ]


# ------------------------------------------------------------------------------------------------------ evaluate
def report_card(report: EvaluationReport) -> Components:
    """The evaluation report: accuracy with its interval, per-class scores, confusions, calibration, robustness,
    product photos, unsure answers, the misclassified gallery and the model's provenance."""
    test, cal = report.test, report.calibration
    lo, hi = test.accuracy_ci95
    components: Components = [
        Markdown(
            "# Evaluation report\n"
            f"## Test accuracy: {_pct(test.accuracy)}\n"
            f"95% confidence interval (Wilson) {_pct(lo)} to {_pct(hi)} on {test.num_examples} test images; "
            f"macro F1 {test.macro_f1:.4f}. Calibrated ECE {_pct(cal.test_after.ece)} "
            f"(temperature {cal.temperature:.3f})."
        ),
        Markdown("## Per-class precision, recall and F1"),
        Table(
            [[c.name, f"{c.precision:.4f}", f"{c.recall:.4f}", f"{c.f1:.4f}", str(c.support)] for c in test.per_class],
            headers=["class", "precision", "recall", "F1", "support"],
        ),
        Markdown("## Confusion matrix"),
        Image(plots.confusion_heatmap(test.confusion_matrix), label="rows: true class; columns: prediction"),
        Markdown("### Most frequent confusions"),
        Table(
            [[c.true, c.predicted, str(c.count), _pct(c.share_of_class)] for c in test.top_confusions],
            headers=["true", "predicted as", "count", "share of the true class"],
        ),
        Markdown(
            "## Calibration\n"
            f"Temperature **{cal.temperature:.4f}** fitted on the {cal.fitted_on} by minimising NLL; it travels "
            "in the model record, so served probabilities are the calibrated ones. ECE uses 15 equal-width bins."
        ),
        Table(
            [
                [
                    part,
                    _pct(before.ece),
                    _pct(after.ece),
                    f"{before.nll:.4f}",
                    f"{after.nll:.4f}",
                ]
                for part, before, after in (
                    ("validation", cal.validation_before, cal.validation_after),
                    ("test", cal.test_before, cal.test_after),
                )
            ],
            headers=["data", "ECE before", "ECE after", "NLL before", "NLL after"],
        ),
        Image(plots.reliability_diagram(cal.test_before, cal.test_after), label="reliability diagram (test)"),
        Markdown("## Robustness"),
        Table(
            [[r.name, r.description, _pct(r.accuracy), f"{100 * r.change:+.2f} pts"] for r in report.robustness],
            headers=["perturbation", "what", "accuracy", "change vs clean"],
        ),
        Image(plots.robustness_chart(report.robustness), label="test accuracy under each perturbation"),
        *photo_components(report.photos),
        *(wild_photo_components(report.wild_photos) if report.wild_photos is not None else []),
        *(real_photo_components(report.real_photos) if report.real_photos is not None else []),
        *abstention_components(report.abstention),
        Markdown(
            "## Misclassified test images\n"
            f"The {len(report.misclassified)} most confident mistakes: true label, prediction, "
            "calibrated confidence."
        ),
    ]
    if report.misclassified:
        components.append(Image(plots.misclassified_gallery(report.misclassified), label="misclassified gallery"))
    components += [Markdown("## Provenance"), provenance_table(report.provenance)]
    return components


def real_photo_components(real: RealPhotoSuite) -> Components:
    """Real phone photographs (the report split): per folder, accuracy, the share confident of the class and their
    accuracy, and the same for the confident answers (of the class, or of the family alone); garments without a class
    and how often they are marked unsure; the worst answers."""
    components: Components = [
        Markdown(
            "## Real photographs\n"
            f"{real.count} phone photos of clothes nobody on this project made (a public CC0 data set's report split,"
            " `data/real_photos/`), through the service's normalisation. Right means the exact class where"
            " Fashion-MNIST has it, the garment family otherwise (longsleeves: the tops; shoes: footwear); hats,"
            " shorts and skirts have no class, and the honest answer is unsure. Garments with a class: family"
            f" accuracy {_pct(real.family_accuracy or 0)}, exact class {_pct(real.exact_accuracy or 0)};"
            f" answered confidently (the service's `confident`: of the class, or of the garment family alone)"
            f" {_pct(real.family_sure or 0)}, {_pct(real.family_sure_accuracy or 0)} of those the right family;"
            f" confident of the class too (`class_confident`) {_pct(real.confident or 0)},"
            f" {_pct(real.confident_family_accuracy or 0)} of those right."
            f" Without a class: {_pct(real.no_class_unsure or 0)} marked unsure (sure of neither class nor family)."
        ),
        Table(
            [
                [
                    r.folder,
                    str(r.count),
                    r.judged_by,
                    "-" if r.accuracy is None else _pct(r.accuracy),
                    "-" if r.confident is None else _pct(r.confident),
                    "-" if r.confident_family_accuracy is None else _pct(r.confident_family_accuracy),
                    "-" if r.family_sure is None else _pct(r.family_sure),
                    "-" if r.family_sure_accuracy is None else _pct(r.family_sure_accuracy),
                    "-" if r.unsure is None else _pct(r.unsure),
                    "-" if r.unlike is None else _pct(r.unlike),
                ]
                for r in real.rows
            ],
            headers=[
                "folder",
                "photos",
                "judged by",
                "accuracy",
                "confident of the class",
                "right when class-confident",
                "confident",
                "right family when confident",
                "unsure",
                "unlike the training images",
            ],
        ),
    ]
    if real.worst:
        components.append(Image(plots.real_photo_gallery(real.worst), label="wrong answers: what the model saw"))
    return components


def photo_components(photos: PhotoSuite) -> Components:
    """The photo suite: test garments rendered as product photos, classified through the service's normalisation."""
    worst = photos.worst
    return [
        Markdown(
            "## Product photos: the clean-studio family\n"
            f"{photos.sample_size} test garments (a fixed, seeded, class-balanced sample) rendered as "
            f"{photos.photo_size}x{photos.photo_size} product photos with the image model the normaliser inverts "
            "(smooth backdrops, light as a gain): it checks the normaliser does its job, and cannot find where it "
            "fails; the in-the-wild family below can. Each photo is sent through the service's own "
            f"upload normalisation. Clean (the plain 28x28 PNGs): {_pct(photos.clean_accuracy)}. Worst condition at "
            f"its realistic severity: **{worst.condition}** at {_pct(worst.accuracy)} ({worst.relative:.2f} x clean)."
            + UNSEEN_NOTE
        ),
        Table(
            [
                [
                    r.condition,
                    f"{r.severity:g}" + (" ★" if r.realistic else ""),
                    _pct(r.accuracy),
                    f"{r.relative:.2f}",
                    _pct(r.confident_share) if r.confident_share is not None else "n/a",
                    _pct(r.confident_accuracy) if r.confident_accuracy is not None else "n/a",
                    _unseen(r.unseen_confident_share, r.unseen_confident_accuracy),
                    r.description,
                ]
                for r in photos.rows
            ],
            headers=[
                "condition",
                "severity (★ realistic)",
                "accuracy",
                "x clean",
                "confident of the class",
                "right when class-confident",
                "fit without it: class-confident, right",
                "what",
            ],
        ),
        Image(plots.photo_chart(photos.rows), label="accuracy per photo condition and severity"),
    ]


def wild_photo_components(wild: WildSuite) -> Components:
    """The in-the-wild suite: per condition, accuracy, how much was answered confidently and how often rightly."""
    worst = wild.worst
    return [
        Markdown(
            "## Photos in the wild\n"
            f"{wild.sample_size} test garments per row photographed as real photos are, with an image model the "
            "normaliser knows nothing of (`fmnist.evaluation.wild_photos`: cast shadows, shadow edges, textured and "
            "coloured backdrops, hangers, tags, props, a second garment, perspective, phone noise, cut-off garments; "
            "albumentations for the camera). Worst at realistic severity: accuracy "
            f"**{worst['accuracy'].condition}** {_pct(worst['accuracy'].accuracy)}; share confident of the class "
            f"**{worst['confident_share'].condition}** {_pct(worst['confident_share'].confident_share)}; right when "
            f"class-confident **{worst['confident_accuracy'].condition}** "
            f"{_pct(worst['confident_accuracy'].confident_accuracy)}. Input change: mean grey-level difference of "
            "the model's input from the same garment's plain photo." + UNSEEN_NOTE
        ),
        Table(
            [
                [
                    r.condition,
                    f"{r.severity:g}" + (" ★" if r.realistic else ""),
                    _pct(r.accuracy),
                    f"{r.relative:.2f}" + ("" if r.fully_visible else " (cut/covered)"),
                    _pct(r.confident_share),
                    _pct(r.confident_accuracy),
                    _unseen(r.unseen_confident_share, r.unseen_confident_accuracy),
                    "" if np.isnan(r.input_change) else f"{r.input_change:.1f}",
                ]
                for r in wild.rows
            ],
            headers=[
                "condition",
                "severity (★ realistic)",
                "accuracy",
                "x clean",
                "confident of the class",
                "right when class-confident",
                "fit without it: class-confident, right",
                "input change",
            ],
        ),
    ]


def abstention_components(abstention: Abstention) -> Components:
    """When the served model says "unsure": thresholds, test coverage and risk, non-garments caught."""
    policy, test, nongarments = abstention.policy, abstention.test, abstention.nongarments
    accuracy = _pct(test.accuracy) if test.accuracy is not None else "n/a"
    return [
        Markdown(
            "## Unsure answers\n"
            f"Fitted on the validation split: answers are marked confident when the calibrated probability is at "
            f"least **{policy['confidence_threshold']:.4f}** (target: at most {_pct(policy['target_risk'])} errors "
            f"among confident answers) and the {policy['ood_score']} score is at most {policy['ood_threshold']:.4g} "
            f"(the {_pct(policy['ood_quantile'])} quantile of validation images' scores, each by a density fitted "
            f"without it). On the test set: **{accuracy}** "
            f"correct among confident answers at a coverage of **{_pct(test.coverage)}**; "
            f"{_pct(test.flagged['unlike_training_images'])} flagged as unlike the training images. "
            f"Synthetic non-garments marked unsure: **{_pct(nongarments.overall)}** of {nongarments.count}."
        ),
        Table(
            [[kind, _pct(rate)] for kind, rate in nongarments.per_kind.items()],
            headers=["non-garment", "marked unsure"],
        ),
        Markdown(
            "### Non-garments, counted honestly\n"
            "Marked unsure by the service; declared empty by the normaliser before any score is computed; marked "
            "unsure by the model's scores alone (OOD and confidence thresholds on the normalised input). Real "
            "photographs and faces ship with scikit-image, scikit-learn and matplotlib; digits are scikit-learn's "
            "handwritten digits in Fashion-MNIST's form, the near-distribution case."
        ),
        Table(
            [
                [name, str(found.count), _pct(found.unsure), _pct(found.empty_rule), _pct(found.model_scores)]
                for name, found in nongarments.sets.items()
            ],
            headers=["set", "images", "unsure", "empty rule", "unsure by scores alone"],
        ),
        Image(
            plots.risk_coverage_chart(abstention.risk_coverage, policy["target_risk"], test),
            label="risk-coverage curve of the calibrated confidence (test)",
        ),
    ]
