"""The leaderboard of all training splits, best on validation first: the join step takes its first row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def leaderboard(trials: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Splits ranked best first: highest validation accuracy, then lowest validation loss, then lowest index.

    Each trial is a dict with at least `index`, `val_accuracy` and `val_loss`; the tie-breaks make the choice
    deterministic when two trials score the same accuracy.
    """
    ranked = sorted(trials, key=lambda s: (-s["val_accuracy"], s["val_loss"], s["index"]))
    return [{**s, "rank": rank} for rank, s in enumerate(ranked, start=1)]
