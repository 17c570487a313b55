"""Fault injection from the environment: the test hooks that make a trial or a shard fail, or kill its process, so
retries, `resume` and checkpoints are exercised on real runs.

Two forms, one parser: "3,5" names indices that fail; "3:2,5:1" names an index and the step (epoch, batch) after
which its process is killed. A malformed value is an error that names the variable, never silently no fault.
"""

from __future__ import annotations

import os


def _items(env: str) -> list[str]:
    return [item.strip() for item in os.environ.get(env, "").split(",") if item.strip()]


def failing(env: str) -> set[int]:
    """The indices $env names ("3,5"); empty when it is unset."""
    try:
        return {int(item) for item in _items(env)}
    except ValueError:
        raise ValueError(f"${env}={os.environ[env]!r}: expected indices like '3,5'") from None


def kill_point(env: str, index: int) -> int | None:
    """The step after which $env ("<index>:<step>,...") kills `index`'s process, or None."""
    for item in _items(env):
        named, sep, step = item.partition(":")
        try:
            if not sep:
                raise ValueError
            if int(named) == index:
                return int(step)
        except ValueError:
            raise ValueError(f"${env}={os.environ[env]!r}: expected '<index>:<step>' pairs like '3:2,5:1'") from None
    return None
