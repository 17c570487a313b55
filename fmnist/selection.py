"""Choosing the best training split on validation accuracy, and the leaderboard of all splits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def leaderboard(splits: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Splits ranked best first: highest validation accuracy, then lowest validation loss, then lowest index.

    Each split is a dict with at least `index`, `val_accuracy` and `val_loss`; the tie-breaks make the choice
    deterministic when two splits score the same accuracy.
    """
    ranked = sorted(splits, key=lambda s: (-s["val_accuracy"], s["val_loss"], s["index"]))
    return [{**s, "rank": rank} for rank, s in enumerate(ranked, start=1)]


def select_best(splits: Sequence[dict[str, Any]]) -> int:
    """Index of the best split by the leaderboard's order."""
    if not splits:
        raise ValueError("no training splits to choose from")
    return int(leaderboard(splits)[0]["index"])
