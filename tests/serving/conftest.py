"""The serving tests' shared fixture: the real service over real HTTP, one per test module that asks for it."""

from __future__ import annotations

import pytest

from tests.support.service import running_service


@pytest.fixture(scope="module")
def service_url(smoke_run, tmp_path_factory):
    """The real service (as `fmnist-serve` starts it) on loopback, serving the smoke run's model; its base URL."""
    with running_service(smoke_run.pathspec, tmp_path_factory.mktemp("serve") / "service.log") as url:
        yield url
