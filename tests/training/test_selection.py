"""The leaderboard ranks splits by validation accuracy with deterministic tie-breaks."""

from __future__ import annotations

from fmnist.training.selection import leaderboard


def test_ties_break_on_loss_then_index():
    splits = [
        {"index": 0, "val_accuracy": 0.90, "val_loss": 0.30},
        {"index": 1, "val_accuracy": 0.92, "val_loss": 0.28},
        {"index": 2, "val_accuracy": 0.92, "val_loss": 0.25},
        {"index": 3, "val_accuracy": 0.92, "val_loss": 0.25},
    ]
    ranked = leaderboard(splits)
    assert [s["index"] for s in ranked] == [2, 3, 1, 0]
    assert [s["rank"] for s in ranked] == [1, 2, 3, 4]
    assert leaderboard(list(reversed(splits))) == ranked
