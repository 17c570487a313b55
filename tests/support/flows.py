"""The repository's paths, and FashionFlow run through Metaflow's Runner API, as the tests run it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FLOW_FILE = ROOT / "flows" / "fashion_flow.py"
CONFIGS = ROOT / "configs"
SMOKE_PROFILE = CONFIGS / "smoke.yaml"


def session_datastore() -> Path:
    """The session's throw-away local datastore, chosen by tests/conftest.py before Metaflow is imported.

    Flows run from this directory by default: a task writes its cards under the first `.metaflow` folder above its
    working directory, while `get_cards` reads them from the datastore root, and conftest.py creates `.metaflow` here.
    """
    return Path(os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"])


@dataclass(frozen=True)
class FlowResult:
    """What a finished Runner call left behind (its log files vanish when the Runner closes)."""

    status: str
    run: Any
    stdout: str
    stderr: str


def _finished(executing) -> FlowResult:
    return FlowResult(executing.status, executing.run, executing.stdout, executing.stderr)


def run_flow(
    profile: Path = SMOKE_PROFILE, env: dict[str, str] | None = None, cwd: Path | None = None, **run_options
) -> FlowResult:
    """Run FashionFlow through Metaflow's Runner API with a profile; returns the outcome, failed or not.

    It runs from `cwd`, by default the session's datastore.
    """
    from metaflow import Runner

    with Runner(
        str(FLOW_FILE),
        show_output=False,
        env=env,
        cwd=str(cwd or session_datastore()),
        config=[("config", str(profile))],
    ) as runner:
        return _finished(runner.run(**run_options))


def resume_flow(
    origin_run_id: str, env: dict[str, str] | None = None, cwd: Path | None = None, **options
) -> FlowResult:
    """Resume a run; no profile is passed, as Metaflow reuses the original run's. `cwd` as for `run_flow`."""
    from metaflow import Runner

    with Runner(str(FLOW_FILE), show_output=False, env=env, cwd=str(cwd or session_datastore())) as runner:
        return _finished(runner.resume(origin_run_id=origin_run_id, **options))
