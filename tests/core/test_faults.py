"""The fault-injection hooks' one parser: indices that fail, index:step pairs that kill, malformed values named."""

from __future__ import annotations

import pytest

from fmnist.core.faults import failing, kill_point

ENV = "FASHIONFLOW_TEST_FAULTS"


def test_unset_means_no_fault(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert failing(ENV) == set()
    assert kill_point(ENV, 0) is None


def test_failing_indices(monkeypatch):
    monkeypatch.setenv(ENV, " 3, 5,,")
    assert failing(ENV) == {3, 5}


def test_kill_points(monkeypatch):
    monkeypatch.setenv(ENV, "3:2, 5:1")
    assert kill_point(ENV, 3) == 2
    assert kill_point(ENV, 5) == 1
    assert kill_point(ENV, 4) is None


@pytest.mark.parametrize(("value", "parse"), [("three", failing), ("3", lambda env: kill_point(env, 3))])
def test_malformed_values_name_the_variable(monkeypatch, value, parse):
    monkeypatch.setenv(ENV, value)
    with pytest.raises(ValueError, match=ENV):
        parse(ENV)
