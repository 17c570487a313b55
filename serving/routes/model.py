"""What is served: the model's run, hyper-parameters, metrics, calibration and abstention thresholds, and whether the
service follows a tag to newer models."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request

from ..deps import PredictorDep
from ..schemas import ERRORS, ModelInfo

router = APIRouter(tags=["model"])


@router.get("/model", responses={503: ERRORS[503]})
async def model_info(model: PredictorDep, request: Request) -> ModelInfo:
    """Which model is served: run, hyper-parameters, data fingerprint, test metrics, classes, temperature, the
    thresholds below which it answers `confident: false`, since when it serves and what the service follows."""
    served, record, state = model.served, model.record, request.app.state
    follower = state.follower
    since = state.model_since if state.predictor is model else None
    return ModelInfo(
        **served.info,
        model_args=record.model_args.to_dict(),
        class_names=list(record.class_names),
        temperature=record.temperature,
        normalization={"mean": record.mean, "std": record.std},
        abstention=record.abstention.metadata() if record.abstention is not None else None,
        device=str(served.device),
        provenance=record.provenance,
        loaded_at=datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds") if since else None,
        following=f"{follower.following} every {follower.interval:g}s" if follower is not None else None,
        switches=follower.switches if follower is not None else 0,
        following_problem=follower.problem if follower is not None else None,
        drift_reference=record.reference or None,
    )
