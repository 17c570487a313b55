"""Metaflow cards of ScoreFlow: a live card per shard, and the catalogue's summary in the join.

The figures come from `fmnist.release.catalogue.summarize` and the shards' own counts; this module only lays them out.
Images are embedded as PNG bytes, so a card is one self-contained HTML file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from metaflow import current
from metaflow.cards import Image, Markdown, ProgressBar, Table
from shared_cards import provenance_table

Components = list[Any]


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


class LiveShardCard:
    """A shard's live card: a progress bar with images/s, refreshed per batch (Metaflow rate-limits refreshes)."""

    def __init__(self, index: int, total: int, restored: int) -> None:
        self.total, self.done = total, restored
        self.progress = ProgressBar(max=max(1, total), label="images", value=restored, unit="images")
        self.status = Markdown(
            f"Resumed: {restored} of {total} images were scored by an earlier attempt." if restored else "Starting..."
        )
        current.card.extend([Markdown(f"# Shard {index}: {total} images"), self.progress, self.status])
        current.card.refresh()

    def on_batch(self, rows: int, seconds: float, scored: int) -> None:
        """`rows` more images done; `scored` of them by this attempt in `seconds`."""
        self.done += rows
        rate = scored / seconds if seconds > 0 else 0.0
        self.progress.update(self.done, metadata=f"{rate:.0f} img/s")
        self.status.update(f"{self.done} of {self.total} images, {rate:.0f} images/s, {seconds:.1f} s elapsed")
        current.card.refresh()


def catalogue_card(
    summary: dict[str, Any],
    throughput: dict[str, Any],
    model: dict[str, Any],
    least_confident: Sequence[tuple[float, str, Any]],
) -> Components:
    """The catalogue: counts, throughput, classes against the training prior, unsure answers, drift signals, the
    least confident thumbnails, unreadable files, the model run and its provenance."""
    # matplotlib only in the join: the live shard cards (this module) are rendered by a fresh process each refresh.
    from fmnist.evaluation import plots

    components: Components = [
        Markdown(
            f"# Catalogue scored by {model['run']}\n"
            f"- **Images**: {summary['images']} ({summary['scored']} scored, {summary['unreadable']} unreadable)\n"
            f"- **Throughput**: {throughput['images_per_second']:.0f} images/s over {throughput['shards']} shards "
            f"({throughput['wall_seconds']:.1f} s from the first shard's start to the last one's end; "
            f"{throughput['images_per_shard_second']:.0f} images per shard-second)\n"
            f"- **Unsure**: {summary['unsure']} ({_pct(summary['unsure_share'])} of the scored images)"
        ),
        Markdown("## Classes against the training prior"),
        Table(
            [[c["class"], c["count"], _pct(c["share"]), _pct(c["prior"])] for c in summary["classes"]],
            headers=["class", "images", "share", "training prior"],
        ),
    ]
    if summary["scored"]:
        counts = {
            "catalogue": [c["share"] for c in summary["classes"]],
            "training": [c["prior"] for c in summary["classes"]],
        }
        components.append(Image(plots.class_counts_chart(counts), label="share of images per class"))
    components += _unsure(summary) + _drift(summary["drift"]) + _thumbnails(least_confident) + _errors(summary)
    components += [
        Markdown("## Model run"),
        provenance_table({"run": model["run"], **model["facts"], **model["provenance"]}),
    ]
    return components


def _unsure(summary: dict[str, Any]) -> Components:
    reasons = summary["unsure_reasons"]
    components: Components = [Markdown("## Unsure answers\nNone.")]
    if reasons:
        rows = [[reason, count, _pct(count / summary["scored"])] for reason, count in sorted(reasons.items())]
        components = [Markdown("## Unsure answers, by reason"), Table(rows, headers=["reason", "images", "share"])]
    families = summary["family_only"]
    if families:  # confident of the family, not of the class: the table's `family` column holds it
        components += [
            Markdown(
                "## Confident of the garment family alone\nThe exact class unsure (`confident` true, `class_confident`"
                " false; the `family` column):"
            ),
            Table(
                [[family, count, _pct(count / summary["scored"])] for family, count in sorted(families.items())],
                headers=["family", "images", "share"],
            ),
        ]
    return components


def _drift(drift: dict[str, Any]) -> Components:
    """The service's drift signals with the whole catalogue as the window: does it look like the training data?"""
    rows = [
        [
            s["name"],
            "–" if s["value"] is None else f"{s['value']:.3f}",
            "–" if s["reference"] is None else f"{s['reference']:.3f}",
            f"{s['threshold']:.3f}",
            "yes" if s["past_threshold"] else "no",
        ]
        for s in drift["signals"]
    ]
    verdict = (
        f"judged on fewer than {drift['min_samples']} images: not judged"
        if drift["count"] < drift["min_samples"]
        else ("**drifting**: unlike what the model was trained on" if drift["drifting"] else "like the training data")
    )
    return [
        Markdown(f"## Drift against the model's reference (as `/drift`)\n{drift['count']} scored images: {verdict}."),
        Table(rows, headers=["signal", "value", "reference", "threshold", "past threshold"]),
    ]


def _thumbnails(least_confident: Sequence[tuple[float, str, Any]]) -> Components:
    if not least_confident:
        return []
    from fmnist.evaluation import plots

    items = [
        {"image": pixels, "title": f"{path.rsplit('/', 1)[-1][:18]}\n{p:.0%}"} for p, path, pixels in least_confident
    ]
    return [
        Markdown("## Least confident images (what the model saw)"),
        Image(plots.image_gallery(items), label="top calibrated probability under each file name"),
    ]


def _errors(summary: dict[str, Any]) -> Components:
    errors = summary["errors"]
    if not errors:
        return [Markdown("## Unreadable files\nNone.")]
    rows = [[e["path"], e["error"]] for e in errors[:200]]
    more = f" (the first 200 of {len(errors)}; every one is in the table's `error` column)" if len(errors) > 200 else ""
    return [Markdown(f"## Unreadable files{more}"), Table(rows, headers=["file", "error"])]
