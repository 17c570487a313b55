"""Abstention: thresholds fitted on validation, the risk-coverage helpers, the policy's record round trip, decide."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from fmnist.core.data import FAMILY_OF
from fmnist.core.inference import features_and_logits, predict_logits
from fmnist.core.model import ModelArgs, build_model
from fmnist.trust.abstention import (
    LOW_CONFIDENCE,
    SAME_FAMILY,
    UNLIKE_TRAINING,
    AbstentionPolicy,
    Decision,
    confidence_scores,
    energy_scores,
    mahalanobis_scores,
)
from fmnist.trust.abstention_fit import (
    aurc,
    coverage_at_risk,
    fit_abstention,
    fit_gaussian,
    risk_coverage_curve,
    selective_summary,
)
from fmnist.trust.calibration import fit_temperature

CPU = torch.device("cpu")
NUM_CLASSES, DIM = 10, 16


def synthetic_set(n: int, seed: int, dim: int = DIM) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(logits (N, C), non-negative features (N, D), labels (N,)) where confidence tracks correctness.

    Features: a class centre plus noise, clamped at zero like ReLU outputs. Logits: the true class gets a random
    margin, so some examples are confidently right and others are wrong with low confidence.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    centres = torch.rand(NUM_CLASSES, dim, generator=torch.Generator().manual_seed(123)) * 4 + 1  # fixed per class
    features = (centres[labels] + 0.5 * torch.randn(n, dim, generator=g)).clamp_min(0.0)
    logits = torch.randn(n, NUM_CLASSES, generator=g)
    logits[torch.arange(n), labels] += 4 * torch.rand(n, generator=g)
    return logits, features, labels.numpy().astype(np.uint8)


@pytest.fixture(scope="module")
def val_set() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    return synthetic_set(4000, seed=0)


def selective_risk(confidence: np.ndarray, correct: np.ndarray, threshold: float) -> float:
    kept = confidence >= threshold
    return float((~correct[kept]).mean())


@pytest.mark.parametrize("target", [0.01, 0.02, 0.05, 0.2])
def test_fitted_policy_reaches_target_risk_on_the_data_it_was_fitted_on(val_set, target):
    logits, features, labels = val_set
    policy = fit_abstention(logits, features, labels, temperature=1.3, target_risk=target)
    summary = selective_summary(policy, logits, features, labels, temperature=1.3)
    assert summary["risk"] <= target
    assert summary["coverage"] == pytest.approx(policy.val_coverage)
    assert summary["risk"] == pytest.approx(policy.val_risk)
    assert 0.0 < summary["coverage"] < 1.0
    # The OOD threshold is the 99.5% quantile of held-out scores (see the test below): with 16 dimensions on 4,000
    # images, in-sample and held-out scores differ little, so about 0.5% of the fitting images are flagged.
    assert summary["flagged"][UNLIKE_TRAINING] == pytest.approx(0.005, abs=0.003)
    assert policy.val_ood_flagged == summary["flagged"][UNLIKE_TRAINING]
    assert summary["coverage"] + sum(summary["flagged"].values()) == pytest.approx(1.0)
    assert summary["accuracy"] == pytest.approx(1 - summary["risk"])


def test_the_ood_threshold_flags_its_share_of_new_images():
    # Many dimensions for few images, like the network's 240-dimensional descriptor on 5,000 validation images: a
    # density scores the images it was fitted on as closer than new ones, so a quantile of those in-sample scores
    # flags new in-distribution images far more often than 1 - ood_quantile.
    logits, features, labels = synthetic_set(1500, seed=7, dim=120)
    policy = fit_abstention(logits, features, labels, temperature=1.0, ood_quantile=0.99)
    new_logits, new_features, _ = synthetic_set(20_000, seed=8, dim=120)
    new_scores = policy.ood_scores(new_logits, new_features).numpy()
    flagged = float((new_scores > policy.ood_threshold).mean())
    in_sample = float(np.quantile(policy.ood_scores(logits, features).numpy(), 0.99))
    in_sample_flagged = float((new_scores > in_sample).mean())
    assert in_sample_flagged > 0.03  # what a quantile of the fitted images' own scores would flag
    assert 0.002 < flagged < 0.02  # about the 1% asked for


def test_confidence_threshold_is_the_lowest_that_reaches_the_target(val_set):
    logits, features, labels = val_set
    # ood_quantile 1.0 flags nothing on the fitting data, so the threshold depends on confidence alone.
    policy = fit_abstention(logits, features, labels, temperature=1.0, target_risk=0.03, ood_quantile=1.0)
    confidence = confidence_scores(logits, 1.0).numpy()
    correct = logits.argmax(1).numpy() == labels
    candidates = np.unique(confidence)
    reaching = [t for t in candidates if selective_risk(confidence, correct, t) <= 0.03]
    assert policy.confidence_threshold == min(reaching)
    assert policy.val_coverage == pytest.approx(coverage_at_risk(confidence, correct, 0.03))


def test_confidence_threshold_is_monotone_in_target_risk(val_set):
    logits, features, labels = val_set
    targets = [0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]
    policies = [fit_abstention(logits, features, labels, 1.0, target_risk=t) for t in targets]
    thresholds = [p.confidence_threshold for p in policies]
    coverages = [p.val_coverage for p in policies]
    assert thresholds == sorted(thresholds, reverse=True)
    assert coverages == sorted(coverages)
    assert thresholds[0] > thresholds[-1]


def test_unreachable_target_keeps_only_the_most_confident_and_warns(caplog):
    logits = torch.tensor([[3.0, 0.0], [2.0, 0.0], [1.0, 0.0]])  # all predict class 0
    labels = np.array([1, 1, 0])  # the two most confident are wrong
    features = torch.rand(3, 4, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING, logger="fmnist.trust.abstention"):
        policy = fit_abstention(logits, features, labels, 1.0, target_risk=0.1, ood_quantile=1.0)
    assert "no confidence threshold reaches" in caplog.text
    assert policy.confidence_threshold == pytest.approx(float(confidence_scores(logits[:1], 1.0)[0]))
    assert policy.val_coverage == pytest.approx(1 / 3)
    assert policy.val_risk == 1.0


def test_ties_are_kept_or_dropped_together():
    confidence = np.array([0.9, 0.9, 0.9, 0.6, 0.6])
    correct = np.array([True, True, False, True, True])
    # Keeping the 0.9 group risks 1/3; keeping everything risks 1/5. Never a coverage that splits a tie group.
    assert coverage_at_risk(confidence, correct, 0.2) == 1.0
    assert coverage_at_risk(confidence, correct, 0.3) == 1.0
    assert coverage_at_risk(confidence, correct, 0.1) == 0.0
    curve = risk_coverage_curve(confidence, correct)
    assert [(p["coverage"], p["threshold"]) for p in curve] == [(0.6, 0.9), (1.0, 0.6)]
    assert curve[0]["risk"] == pytest.approx(1 / 3)


def test_risk_coverage_curve_endpoints_and_order(val_set):
    logits, _, labels = val_set
    confidence = confidence_scores(logits, 1.0).numpy()
    correct = logits.argmax(1).numpy() == labels
    curve = risk_coverage_curve(confidence, correct, points=21)
    assert 2 <= len(curve) <= 21
    last = curve[-1]
    assert last["coverage"] == 1.0
    assert last["risk"] == pytest.approx(1 - correct.mean())
    assert last["threshold"] == confidence.min()
    assert curve[0]["coverage"] <= 1 / len(confidence) + 1e-12  # the single most confident answer
    assert curve[0]["threshold"] == confidence.max()
    assert [p["coverage"] for p in curve] == sorted(p["coverage"] for p in curve)
    assert [p["threshold"] for p in curve] == sorted((p["threshold"] for p in curve), reverse=True)
    # Confidence tracks correctness here: the most confident fifth is far less wrong than the whole set.
    fifth = next(p for p in curve if p["coverage"] >= 0.2)
    assert fifth["risk"] < last["risk"] / 2


def test_aurc_extremes():
    confidence = np.linspace(1.0, 0.0, 10)
    assert aurc(confidence, np.ones(10, bool)) == 0.0
    assert aurc(confidence, np.zeros(10, bool)) == 1.0
    # One error ranked last: risk 1/10 at full coverage only, 0 before.
    assert aurc(confidence, np.arange(10) < 9) == pytest.approx(0.1 / 10)


def test_policy_round_trips_through_metadata_and_tensors(val_set):
    logits, features, labels = val_set
    policy = fit_abstention(logits, features, labels, temperature=1.2)
    # Through JSON and safetensors, as the model record stores them.
    meta = json.loads(json.dumps(policy.metadata()))
    blob = save_safetensors(policy.tensors())
    tensors = load_safetensors(blob)
    assert set(tensors) == {"abstention.class_means", "abstention.precision"}
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors.values())
    restored = AbstentionPolicy.from_parts(meta, {**tensors, "features.0.0.weight": torch.zeros(1)})
    assert restored.metadata() == policy.metadata()
    for key, tensor in restored.tensors().items():
        assert torch.equal(tensor, policy.tensors()[key])
    # Same decisions; scores equal up to the summation order BLAS picks for differently aligned buffers.
    before, after = policy.decide(logits, features, 1.2), restored.decide(logits, features, 1.2)
    assert [(d.confident, d.reason, d.confidence) for d in after] == [
        (d.confident, d.reason, d.confidence) for d in before
    ]
    assert [d.ood_score for d in after] == pytest.approx([d.ood_score for d in before], rel=1e-9)


def test_from_parts_rejects_missing_or_mismatched_tensors(val_set):
    logits, features, labels = val_set
    policy = fit_abstention(logits, features, labels, temperature=1.0)
    with pytest.raises(ValueError, match="missing"):
        AbstentionPolicy.from_parts(policy.metadata(), {})
    bad = {**policy.tensors(), "abstention.precision": torch.eye(3)}
    with pytest.raises(ValueError, match="do not match"):
        AbstentionPolicy.from_parts(policy.metadata(), bad)


@pytest.mark.parametrize("power", [0.5, 1.0])
def test_decide_flags_far_features_and_trusts_a_class_mean_with_a_confident_logit(val_set, power):
    logits, features, labels = val_set
    policy = fit_abstention(logits, features, labels, temperature=1.0, feature_power=power)
    c = 3
    # Raw features whose transform is exactly the class mean the policy stores.
    at_mean = policy.class_means[c : c + 1].double().pow(1 / power).float()  # (1, D)
    confident_logit = torch.zeros(1, NUM_CLASSES)
    confident_logit[0, c] = 20.0
    far = at_mean + 100.0 * features.max()

    (at_mean_decision,) = policy.decide(confident_logit, at_mean, 1.0)
    assert at_mean_decision.confident and at_mean_decision.reason is None
    assert at_mean_decision.ood_score == pytest.approx(0.0, abs=1e-3)
    assert at_mean_decision.confidence > 0.99

    # Far away: declined as unlike the training images even though the logit is confident (checked first).
    (far_decision,) = policy.decide(confident_logit, far, 1.0)
    assert far_decision == Decision(False, UNLIKE_TRAINING, far_decision.confidence, far_decision.ood_score)
    assert far_decision.ood_score > policy.ood_threshold

    # At the class mean but with flat logits: declined for low confidence.
    (flat_decision,) = policy.decide(torch.zeros(1, NUM_CLASSES), at_mean, 1.0)
    assert (flat_decision.confident, flat_decision.reason) == (False, LOW_CONFIDENCE)
    assert flat_decision.confidence == pytest.approx(1 / NUM_CLASSES)


def test_decide_never_trusts_non_finite_inputs(val_set):
    logits, features, labels = val_set
    policy = fit_abstention(logits, features, labels, temperature=1.0)
    nan_logits = torch.full((1, NUM_CLASSES), math.nan)
    nan_features = torch.full((1, DIM), math.nan)
    assert not policy.decide(nan_logits, features[:1], 1.0)[0].confident
    assert policy.decide(logits[:1], nan_features, 1.0)[0].reason == UNLIKE_TRAINING


def test_decide_batch_of_one_matches_the_batch(val_set):
    logits, features, labels = val_set
    policy = fit_abstention(logits, features, labels, temperature=1.0)
    batch = policy.decide(logits[:50], features[:50], 1.0)
    singles = [policy.decide(logits[i : i + 1], features[i : i + 1], 1.0)[0] for i in range(50)]
    assert [d.confident for d in singles] == [d.confident for d in batch]
    assert [d.reason for d in singles] == [d.reason for d in batch]
    assert [d.ood_score for d in singles] == pytest.approx([d.ood_score for d in batch], rel=1e-9)


def test_energy_policy_uses_the_logits():
    logits, features, labels = synthetic_set(2000, seed=1)
    policy = fit_abstention(logits, features, labels, 1.0, ood_score="energy")
    assert policy.metadata()["ood_score"] == "energy"
    scores = policy.ood_scores(logits, features)
    assert torch.allclose(scores, -torch.logsumexp(logits.double(), 1))
    flat = policy.decide(torch.full((1, NUM_CLASSES), -10.0), features[:1], 1.0)[0]
    assert flat.reason == UNLIKE_TRAINING  # energy 10 - log 10, far above any validation image's
    with pytest.raises(ValueError, match="unknown OOD score"):
        fit_abstention(logits, features, labels, 1.0, ood_score="entropy")


def test_energy_of_uniform_logits_is_minus_log_classes():
    assert float(energy_scores(torch.zeros(1, 10))[0]) == pytest.approx(-math.log(10))


def test_mahalanobis_matches_the_direct_formula():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(500, 6, generator=g)
    labels = torch.randint(0, 3, (500,), generator=g).numpy()
    means, precision = fit_gaussian(features, labels, 3, ridge=0.0)
    assert means.shape == (3, 6) and precision.shape == (6, 6) and precision.dtype == torch.float32
    assert torch.allclose(means[1], features[labels == 1].mean(0), atol=1e-6)
    queries = torch.randn(7, 6, generator=g)
    diff = queries.double()[:, None, :] - means.double()[None]  # (7, 3, 6)
    direct = torch.einsum("ncd,de,nce->nc", diff, precision.double(), diff).min(1).values
    assert torch.allclose(mahalanobis_scores(queries, means, precision), direct, rtol=1e-9, atol=1e-9)


def test_features_and_logits_agree_with_predict_logits():
    torch.manual_seed(0)
    model = build_model(ModelArgs(width=4))
    model.train()
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8).numpy()
    features, logits = features_and_logits(model, images, CPU, batch_size=2)
    assert model.training  # mode restored
    # The descriptor: mean activations of the four conv blocks (4, 8, 16, 16 channels), then the 16 pooled features.
    assert features.shape == (5, 60) and logits.shape == (5, 10)
    assert features.dtype == logits.dtype == torch.float32
    assert (features >= 0).all()  # ReLU outputs, averaged or max-pooled, which the square-root transform relies on
    assert torch.allclose(logits, predict_logits(model, images, CPU), atol=1e-5)
    empty_f, empty_l = features_and_logits(model, np.zeros((0, 28, 28), np.uint8), CPU)
    assert empty_f.shape == (0, 60) and empty_l.shape == (0, 10)


@pytest.fixture(scope="module")
def small_model():
    """A width-8 model trained for two epochs on 5000 real images (about 77% accurate), and its splits."""
    from fmnist.core.config import HParams
    from fmnist.core.data import load_dataset, make_splits
    from fmnist.training.loop import train_model

    splits = make_splits(load_dataset(download=False), val_size=1000, seed=0, train_subset=6000)
    hp = HParams(width=8, epochs=2, batch_size=128, label_smoothing=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains faster on one thread than on a busy shared pair
    try:
        result = train_model(hp, splits, CPU, seed=0)
    finally:
        torch.set_num_threads(threads)
    model = build_model(result.model_args)
    model.load_state_dict(result.state_dict)
    return model, splits


def test_policy_on_a_real_model_declines_blank_and_noise_images(small_model):
    """End to end on real data."""
    model, splits = small_model
    features, logits = features_and_logits(model, splits.val_images, CPU)
    temperature = fit_temperature(logits, splits.val_labels)
    policy = fit_abstention(logits, features, splits.val_labels, temperature, target_risk=0.05)
    summary = selective_summary(policy, logits, features, splits.val_labels, temperature)
    assert summary["risk"] <= 0.05 and summary["coverage"] > 0.3

    rng = np.random.default_rng(0)
    odd = np.stack([np.zeros((28, 28)), np.full((28, 28), 255), rng.integers(0, 256, (28, 28))]).astype(np.uint8)
    f, z = features_and_logits(model, odd, CPU)
    # Black and white frames are far from every garment's features; none of the three is a confident answer.
    decisions = policy.decide(z, f, temperature)
    assert [d.reason for d in decisions[:2]] == [UNLIKE_TRAINING] * 2
    assert not any(d.confident for d in decisions)


def test_photo_threshold_holds_its_risk_on_held_out_photos(small_model):
    """Fitted on one half of the validation split (clean images and both photo families), the policy keeps its
    selective risk on the other half's photos, which played no part in the fit: the check that matters, since any
    threshold reaches its target on the data it was fitted to."""
    from fmnist.evaluation.photo_mix import render_validation_photos

    model, splits = small_model
    images, labels = splits.val_images, splits.val_labels
    order = np.random.default_rng(1).permutation(len(labels))
    fit, held = np.sort(order[:500]), np.sort(order[500:])

    def photos(part: np.ndarray, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        mix = render_validation_photos(images[part], labels[part], seed=seed, per_class=2, size=112)
        found = ~mix.empty
        f, z = features_and_logits(model, mix.pixels[found], CPU)
        return z, f, mix.labels[found]

    features, logits = features_and_logits(model, images[fit], CPU)
    temperature = fit_temperature(logits, labels[fit])
    target = 0.1
    policy = fit_abstention(logits, features, labels[fit], temperature, target_risk=target, photos=photos(fit, seed=0))
    assert policy.photo_threshold >= policy.confidence_threshold and policy.num_fit_photos > 400
    assert policy.val_photo_risk <= target + 1e-9  # on the photos it was fitted to, by construction

    z, f, y = photos(held, seed=1)  # other garments, other draws
    confident = policy.scores(z, f, temperature, photo=np.ones(len(y), dtype=bool))[2].numpy() == 0
    risk = float((z.argmax(1).numpy()[confident] != y[confident]).mean())
    # About 50 confident held-out photos or more: a binomial spread of a few points around the target.
    assert confident.sum() >= 50 and risk <= target + 0.08, (risk, int(confident.sum()))
    # A photo threshold that did nothing would show here: judged by the scans' bar, more held-out photos are answered
    # confidently, and more of those answers are wrong.
    as_scans = policy.scores(z, f, temperature)[2].numpy() == 0
    risk_as_scans = float((z.argmax(1).numpy()[as_scans] != y[as_scans]).mean())
    assert as_scans.sum() > confident.sum() and risk_as_scans > risk, (risk_as_scans, risk)


def test_the_photo_threshold_applies_only_where_marked(val_set):
    logits, features, labels = val_set
    policy = fit_abstention(logits, features, labels, temperature=1.0)
    policy.photo_threshold = 1.01  # no answer is this sure
    confidence, ood, code = policy.scores(logits, features, 1.0)
    marks = np.arange(len(labels)) % 2 == 0
    photo_code = policy.reason_codes(confidence.numpy(), ood.numpy(), marks)
    assert (photo_code[marks] != 0).all()  # every photo declined
    assert (photo_code[~marks] == code.numpy()[~marks]).all()  # scans as before
    with pytest.raises(ValueError, match="3 photo flags for"):
        policy.reason_codes(confidence.numpy(), ood.numpy(), marks[:3])
    assert AbstentionPolicy.from_parts(policy.metadata(), policy.tensors()).photo_threshold == 1.01

    # The photos' OOD threshold, likewise: a photo as far from the classes as the median scan is declined as unlike
    # the training images, while the scan itself is judged as before.
    policy.photo_threshold = policy.confidence_threshold
    policy.photo_ood_threshold = float(np.median(ood.numpy()))
    codes = policy.reason_codes(confidence.numpy(), ood.numpy(), marks)
    far = ood.numpy() > policy.photo_ood_threshold
    assert (codes[marks & far] == 1).all() and (codes[~marks] == code.numpy()[~marks]).all()
    assert AbstentionPolicy.from_parts(policy.metadata(), policy.tensors()).photo_ood_threshold == pytest.approx(
        policy.photo_ood_threshold
    )


def test_the_photo_ood_threshold_is_the_photos_quantile_and_never_above_the_scans(val_set):
    logits, features, labels = val_set
    photos = (logits[:1000] * 0.5, features[:1000] * 1.5, labels[:1000])  # less sure and farther than the scans
    policy = fit_abstention(logits, features, labels, 1.0, photos=photos, photo_ood_quantile=0.9)
    scores = policy.ood_scores(photos[0], photos[1]).numpy()
    expected = min(policy.ood_threshold, float(np.quantile(scores, 0.9)))
    assert policy.photo_ood_threshold == pytest.approx(expected) and policy.photo_ood_quantile == 0.9
    assert policy.photo_ood_threshold <= policy.ood_threshold


def family_photos(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Photos as `synthetic_set`, but whose logits often spread over the true class's garment family: the family is
    plain where the class is not (a T-shirt or a shirt, a sneaker or a sandal)."""
    logits, features, labels = synthetic_set(n, seed)
    g = torch.Generator().manual_seed(seed + 1)
    same = torch.from_numpy(SAME_FAMILY)  # (C, C) bool
    y = torch.from_numpy(labels.astype(np.int64))
    logits = logits + same[y].float() * 5 * torch.rand(n, 1, generator=g)  # the whole family lifted
    return logits, features, labels


