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
