"""Find the model record a FashionFlow run produced, through Metaflow's Client API, and build it for inference.

The run registry (`registry.runs`) finds the run and reads its record, the `calibrated_model` artifact of the end
step: safetensors bytes, parsed by `ModelRecord.from_bytes`, so loading it never unpickles anything. The datastore
(local folder or S3) is found as Metaflow finds it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from fmnist.core.runtime import pick_device
from fmnist.release.classifier import Classifier
from fmnist.release.model_record import ModelRecord, RecordError
from fmnist.release.scoring_graph import RuntimeUnavailable
from registry.artifacts import BEST_HPARAMS, DATA_FINGERPRINT, TEST_METRICS

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
    flow's latest successful run (`registry.runs.find_run`). Looks across all users' namespaces."""
    from metaflow.exception import MetaflowException

    from registry.runs import NoRunError as NoRegisteredRun
    from registry.runs import RunLookupError
    from registry.runs import find_run as find_registered_run

    try:
        _select_metadata(settings)
    except (MetaflowException, ValueError) as err:
        raise ModelLoadError(f"cannot use metadata provider {settings.metadata!r}: {err}") from None
    try:
        return find_registered_run(settings.run, settings.tag, settings.flow)
    except NoRegisteredRun as err:
        raise NoRunError(str(err)) from None
    except RunLookupError as err:
        raise ModelLoadError(str(err)) from None


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
    # Metaflow is imported where a model is looked up, not with the service: see `_select_metadata`.
    from registry.runs import RunLookupError, artifact, end_data, model_record_bytes

    run = find_run(settings)
    data = end_data(run)
    try:
        record = ModelRecord.from_bytes(model_record_bytes(run))
        classifier = build_classifier(record, device, settings)
    except RuntimeUnavailable as err:
        raise ModelLoadError(f"runtime 'onnxruntime' requested but unavailable: {err}") from None
    except RunLookupError as err:
        raise ModelLoadError(str(err)) from None
    except (RecordError, RuntimeError, TypeError) as err:
        raise ModelLoadError(f"run {run.pathspec}: model record cannot be used: {err}") from None
    info = {
        "run": run.pathspec,
        "created_at": run.created_at.isoformat() if hasattr(run.created_at, "isoformat") else str(run.created_at),
        "tags": sorted(run.tags),
        "hparams": artifact(data, BEST_HPARAMS, record.hparams),
        "data_fingerprint": artifact(data, DATA_FINGERPRINT, record.provenance.get("data_fingerprint")),
        "test_metrics": artifact(data, TEST_METRICS, {}),
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
