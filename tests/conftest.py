"""Session set-up and shared fixtures: a private Metaflow datastore for the session, and one smoke run of the flow.

Helpers live in `tests.support`; the AWS stand-in's fixtures (`aws`, `s3_client`) come from `tests.support.aws`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Metaflow reads its configuration when it is first imported, so the datastore is chosen here, before any test
# imports it: every run of the session lands in a throw-away directory, never in the user's .metaflow. pytest
# imports this module before the plugins below and before any test module, and nothing above imports Metaflow.
_root = os.environ.setdefault("METAFLOW_DATASTORE_SYSROOT_LOCAL", tempfile.mkdtemp(prefix="fashionflow-test-"))
# A task writes its cards under the first `.metaflow` folder above its working directory, while `get_cards` reads
# them from the datastore root: flows therefore run from the datastore's directory, which holds `.metaflow`.
(Path(_root) / ".metaflow").mkdir(parents=True, exist_ok=True)
os.environ.setdefault("USERNAME", "test")
os.environ.setdefault("WANDB_MODE", "disabled")

# torch imports its compiler stack (torch._dynamo) lazily, on an optimiser's first step. Metaflow's Runner, which
# the tests use in-process, loads its vendored typeguard, whose old typing_extensions patches `typing` so that the
# compiler stack's generics no longer import. Loaded first, they are unaffected, whichever test trains first.
import torch._dynamo  # noqa: E402, F401

pytest_plugins = ["tests.support.aws"]

from tests.support.flows import run_flow  # noqa: E402 - after the datastore is chosen


@pytest.fixture(scope="session")
def smoke_flow():
    """One successful smoke run of the whole flow with what it printed, shared by the tests that only read it."""
    result = run_flow()
    assert result.status == "successful", result.stderr[-3000:]
    return result


@pytest.fixture(scope="session")
def smoke_run(smoke_flow):
    """The smoke run itself (a Metaflow Run)."""
    return smoke_flow.run


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