def test_family_answers_hold_their_risk_on_photos_they_were_not_fitted_on(val_set):
    """Fitted on one set of photos, the family threshold keeps the family risk of the answers sure of their family
    on another set drawn the same way, and makes more answers useful than the class threshold alone."""
    logits, features, labels = val_set
    target = 0.05
    policy = fit_abstention(logits, features, labels, 1.0, target_risk=target, photos=family_photos(3000, seed=5))
    assert 0.0 < policy.family_threshold <= 1.0
    assert policy.val_photo_family_risk <= target + 1e-9  # on the photos it was fitted to

    z, f, y = family_photos(3000, seed=6)  # other draws
    decisions = policy.decide(z, f, 1.0, photo=np.ones(len(y), dtype=bool))
    sure = np.array([d.confident for d in decisions])
    confident = np.array([d.class_confident for d in decisions])
    assert (sure == np.array([d.family is not None for d in decisions])).all()
    top = z.argmax(1).numpy()
    family_right = SAME_FAMILY[top, y.astype(np.int64)]
    risk = float((~family_right[sure]).mean())
    assert risk <= target + 0.03, risk
    # Confident (of the family at least) on clearly more photos than of the class, and where sure, the family named is
    # the top class's: a threshold that did nothing would leave `sure` equal to `confident`.
    assert sure.sum() > 1.5 * confident.sum() and (sure >= confident).all()
    assert all(d.family == FAMILY_OF[t] for d, t in zip(decisions, top, strict=True) if d.family is not None)
    # Unsure of the family: the same answers with a threshold above every probability.
    policy.family_threshold = 1.01
    strict = policy.decide(z, f, 1.0, photo=np.ones(len(y), dtype=bool))
    assert (np.array([d.confident for d in strict]) == confident).all()
    assert all(d.confident == d.class_confident for d in strict)


