"""Leave-one-condition-out: each photo condition judged by photo thresholds fitted without it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fmnist.core.data import NUM_CLASSES
from fmnist.core.inference import features_and_logits
from fmnist.evaluation.answers import Answers
from fmnist.evaluation.leave_out import REAL, PhotoFit, leave_one_condition_out, policy_without
from fmnist.release.classifier import Classifier
from fmnist.trust.abstention_fit import fit_abstention, fit_photo_thresholds
from tests.evaluation.test_metrics import tiny_record
from tests.support.images import real_test_images

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup():
    """An (untrained) network's outputs on 500 real images: the first 200 fit the scans' thresholds, the other 300
    are a photo fit of two conditions, "steady" (its answers counted right) and "treacherous" (counted wrong)."""
    record = tiny_record()
    images, _ = real_test_images(500)
    network = record.build(CPU)
    features, logits = features_and_logits(network, images, CPU)
    predicted = logits.argmax(1).numpy()
    record.temperature = 1.0
    right = np.zeros((300, NUM_CLASSES), dtype=bool)
    condition = np.array(["steady", "treacherous"] * 150)
    # Steady photos are right whatever the network says; treacherous ones wrong, however sure it is.
    right[np.arange(300), predicted[200:]] = condition == "steady"
    fit = PhotoFit(logits[200:], features[200:], right, condition)
    # The scans' answers counted right too, so their bar sits at the lowest confidence and the photos' bar is theirs.
    record.abstention = fit_abstention(
        logits[:200], features[:200], predicted[:200], 1.0, target_risk=0.2, photos=fit.as_photos()
    )
    return record, images, fit


def test_the_policy_without_a_condition_is_fitted_on_the_others_only(setup):
    record, _, fit = setup
    policy = record.abstention
    original = policy.photo_threshold
    without = policy_without(policy, fit, "treacherous", 1.0, 0.9)
    expected = fit_photo_thresholds(replace(policy), fit.as_photos(fit.condition == "steady"), 1.0, 0.9)
    assert without.photo_threshold == expected.photo_threshold
    assert without.photo_ood_threshold == expected.photo_ood_threshold
    # Without the photos that are always wrong, the photos' bar drops: the fit really left them out.
    assert without.photo_threshold < policy.photo_threshold
    assert without.confidence_threshold == policy.confidence_threshold and without.class_means is policy.class_means
    assert policy.photo_threshold == original  # a copy was refitted, not the policy itself


def test_the_leave_out_judges_a_condition_by_the_policy_fitted_without_it(setup):
    record, images, fit = setup
    classifier = Classifier(record, CPU)
    before = classifier.policy.photo_threshold
    judge = leave_one_condition_out(classifier, fit, 0.9)
    pixels = images[200:240]
    scored = classifier.score(pixels, photo=[True] * 40)
    answers = Answers(
        labels=np.array([s.label for s in scored]),
        confident=np.array([s.class_confident for s in scored]),
        inputs=pixels,
        empty=np.zeros(40, dtype=bool),
        photo=np.ones(40, dtype=bool),
    )
    judged = judge("treacherous", answers)
    assert judged is not None and (judged.labels == answers.labels).all()
    without = policy_without(record.abstention, fit, "treacherous", 1.0, 0.9)
    expected = Classifier(replace(record, abstention=without), CPU).score(pixels, photo=[True] * 40)
    assert judged.confident.tolist() == [s.class_confident for s in expected]
    assert judged.family_sure is not None and judged.family_sure.tolist() == [s.confident for s in expected]
    assert judged.confident.sum() > answers.confident.sum()  # the lower bar answers more
    assert judge(REAL, answers) is None and judge("not in the fit", answers) is None
    assert classifier.policy.photo_threshold == before  # the served policy is not changed
    with pytest.raises(ValueError, match="model inputs"):
        judge("steady", replace(answers, inputs=None))


def test_a_photo_fit_with_parts_of_different_lengths_is_refused(setup):
    _, _, fit = setup
    with pytest.raises(ValueError, match="differ in length"):
        PhotoFit(fit.logits, fit.features, fit.right[:3], fit.condition)
