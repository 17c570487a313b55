"""Cloud placement for FashionFlow: the profile's `compute.batch` puts the train step on AWS Batch GPUs.

`cloud_compute` is a Metaflow flow mutator. It reads the run profile (the flow's `Config`) when Metaflow
resolves configs, before any step runs, and:

- when `compute.batch` is set, adds `@batch` (GPUs, CPUs, memory, shared memory, image, queue) and
  `@retry` (spot interruptions; the train step's checkpoints make a retry resume) to the train step, and to
  nothing else;
- when it is unset, adds `@retry` only if `compute.retries` asks for it: the flow runs where it is launched and
  needs no AWS.

It also puts the `fmnist` package into Metaflow's code package, next to the flow file, so a remote task
imports the same `fmnist` as the code that launched the run, whatever version the image carries.
Nothing here reads the environment: the profile alone decides.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from metaflow import FlowMutator
from metaflow.packaging_sys import ContentType

import fmnist

# The profile's BatchConfig field -> @batch's argument. image and queue left unset (None) fall back to
# Metaflow's configured METAFLOW_BATCH_CONTAINER_IMAGE and METAFLOW_BATCH_JOB_QUEUE.
_BATCH_ARGS = {
    "gpu": "gpu",
    "cpu": "cpu",
    "memory": "memory",
    "shared_memory": "shared_memory",
    "image": "image",
    "queue": "queue",
}


def batch_decorators(batch: Mapping[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """The (decorator name, arguments) pairs a profile's `compute.batch` asks of the train step; [] when unset."""
    if not batch:
        return []
    batch_args = {arg: batch[field] for field, arg in _BATCH_ARGS.items() if batch.get(field) is not None}
    return [("batch", batch_args), ("retry", {"times": int(batch.get("retries", 0))})]


def retry_decorators(compute: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The train step's decorators for a profile's `compute`: Batch placement and its retries, else local retries."""
    if compute.get("batch"):
        return batch_decorators(compute["batch"])
    retries = int(compute.get("retries", 0) or 0)
    return [("retry", {"times": retries})] if retries > 0 else []


def package_files(package_dir: Path) -> Iterator[tuple[str, str]]:
    """(path on disk, path in the code package) for each Python source file of a package directory."""
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" not in path.parts:
            yield str(path), str(Path(package_dir.name) / path.relative_to(package_dir))


class cloud_compute(FlowMutator):  # lower case, as Metaflow decorators are
    """Place the train step from the profile's `compute.batch`; ship `fmnist` in the code package.

    Usage: `@cloud_compute` (defaults: the `config` Config, the `train` step), or
    `@cloud_compute(config="config", step="train")`.
    """

    def init(self, config: str = "config", step: str = "train") -> None:
        self._config_name, self._step_name = config, step

    def pre_mutate(self, mutable_flow) -> None:
        profile = dict(mutable_flow.configs).get(self._config_name)
        if profile is None:
            raise ValueError(f"cloud_compute: the flow has no Config named {self._config_name!r}")
        target = getattr(mutable_flow, self._step_name)
        for name, kwargs in retry_decorators(profile.get("compute", {})):
            # OVERRIDE: the profile is the source of truth for where the train step runs.
            target.add_decorator(name, deco_kwargs=kwargs, duplicates=target.OVERRIDE)

    def add_to_package(self):
        # USER_CONTENT lands relative to the flow file, i.e. on sys.path[0] of every remote task, ahead of
        # any `fmnist` installed in the image: remote tasks run the launching code's version.
        for path, arcname in package_files(Path(fmnist.__file__).resolve().parent):
            yield path, arcname, ContentType.USER_CONTENT
