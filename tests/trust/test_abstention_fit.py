"""The photo threshold's risk bound (selection with guaranteed risk) and photo labels as sets of right classes."""

from __future__ import annotations

import numpy as np
import pytest

from fmnist.trust.abstention_fit import _lowest_threshold, _right_classes, guaranteed_risk_threshold


def _answers(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Confidences uniform on [0.5, 1), each answer right with probability equal to its confidence."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.5, 1.0, n)
    return confidence, rng.random(n) < confidence


def test_the_bound_holds_on_answers_it_was_not_fitted_on():
    """Fitted on 30,000 answers, checked on 200,000 others drawn alike: in 40 repetitions the selective risk of the
    held-out answers exceeds the target no more often than delta allows (5%), while the plain rule, which meets the
    target on its own fit only, exceeds it about half the time."""
    target, over_bound, over_plain = 0.05, 0, 0
    held_out = _answers(200_000, seed=10_000)
    for seed in range(40):
        confidence, correct = _answers(30_000, seed)
        bounded, reached = guaranteed_risk_threshold(confidence, correct, target, delta=0.05)
        plain, _ = _lowest_threshold(confidence, correct, target)
        assert reached and bounded >= plain
        for threshold, counter in ((bounded, "bound"), (plain, "plain")):
            kept = held_out[0] >= threshold
            risk = 1 - held_out[1][kept].mean()
            if risk > target:
                over_bound += counter == "bound"
                over_plain += counter == "plain"
    assert over_bound <= 2  # 5% of 40
    assert over_plain >= 10


def test_an_unreachable_target_answers_nothing_confidently():
    confidence, correct = _answers(200, seed=1)
    threshold, reached = guaranteed_risk_threshold(confidence, correct, 0.001)
    assert not reached and threshold > confidence.max()


def test_photo_labels_may_be_classes_families_or_nothing():
    logits = np.zeros((3, 10), dtype=np.float32)
    as_indices = _right_classes((logits, logits, np.array([1, 2, 3])))
    assert as_indices.sum(1).tolist() == [1, 1, 1] and as_indices[0, 1]
    masks = np.zeros((3, 10), dtype=bool)
    masks[0, [5, 7, 9]] = True  # shoes: any footwear is right
    masks[1, 1] = True  # trousers
    # masks[2]: a hat, no class right
    assert np.array_equal(_right_classes((logits, logits, masks)), masks)
    with pytest.raises(ValueError, match="8 classes"):
        _right_classes((logits, logits, masks[:, :8]))
