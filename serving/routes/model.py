"""What is served: the model's run, hyper-parameters, metrics, calibration and abstention thresholds."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import PredictorDep
from ..schemas import ERRORS, ModelInfo

router = APIRouter(tags=["model"])


@router.get("/model", responses={503: ERRORS[503]})
async def model_info(model: PredictorDep) -> ModelInfo:
    """Which model is served: run, hyper-parameters, data fingerprint, test metrics, classes, temperature, and the
    thresholds below which it answers `confident: false`."""
    served, record = model.served, model.record
    return ModelInfo(
        **served.info,
        model_args=record.model_args.to_dict(),
        class_names=list(record.class_names),
        temperature=record.temperature,
        normalization={"mean": record.mean, "std": record.std},
        abstention=record.abstention.metadata() if record.abstention is not None else None,
        device=str(served.device),
        provenance=record.provenance,
    )
