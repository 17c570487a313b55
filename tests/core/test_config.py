"""Profiles are validated strictly and the grid expands predictably."""

from __future__ import annotations

import pytest

from fmnist.core.config import CONFIG_DIR, HParams, ProfileError, expand_grid, load_profile, parse_profile


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_profiles_are_valid(path):
    profile = load_profile(path)
    assert profile.name == path.stem
    assert expand_grid(profile)


def test_empty_profile_is_all_defaults():
    assert parse_profile("")["hparams"] == HParams().model_dump()


def test_unknown_key_is_named():
    with pytest.raises(ProfileError, match=r"hparams\.widht: Extra inputs are not permitted"):
        parse_profile("hparams: {widht: 8}")


def test_bad_value_is_named():
    with pytest.raises(ProfileError, match=r"hparams\.lr: Input should be greater than 0"):
        parse_profile("hparams: {lr: -1}")


def test_unknown_grid_name_is_named():
    with pytest.raises(ProfileError, match=r"unknown hyper-parameter\(s\) \['learning_rate'\]"):
        parse_profile("grid: {learning_rate: [0.1]}")


def test_invalid_grid_value_fails_at_parse_time():
    with pytest.raises(ProfileError, match=r"grid point \{'epochs': 0\} is invalid"):
        parse_profile("grid: {epochs: [1, 0]}")


def test_not_yaml_mapping():
    with pytest.raises(ProfileError, match="must be a mapping"):
        parse_profile("- a\n- b\n")


def test_grid_is_the_cartesian_product_in_stable_order():
    profile = load_profile(parse_profile("hparams: {epochs: 3}\ngrid: {width: [8, 16], lr: [0.1, 0.2, 0.3]}"))
    points = expand_grid(profile)
    assert len(points) == 6
    assert [(p.lr, p.width) for p in points[:3]] == [(0.1, 8), (0.1, 16), (0.2, 8)]
    assert all(p.epochs == 3 for p in points)


def test_subset_must_exceed_validation():
    with pytest.raises(ProfileError, match="val_size"):
        parse_profile("data: {train_subset: 1000, val_size: 1000}")
