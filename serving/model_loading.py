"""Find the model record a FashionFlow run produced, through Metaflow's Client API, and build it for inference.

The record is the `calibrated_model` artifact of the run's end step (`model` in runs made before it was renamed):
safetensors bytes, parsed by `ModelRecord.from_bytes`, so loading it never unpickles anything. The datastore (local
folder or S3) is found as Metaflow finds it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from fmnist.classifier import Classifier
from fmnist.model_record import ModelRecord, RecordError
from fmnist.runtime import pick_device
from fmnist.scoring_graph import RuntimeUnavailable

from .settings import Settings

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says which run was looked for and what went wrong."""


class NoRunError(ModelLoadError):
    """No run to serve exists: the flow has never run (successfully), or no successful run carries the tag."""


@dataclass(frozen=True)
class ServedModel:
    """A model record ready for inference, plus what `/model` reports about it."""

    record: ModelRecord
    classifier: Classifier
    device: torch.device
    run_pathspec: str
    info: dict[str, Any]  # run id, creation time, tags, hyper-parameters, fingerprint, test metrics


def _select_metadata(settings: Settings) -> None:
    """Point the Client API at the configured metadata provider.

    Metaflow reads METAFLOW_DATASTORE_SYSROOT_LOCAL once, when it is imported; re-reading it here means the
    variable set before the service loads the model is the one that counts, however early Metaflow was imported.
    """
    from metaflow import get_metadata, metadata

    if settings.metadata:
        metadata(settings.metadata)
    elif os.environ.get("METAFLOW_DATASTORE_SYSROOT_LOCAL") and get_metadata().startswith("local@"):
        metadata("local@" + os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"])


def find_run(settings: Settings) -> Any:
    """The Metaflow Run to serve: `settings.run`, else the newest successful run tagged `settings.tag`, else the
    flow's latest successful run. Looks across all users' namespaces."""
    from metaflow import Flow, Run, namespace
    from metaflow.exception import MetaflowException, MetaflowNotFound

    try:
        _select_metadata(settings)
    except (MetaflowException, ValueError) as err:
        raise ModelLoadError(f"cannot use metadata provider {settings.metadata!r}: {err}") from None
    namespace(None)
    try:
        if settings.run:
            pathspec = settings.run if "/" in settings.run else f"{settings.flow}/{settings.run}"
            run = Run(pathspec)
            if not run.successful:
                raise ModelLoadError(f"run {pathspec} did not finish successfully; it has no final model")
            return run
        flow = Flow(settings.flow)
        if settings.tag:
            for run in flow.runs(settings.tag):  # newest first
                if run.successful:
                    return run
            raise NoRunError(f"no successful {settings.flow} run is tagged {settings.tag!r} ({_describe_metadata()})")
        latest = flow.latest_successful_run
        if latest is None:
            raise NoRunError(f"flow {settings.flow} has no successful run yet ({_describe_metadata()})")
        return latest
    except MetaflowNotFound as err:
        if settings.run:
            raise ModelLoadError(f"cannot find {settings.run} in Metaflow ({_describe_metadata()}): {err}") from None
        raise NoRunError(f"no {settings.flow} run exists ({_describe_metadata()}): {err}") from None
    except MetaflowException as err:
        what = settings.run or (f"tag {settings.tag!r}" if settings.tag else f"latest successful {settings.flow}")
        raise ModelLoadError(f"cannot find {what} in Metaflow ({_describe_metadata()}): {err}") from None


def _describe_metadata() -> str:
    from metaflow import get_metadata

    return f"metadata {get_metadata()}"


def load_model(settings: Settings, pathspec: str | None = None) -> ServedModel:
    """Load, validate and build the selected run's model record on the configured device, in eval mode.

    `pathspec` names the run to load instead of the one the settings select (the tag follower found it already)."""
    if pathspec is not None:
        settings = settings.model_copy(update={"run": pathspec})
    try:
        device = pick_device(settings.device)
    except RuntimeError as err:
        raise ModelLoadError(str(err)) from None
    torch.set_num_threads(settings.torch_threads)
    run = find_run(settings)
    data = run["end"].task.data  # the end step carries every artifact the flow produced
    blob = _artifact(data, "calibrated_model", None) or _artifact(data, "model", None)  # "model": older runs
    if blob is None:
        raise ModelLoadError(f"run {run.pathspec} has no 'calibrated_model' artifact; was it produced by FashionFlow?")
    try:
        record = ModelRecord.from_bytes(blob)
        classifier = build_classifier(record, device, settings)
    except RuntimeUnavailable as err:
        raise ModelLoadError(f"runtime 'onnxruntime' requested but unavailable: {err}") from None
    except (RecordError, RuntimeError, TypeError) as err:
        raise ModelLoadError(f"run {run.pathspec}: model record cannot be used: {err}") from None
    info = {
        "run": run.pathspec,
        "created_at": run.created_at.isoformat() if hasattr(run.created_at, "isoformat") else str(run.created_at),
        "tags": sorted(run.tags),
        "hparams": _artifact(data, "best_hparams", record.hparams),
        "data_fingerprint": _artifact(data, "data_fingerprint", record.provenance.get("data_fingerprint")),
        "test_metrics": _artifact(data, "test_metrics", {}),
    }
    info["runtime"] = classifier.runtime
    log.info(
        "loaded model of %s on %s with %s (temperature %.3f)",
        run.pathspec,
        device,
        classifier.runtime,
        record.temperature,
    )
    return ServedModel(record=record, classifier=classifier, device=device, run_pathspec=run.pathspec, info=info)


def build_classifier(record: ModelRecord, device: torch.device, settings: Settings) -> Classifier:
    """The record on `device`, run by the runtime the settings ask for. Under "auto", ONNX Runtime on a CPU when it
    can be used, else torch with a log line saying why; a runtime named explicitly that cannot be used is an error
    (`RuntimeUnavailable`)."""
    if settings.runtime == "torch" or (settings.runtime == "auto" and device.type != "cpu"):
        return Classifier(record, device, "torch", settings.torch_threads)
    if device.type != "cpu":
        raise RuntimeUnavailable(f"the ONNX graph runs on the CPU, the model is on {device}")
    try:
        return Classifier(record, device, "onnxruntime", settings.torch_threads)
    except RuntimeUnavailable as err:  # onnx or onnxruntime missing, or the export failed
        if settings.runtime == "onnxruntime":
            raise
        log.warning("serving with torch, not ONNX Runtime: %s", err)
        return Classifier(record, device, "torch", settings.torch_threads)


def _artifact(data: Any, name: str, default: Any) -> Any:
    try:
        return getattr(data, name)
    except AttributeError:
        return default
