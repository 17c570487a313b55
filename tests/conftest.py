"""Shared test set-up: a private Metaflow datastore for the session, and one smoke run of the real flow."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLOW_FILE = ROOT / "flows" / "fashion_flow.py"
SMOKE_PROFILE = ROOT / "configs" / "smoke.yaml"

# Metaflow reads its configuration when it is first imported, so the datastore is chosen here, before any test
# imports it: every run of the session lands in a throw-away directory, never in the user's .metaflow.
_root = os.environ.setdefault("METAFLOW_DATASTORE_SYSROOT_LOCAL", tempfile.mkdtemp(prefix="fashionflow-test-"))
DATASTORE = Path(_root)
# A task writes its cards under the first `.metaflow` folder above its working directory, while `get_cards` reads
# them from the datastore root: flows therefore run from the datastore's directory, which holds `.metaflow`.
(DATASTORE / ".metaflow").mkdir(parents=True, exist_ok=True)
os.environ.setdefault("USERNAME", "test")
os.environ.setdefault("WANDB_MODE", "disabled")


@dataclass(frozen=True)
class FlowResult:
    """What a finished Runner call left behind (its log files vanish when the Runner closes)."""

    status: str
    run: Any
    stdout: str
    stderr: str


def _finished(executing) -> FlowResult:
    return FlowResult(executing.status, executing.run, executing.stdout, executing.stderr)


def run_flow(profile: Path = SMOKE_PROFILE, env: dict[str, str] | None = None, **run_options) -> FlowResult:
    """Run FashionFlow through Metaflow's Runner API with a profile; returns the outcome, failed or not."""
    from metaflow import Runner

    with Runner(
        str(FLOW_FILE), show_output=False, env=env, cwd=str(DATASTORE), config=[("config", str(profile))]
    ) as runner:
        return _finished(runner.run(**run_options))


def resume_flow(origin_run_id: str, env: dict[str, str] | None = None, **options) -> FlowResult:
    """Resume a run; no profile is passed, as Metaflow reuses the original run's."""
    from metaflow import Runner

    with Runner(str(FLOW_FILE), show_output=False, env=env, cwd=str(DATASTORE)) as runner:
        return _finished(runner.resume(origin_run_id=origin_run_id, **options))


@pytest.fixture(scope="session")
def smoke_run():
    """One successful smoke run of the whole flow, shared by the tests that only read its results."""
    result = run_flow()
    assert result.status == "successful", result.stderr[-3000:]
    return result.run


@pytest.fixture(autouse=True)
def _restore_metaflow_metadata():
    """Put back the Client's metadata provider after each test.

    A Run object made for another datastore (the cloud tests' runs) re-points the provider for the whole process,
    which would send later lookups of the session's runs to the wrong place.
    """
    import metaflow

    saved = metaflow.get_metadata()
    yield
    metaflow.metadata(saved)
