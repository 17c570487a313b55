"""The edge between the flow and the library: the test-only fault hook fails only the trials it names."""

from __future__ import annotations

import pytest

from fmnist.pipeline import InjectedFault, check_injected_fault


def test_fault_hook_only_hits_named_trials(monkeypatch):
    monkeypatch.setenv("FASHIONFLOW_FAIL_TRIALS", "1, 3")
    check_injected_fault(0)
    with pytest.raises(InjectedFault, match="trial 3 failed on purpose"):
        check_injected_fault(3)
    monkeypatch.delenv("FASHIONFLOW_FAIL_TRIALS")
    check_injected_fault(3)


def test_the_load_step_prepares_real_photos_only_when_a_trial_trains_on_them():
    """A grid with `real_photo_share` > 0 gets the fit split's training half as 28x28 inputs with their right classes
    (the calibration half stays out of training); one without gets none."""
    from fmnist.core.config import CONFIG_DIR, load_profile
    from fmnist.core.real_photos import fit_parts, load_real_photos
    from fmnist.pipeline import prepare_data

    smoke = load_profile(CONFIG_DIR / "smoke.yaml")
    plain = prepare_data(smoke)
    assert plain.splits.photo_images is None and plain.summary["real_photos_trained_on"] == 0
    mixed = prepare_data(smoke.model_copy(update={"grid": {"real_photo_share": [0.0, 0.1]}}))
    images, right = mixed.splits.photo_images, mixed.splits.photo_right
    train_half = fit_parts(load_real_photos("fit"))[0]
    assert images is not None and right is not None and 0.9 * len(train_half) < len(right) <= len(train_half)
    with_class = sum(1 for p in train_half if p.taught_classes)
    assert 0.9 * with_class < mixed.summary["real_photos_trained_on"] == right.any(axis=1).sum() <= with_class
    assert mixed.summary["real_photos_without_a_class"] == len(right) - mixed.summary["real_photos_trained_on"] > 0
    assert mixed.splits.train_images.shape == plain.splits.train_images.shape