def test_family_answers_only_for_photos_that_look_like_garments(val_set):
    logits, features, labels = val_set
    policy = fit_abstention(logits, features, labels, 1.0, photos=family_photos(2000, seed=7))
    z, f, _ = family_photos(400, seed=8)
    marks = np.arange(len(z)) % 2 == 0
    decisions = policy.decide(z, f, 1.0, photo=marks)
    family_only = [d for d in decisions if d.confident and not d.class_confident]
    assert family_only  # confident of the family, not of the class: a photo the class threshold would decline
    for d, photo in zip(decisions, marks, strict=True):
        if d.confident and not d.class_confident:
            # Never a scan, and never an input unlike the training images.
            assert photo and d.reason is None and d.family is not None and d.confidence < policy.photo_threshold
    # Where the class is confident, so is the answer, and it names the class's family; a scan is confident of its
    # class or of nothing.
    assert all(d.confident for d in decisions if d.class_confident)
    assert all(d.confident == d.class_confident for d, photo in zip(decisions, marks, strict=True) if not photo)
    # An input far from every class is sure of nothing, whatever its logits.
    far = policy.decide(z[:1] * 0 + torch.eye(NUM_CLASSES)[:1] * 50, f[:1] * 0 + 1e3, 1.0, photo=np.ones(1, bool))[0]
    assert far.reason == UNLIKE_TRAINING and far.family is None
    restored = AbstentionPolicy.from_parts(json.loads(json.dumps(policy.metadata())), policy.tensors())
    assert restored.family_threshold == pytest.approx(policy.family_threshold)
    assert [d.family for d in restored.decide(z, f, 1.0, photo=marks)] == [d.family for d in decisions]


