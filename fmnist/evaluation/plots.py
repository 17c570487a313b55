"""Plots for the cards and the tracker, rendered off-screen to PNG bytes (no display, no pyplot state)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure  # a bare Figure renders with the Agg canvas: no GUI backend involved

from fmnist.core.data import CLASS_NAMES
from fmnist.evaluation.report_schema import (
    CalibrationSummary,
    Mistake,
    Perturbed,
    PhotoRow,
    RealPhotoWorst,
    RiskCoveragePoint,
    Selective,
)


def to_png(fig: Figure, dpi: int = 100) -> bytes:
    """Render a figure to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def training_curves(history: Sequence[dict[str, float]], title: str = "") -> bytes:
    """Loss (train, validation) and accuracy (train, validation) per epoch, side by side."""
    fig = Figure(figsize=(9, 3.2))
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    loss_ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    loss_ax.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    acc_ax.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train (augmented)")
    acc_ax.plot(epochs, [h["val_accuracy"] for h in history], "s-", label="validation")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        if epochs:
            ax.set_xticks(epochs if len(epochs) <= 12 else epochs[:: max(1, len(epochs) // 10)])
    if title:
        fig.suptitle(title)
    return to_png(fig)


def swept_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Hyper-parameters whose value differs between leaderboard rows."""
    return sorted({k for r in rows for k, v in r["hparams"].items() if any(o["hparams"][k] != v for o in rows)})


def sweep_chart(rows: Sequence[dict[str, Any]]) -> bytes:
    """Validation accuracy against each swept hyper-parameter; the winner (rank 1) is a red star."""
    names = swept_names(rows) or ["index"]
    fig = Figure(figsize=(3.6 * len(names), 3.2))
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    for ax, name in zip(axes, names, strict=True):
        values = [r["index"] if name == "index" else r["hparams"][name] for r in rows]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        xs = values if numeric else [sorted(set(map(str, values))).index(str(v)) for v in values]
        acc = [r["val_accuracy"] for r in rows]
        ax.scatter(xs, acc, s=40, color="tab:blue", label="trial")
        best = [i for i, r in enumerate(rows) if r["rank"] == 1]
        ax.scatter([xs[i] for i in best], [acc[i] for i in best], s=220, marker="*", color="tab:red", label="winner")
        if numeric and min(values) > 0 and max(values) / min(values) >= 10:
            ax.set_xscale("log")
        if not numeric:
            labels = sorted(set(map(str, values)))
            ax.set_xticks(range(len(labels)), labels)
        ax.set(xlabel=name, ylabel="validation accuracy")
        ax.margins(x=0.15, y=0.25)  # keep the markers off the frame and clear of the legend
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best")
    fig.suptitle("validation accuracy across the sweep")
    return to_png(fig)


def reliability_diagram(before: CalibrationSummary, after: CalibrationSummary) -> bytes:
    """Accuracy against confidence per bin, before and after temperature scaling; the diagonal is perfect."""
    fig = Figure(figsize=(9, 4))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, summary, label in ((axes[0], before, "before scaling"), (axes[1], after, "after scaling")):
        bins = summary.bins
        width = bins[0].hi - bins[0].lo
        filled = [b for b in bins if b.count]
        ax.bar(
            [(b.lo + b.hi) / 2 for b in filled],
            [b.accuracy for b in filled],
            width=width * 0.95,
            color="tab:blue",
            alpha=0.8,
            label="accuracy",
        )
        ax.bar(
            [(b.lo + b.hi) / 2 for b in filled],
            [b.confidence - b.accuracy for b in filled],
            bottom=[b.accuracy for b in filled],
            width=width * 0.95,
            color="tab:red",
            alpha=0.3,
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="confidence",
            title=f"{label} (T={summary.temperature:.3f})\nECE {summary.ece:.2%}, NLL {summary.nll:.4f}",
        )
        ax.set_xticks(np.linspace(0, 1, 6))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left")
    return to_png(fig)


def confusion_heatmap(cm: Sequence[Sequence[int]], class_names: Sequence[str] = CLASS_NAMES) -> bytes:
    """The confusion matrix as a heat map, rows normalised to recall, counts written in the cells."""
    counts = np.asarray(cm)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(7.5, 6.5))
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    n = len(class_names)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    for t in range(n):
        for p in range(n):
            if counts[t, p]:
                ax.text(
                    p,
                    t,
                    str(counts[t, p]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if rates[t, p] > 0.5 else "black",
                )
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (colour: share of the true class)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return to_png(fig)


def image_gallery(items: Sequence[dict[str, Any]], columns: int = 8) -> bytes:
    """A grid of images, each titled; items carry 'image' (28x28 values) and 'title'."""
    rows = max(1, -(-len(items) // columns))
    fig = Figure(figsize=(1.5 * columns, 1.75 * rows))
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, item in zip(axes, items, strict=False):
        ax.imshow(np.asarray(item["image"], dtype=np.uint8), cmap="gray", vmin=0, vmax=255)
        ax.set_title(item["title"], fontsize=7)
    return to_png(fig)


def misclassified_gallery(mistakes: Sequence[Mistake], columns: int = 8) -> bytes:
    """Misclassified test images titled with true label, prediction and (calibrated) confidence."""
    items = [{"image": m.image, "title": f"true: {m.true}\npred: {m.predicted}\n{m.confidence:.0%}"} for m in mistakes]
    return image_gallery(items, columns)


def real_photo_gallery(worst: Sequence[RealPhotoWorst], columns: int = 8) -> bytes:
    """What the model saw of the real photographs it got wrong: folder, prediction, and whether it was confident."""
    items = [
        {"image": w.image, "title": f"{w.folder}\npred: {w.predicted}\n{'CONFIDENT' if w.confident else 'unsure'}"}
        for w in worst
    ]
    return image_gallery(items, columns)


def class_sample_grid(images: np.ndarray, labels: np.ndarray, per_class: int = 8, seed: int = 0) -> bytes:
    """`per_class` random images of every class, one row per class, the class name on the left."""
    rng = np.random.default_rng(seed)
    n = len(CLASS_NAMES)
    fig = Figure(figsize=(per_class * 0.9 + 1.2, n * 0.9))
    axes = fig.subplots(n, per_class)
    for c, name in enumerate(CLASS_NAMES):
        idx = np.flatnonzero(labels == c)
        pick = rng.choice(idx, size=min(per_class, len(idx)), replace=False)  # (<= per_class,)
        for j in range(per_class):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(pick):
                ax.imshow(images[pick[j]], cmap="gray", vmin=0, vmax=255)
        axes[c, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    return to_png(fig)


def class_counts_chart(counts: dict[str, Sequence[int]]) -> bytes:
    """Grouped bars: images per class in each named part (e.g. train, validation)."""
    fig = Figure(figsize=(8, 3.2))
    ax = fig.subplots()
    x = np.arange(len(CLASS_NAMES))
    width = 0.8 / max(1, len(counts))
    for i, (part, values) in enumerate(counts.items()):
        ax.bar(x + i * width - 0.4 + width / 2, values, width=width, label=part)
    ax.set_xticks(x, CLASS_NAMES, rotation=30, ha="right")
    ax.set(ylabel="images", title="images per class")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return to_png(fig)


def robustness_chart(rows: Sequence[Perturbed]) -> bytes:
    """Horizontal bars: accuracy under each perturbation, the clean accuracy as a dashed line."""
    fig = Figure(figsize=(7, 0.45 * len(rows) + 1))
    ax = fig.subplots()
    names = [r.name for r in rows][::-1]
    acc = [r.accuracy for r in rows][::-1]
    ax.barh(names, acc, color=["tab:green" if n == "clean" else "tab:orange" for n in names])
    clean = next((r.accuracy for r in rows if r.name == "clean"), None)
    if clean is not None:
        ax.axvline(clean, color="k", ls="--", lw=1)
    for y, a in enumerate(acc):
        ax.text(a, y, f" {a:.1%}", va="center", fontsize=8)
    ax.set(xlim=(0, 1.08), xlabel="test accuracy", title="robustness to small perturbations")
    return to_png(fig)


def photo_chart(rows: Sequence[PhotoRow]) -> bytes:
    """Accuracy per photo condition, one bar per severity (the realistic one hatched), clean as a dashed line."""
    conditions = [c for c in dict.fromkeys(r.condition for r in rows) if c != "clean"]
    clean = next((r.accuracy for r in rows if r.condition == "clean"), None)
    fig = Figure(figsize=(9, 3.6))
    ax = fig.subplots()
    most = max((sum(r.condition == c for r in rows) for c in conditions), default=1)
    width = 0.8 / most
    for x, condition in enumerate(conditions):
        for k, r in enumerate(r for r in rows if r.condition == condition):
            ax.bar(
                x - 0.4 + width * (k + 0.5),
                r.accuracy,
                width,
                color=("tab:blue", "tab:orange", "tab:red")[min(k, 2)],
                hatch="//" if r.realistic else None,
                edgecolor="k" if r.realistic else None,
            )
    if clean is not None:
        ax.axhline(clean, color="k", ls="--", lw=1, label=f"clean {clean:.1%}")
        ax.axhline(0.9 * clean, color="tab:red", ls=":", lw=1, label="0.9 x clean")
        ax.legend(loc="lower left", fontsize=8)
    ax.set_xticks(range(len(conditions)), conditions, rotation=30, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.02), ylabel="accuracy", title="product photos: mild, realistic (hatched), harsh")
    return to_png(fig)


def risk_coverage_chart(curve: Sequence[RiskCoveragePoint], target_risk: float, operating: Selective) -> bytes:
    """Selective risk against coverage as the confidence threshold falls, with the target and the operating point."""
    fig = Figure(figsize=(5, 3.4))
    ax = fig.subplots()
    ax.plot([p.coverage for p in curve], [p.risk for p in curve], "-", color="tab:blue", label="test set")
    ax.axhline(target_risk, color="tab:red", ls=":", lw=1, label=f"target risk {target_risk:.0%}")
    if operating.risk is not None:
        ax.plot([operating.coverage], [operating.risk], "o", color="k", label="served thresholds")
    ax.set(xlim=(0, 1), ylim=(0, None), xlabel="coverage (share answered confidently)", ylabel="error rate among them")
    ax.legend(fontsize=8)
    return to_png(fig)
