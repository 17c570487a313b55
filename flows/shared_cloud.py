"""Cloud placement for FashionFlow: the profile's `compute` puts the train step on AWS Batch or on Kubernetes.

`cloud_compute` is a Metaflow flow mutator. It reads the run profile (the flow's `Config`) when Metaflow
resolves configs, before any step runs, and:

- when `compute.batch` is set, adds `@batch` (GPUs, CPUs, memory, shared memory, image, queue) and
  `@retry` (spot interruptions; the train step's checkpoints make a retry resume) to the train step, and to
  nothing else;
- when `compute.kubernetes` is set, adds `@kubernetes` (GPUs and their vendor, CPUs, memory, disk, shared memory,
  image, namespace, service account, node selector, tolerations) and `@retry` to the train step only: a pod per
  trial, on `run` or once deployed with `argo-workflows create`;
- when neither is set, adds `@retry` only if `compute.retries` asks for it: the flow runs where it is launched and
  needs no cloud. (The profile cannot name both: `fmnist.core.config` refuses it.)

It also puts the `fmnist` and `registry` packages into Metaflow's code package, next to the flow file, so a remote
task imports the same library as the code that launched the run, whatever version the image carries.
Nothing here reads the environment: the profile alone decides (fields left unset fall back to Metaflow's own
configuration, as its decorators do).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from metaflow import FlowMutator
from metaflow.packaging_sys import ContentType

import fmnist
import registry

# The profile's BatchConfig fields passed to @batch, under the same names. image and queue left unset (None) fall
# back to Metaflow's configured METAFLOW_BATCH_CONTAINER_IMAGE and METAFLOW_BATCH_JOB_QUEUE.
_BATCH_FIELDS = ("gpu", "cpu", "memory", "shared_memory", "image", "queue")


def batch_decorators(batch: Mapping[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """The (decorator name, arguments) pairs a profile's `compute.batch` asks of the train step; [] when unset."""
    if not batch:
        return []
    batch_args = {field: batch[field] for field in _BATCH_FIELDS if batch.get(field) is not None}
    return [("batch", batch_args), ("retry", {"times": int(batch.get("retries", 0))})]


# The profile's KubernetesConfig fields passed to @kubernetes, under the same names. Fields left unset (None, or an
# empty selector or toleration list) fall back to Metaflow's METAFLOW_KUBERNETES_* configuration (image, namespace,
# service account, node selector, tolerations).
_KUBERNETES_FIELDS = (
    "gpu",
    "gpu_vendor",
    "cpu",
    "memory",
    "disk",
    "shared_memory",
    "image",
    "namespace",
    "service_account",
    "node_selector",
    "tolerations",
)


def kubernetes_decorators(kubernetes: Mapping[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """The (decorator name, arguments) pairs a profile's `compute.kubernetes` asks of the target step; [] if unset."""
    if not kubernetes:
        return []
    # `@kubernetes` reads cpu, memory and disk as strings (its defaults are) and compares them with its defaults.
    kube_args = {
        field: str(kubernetes[field]) if field in {"cpu", "memory", "disk"} else kubernetes[field]
        for field in _KUBERNETES_FIELDS
        if kubernetes.get(field) not in (None, {}, [])
    }
    if not kubernetes.get("gpu"):
        # A CPU pod (`gpu: 0`) carries no GPU resource at all, rather than a limit of zero GPUs.
        kube_args.pop("gpu", None)
        kube_args.pop("gpu_vendor", None)
    return [("kubernetes", kube_args), ("retry", {"times": int(kubernetes.get("retries", 0))})]


def retry_decorators(compute: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The train step's decorators for a profile's `compute`: a cloud engine and its retries, else local retries."""
    if compute.get("batch") and compute.get("kubernetes"):
        raise ValueError("compute.batch and compute.kubernetes are both set; a step runs on one engine: keep one")
    if compute.get("batch"):
        return batch_decorators(compute["batch"])
    if compute.get("kubernetes"):
        return kubernetes_decorators(compute["kubernetes"])
    retries = int(compute.get("retries", 0) or 0)
    return [("retry", {"times": retries})] if retries > 0 else []


def package_files(package_dir: Path) -> Iterator[tuple[str, str]]:
    """(path on disk, path in the code package) for each Python source file of a package directory."""
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" not in path.parts:
            yield str(path), str(Path(package_dir.name) / path.relative_to(package_dir))


class cloud_compute(FlowMutator):  # lower case, as Metaflow decorators are
    """Place the train step from the profile's `compute.batch` or `compute.kubernetes`; ship `fmnist` and `registry`
    in the code package.

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
        for package in (fmnist, registry):
            for path, arcname in package_files(Path(package.__file__).resolve().parent):
                yield path, arcname, ContentType.USER_CONTENT