def test_photo_components_let_real_garments_pass_as_photos_and_never_move_a_scan(val_set):
    """Real photos of a garment family sit far from every clean class mean (`synthetic_set`'s scans) but close to one
    another. Fitted with `photo_density` (one set of real photos) and `real_photos` (others, in the photo fit), each
    family gets one component, its real photos' mean, and a distance threshold from the others. New real photos of
    those families then pass the OOD check as photos while they are still unlike the training images as scans; far
    inputs stay unlike either way, and scans are scored as before."""
    from fmnist.core.data import FAMILIES
    from fmnist.trust.abstention_fit import fit_photo_components

    logits, features, labels = val_set
    g = torch.Generator().manual_seed(7)
    shift = torch.full((DIM,), 12.0)  # a backdrop's worth of extra activation on every feature

    def real_photos(n: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        z, f, y = synthetic_set(n, seed=int(torch.randint(0, 10_000, (1,), generator=g)))
        right = np.zeros((n, NUM_CLASSES), dtype=bool)
        for i, label in enumerate(y.tolist()):
            right[i, list(next(cs for cs in FAMILIES.values() if label in cs))] = True
        return z, f + shift, right

    density = real_photos(600)
    rendered, real = (logits[:500], features[:500], labels[:500]), real_photos(600)
    photos = (
        torch.cat([rendered[0], real[0]]),
        torch.cat([rendered[1], real[1]]),
        np.concatenate([np.eye(NUM_CLASSES, dtype=bool)[rendered[2].astype(np.int64)], real[2]]),
    )
    marks = np.arange(1100) >= 500  # the real ones
    options = {"photos": photos, "photo_component_quantile": 0.8, "photo_components_per_family": 1}
    with_components = fit_abstention(
        logits, features, labels, 1.0, photo_density=(density[1], density[2]), real_photos=marks, **options
    )
    without = fit_abstention(logits, features, labels, 1.0, **options)
    assert without.photo_means is None and math.isnan(without.photo_component_threshold)
    components = with_components.photo_means
    assert components is not None and components.shape == (len(FAMILIES), DIM)
    expected = fit_photo_components(density[1], density[2], with_components.feature_power, per_family=1)
    assert expected is not None and torch.equal(components, expected)
    # The threshold: the 0.8 quantile of the other real photos' distances to the nearest component.
    distances = with_components.component_distances(real[1]).numpy()
    assert with_components.photo_component_threshold == pytest.approx(float(np.quantile(distances, 0.8)))

    new_z, new_f, _ = real_photos(300)  # other real photos of the same families
    as_photos = np.ones(300, dtype=bool)
    codes = with_components.reason_codes(
        np.ones(300), with_components.ood_scores(new_z, new_f, as_photos).numpy(), as_photos
    )
    assert 0.6 < (codes != 1).mean() < 0.95  # about 80% pass by their distance to the components
    for policy in (with_components, without):  # as scans, or without components: unlike the training images
        scans = policy.reason_codes(np.ones(300), policy.ood_scores(new_z, new_f).numpy())
        assert (scans == 1).all()
    far = features[:300] + 60.0
    far_codes = with_components.reason_codes(
        np.ones(300), with_components.ood_scores(logits[:300], far, as_photos).numpy(), as_photos
    )
    assert (far_codes == 1).all()
    # Scans are scored against the class means alone, whatever the components.
    np.testing.assert_array_equal(
        with_components.ood_scores(logits, features).numpy(), without.ood_scores(logits, features).numpy()
    )
    # The components travel in the record, and a mismatched one is refused.
    rebuilt = AbstentionPolicy.from_parts(with_components.metadata(), with_components.tensors())
    assert rebuilt.photo_means is not None and torch.equal(rebuilt.photo_means, components)
    assert rebuilt.photo_component_threshold == pytest.approx(with_components.photo_component_threshold)
    assert with_components.metadata()["num_photo_components"] == len(FAMILIES)
    bad = with_components.tensors() | {"abstention.photo_means": torch.zeros(2, DIM + 1)}
    with pytest.raises(ValueError, match="photo components"):
        AbstentionPolicy.from_parts(with_components.metadata(), bad)


def test_photo_components_of_a_family_with_two_looks_leave_the_middle_out():
    """A family whose real photos come in two looks (a T-shirt laid flat, a shirt on a hanger): its mean lies between
    them, where neither look is, and an input landing there (a face the normaliser turned into a blob) is as close to
    the mean as a real photo. Two k-means centres, or every photo as its own component (the default), keep the middle
    out: the distance from it to the nearest component is far larger than a real photo's."""
    from fmnist.core.data import FAMILIES
    from fmnist.trust.abstention_fit import fit_photo_components

    g = torch.Generator().manual_seed(3)
    dim, n = 8, 100
    looks = torch.cat([torch.full((n, dim), 1.0), torch.full((n, dim), 3.0)])  # (2n, D), after the square root
    transformed = looks + 0.1 * torch.randn(2 * n, dim, generator=g)
    features = transformed.clamp_min(0.0) ** 2  # the density's power transform (0.5) gives `transformed` back
    tops = list(FAMILIES["tops"])
    right = np.zeros((2 * n, NUM_CLASSES), dtype=bool)
    right[:, tops] = True
    precision = torch.eye(dim)
    policy = AbstentionPolicy(
        confidence_threshold=0.5,
        ood_threshold=1.0,
        class_means=torch.zeros(NUM_CLASSES, dim),
        precision=precision,
        feature_power=0.5,
    )
    middle = torch.full((1, dim), 2.0) ** 2  # halfway between the looks
    new_photos = (torch.cat([torch.full((5, dim), 1.0), torch.full((5, dim), 3.0)]) + 0.1) ** 2

    def distances(per_family: int) -> tuple[float, float]:
        policy.photo_means = fit_photo_components(features, right, 0.5, per_family, precision)
        assert policy.photo_means is not None
        return (
            float(policy.component_distances(middle)[0]),
            float(policy.component_distances(new_photos).max()),
        )

    mean_middle, mean_photo = distances(1)
    assert policy.photo_means is not None and policy.photo_means.shape == (1, dim)
    assert mean_middle < 0.1 * mean_photo  # the mean: the middle is closer than any real photo
    for per_family, count in ((2, 2), (0, 2 * n)):
        middle_distance, photo_distance = distances(per_family)
        assert policy.photo_means.shape == (count, dim)
        assert middle_distance > 20 * photo_distance  # the middle is far from every look
    # k-means centres are the two looks' centres; a family with fewer photos than k keeps every photo.
    policy.photo_means = fit_photo_components(features, right, 0.5, 2, precision)
    centres = sorted(policy.photo_means.mean(1).tolist())
    assert centres == pytest.approx([1.0, 3.0], abs=0.05)
    assert fit_photo_components(features[:3], right[:3], 0.5, 5, precision).shape == (3, dim)
    with pytest.raises(ValueError, match="precision"):
        fit_photo_components(features, right, 0.5, 2)
    with pytest.raises(ValueError, match="components per family"):
        fit_photo_components(features, right, 0.5, -1)


def test_a_decision_is_confident_exactly_when_it_names_a_family_and_no_reason():
    assert Decision(True, None, 0.9, 1.0, family="tops", class_confident=False).confident  # a family-only answer
    with pytest.raises(ValueError, match="confident of its class is confident"):
        Decision(False, LOW_CONFIDENCE, 0.9, 1.0, class_confident=True)
    with pytest.raises(ValueError, match="names its family and no reason"):
        Decision(True, None, 0.9, 1.0)  # confident of nothing it names
    with pytest.raises(ValueError, match="names its family and no reason"):
        Decision(False, LOW_CONFIDENCE, 0.5, 1.0, family="tops")  # a family without the confidence
